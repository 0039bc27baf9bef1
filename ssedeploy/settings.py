"""The typed settings every deploy reads from inventory data.

ssedeploy's settings live under their own data keys (`site`, `nginx`, `app`), so
pyinfra's connection data (`ssh_*`, `_sudo`, ...) is left alone while a typo inside
ours is an error. Values that end up inside nginx config are checked against what
nginx can parse, so nothing a template receives can break out of its directive.
Every key is documented in the README (Settings).

Layering: pyinfra's data layers (deploy defaults < all < each group in order < host <
`--data` overrides) are merged per field for these keys, as Ansible users expect: a
group can set `app.source` while a host sets `app.env`. Dicts merge key by key; lists
and plain values replace; `None` in a higher layer drops what lower layers set.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pyinfra.api.exceptions import PyinfraError

from . import node as nodejs

DATA_KEYS = ("site", "nginx", "app", "firewall")
# Host data: a `site` that lies under every other layer (sandbox hosts: HTTPS from the instance's own ACME CA,
# ssedeploy/inventory.py), so an inventory that sets its own `site` on top still gets it field by field.
BASE_SITE_KEY = "ssedeploy_base_site"
# The oldest nginx the templates support (Ubuntu 22.04's); what `check` renders for by default.
OLDEST_NGINX = "1.18.0"

_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/%:@!*+,=-]*$")
_SERVER_NAME_RE = re.compile(r"^(_|\*?\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?|\*|localhost)$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _path(value: str) -> str:
    if not _PATH_RE.fullmatch(value):
        raise ValueError(
            "must be an absolute URL path of letters, digits and . _ ~ / % : @ ! * + , = - "
            "(no spaces, quotes, ;, {, }, $ or newlines)"
        )
    return value


def _server_name(value: str) -> str:
    if not _SERVER_NAME_RE.fullmatch(value) or len(value) > 253:
        raise ValueError("must be a host name (a.example.com), a wildcard (*.example.com) or _")
    return value


def _unit_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError("must be 1-32 characters: lower-case letters, digits or '-', a letter first")
    return value


def _version(value: str) -> str:
    if not _VERSION_RE.fullmatch(value):
        raise ValueError("must be an nginx version like 1.22.1")
    return value


_SIZE_RE = re.compile(r"^([1-9][0-9]*)([kK]?)$")


def _size_bytes(value: str) -> int:
    match = _SIZE_RE.fullmatch(value)
    if not match:
        raise ValueError("must be an nginx size: bytes (1024) or KiB (4k)")
    return int(match.group(1)) * (1024 if match.group(2) else 1)


def _buffer_size(value: str) -> str:
    if not 512 <= _size_bytes(value) <= 1024 * 1024:
        raise ValueError("must be from 512 bytes to 1024k")
    return value


def _pool_size(value: str) -> str:
    size = _size_bytes(value)
    if not 256 <= size <= 64 * 1024 or size % 16:
        raise ValueError("must be from 256 bytes to 64k, a multiple of 16 bytes")
    return value


def _raw_directives(value: str) -> str:
    """Whole lines with balanced braces and quotes; nginx -t on the host judges the rest."""
    depth, quote = 0, None
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                break
    if depth != 0 or quote:
        raise ValueError("must be whole nginx directives with balanced braces and quotes")
    if not value.strip().endswith((";", "}")):
        raise ValueError("must end with ';' or '}' (whole directives only)")
    return value


def _existing_file(value: str) -> str:
    if not Path(value).expanduser().is_file():
        raise ValueError("must be a readable file on the controller")
    return str(Path(value).expanduser())


Port = Annotated[int, Field(ge=1, le=65535)]
UrlPath = Annotated[str, AfterValidator(_path)]
RawDirectives = Annotated[str, AfterValidator(_raw_directives)]


class _CrossFieldError(ValueError):
    def __init__(self, loc: tuple[str, ...], value, msg: str):
        super().__init__(msg)
        self.loc, self.value, self.msg = loc, value, msg


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Let's Encrypt's production directory; its staging one (untrusted certificates, generous rate limits) is
# https://acme-staging-v02.api.letsencrypt.org/directory.
ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _email(value: str) -> str:
    if not _EMAIL_RE.fullmatch(value):
        raise ValueError("must be an email address (the CA's account contact)")
    return value


def _https_url(value: str) -> str:
    if not re.fullmatch(r"https://[^\s/?#]+(/[^\s]*)?", value):
        raise ValueError("must be an https:// URL (an ACME directory)")
    return value


def _not_for_acme(name: str) -> bool:
    """Names HTTP-01 cannot validate: the catch-all, wildcards, addresses, localhost."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name == "_" or "*" in name or name.rstrip(".").lower() == "localhost"


class TLS(_Model):
    """`self-signed` (made on the host, for sandbox/staging), `files` (your certificate and key), or `acme`
    (issued and renewed by the distro's certbot from an ACME CA, HTTP-01 answered by ssedeploy's nginx)."""

    mode: Literal["self-signed", "files", "acme"] = "self-signed"
    certificate: Annotated[str, AfterValidator(_existing_file)] | None = None
    key: Annotated[str, AfterValidator(_existing_file)] | None = None
    port: Port = 443
    email: Annotated[str, AfterValidator(_email)] | None = None
    directory: Annotated[str, AfterValidator(_https_url)] = ACME_DIRECTORY
    # A private CA's directory (pebble, step-ca) is served with a certificate the host does not trust: the
    # CA bundle (a file on the controller) certbot trusts for it, at issuance and in its renewal timer.
    directory_ca: Annotated[str, AfterValidator(_existing_file)] | None = None
    # The roots `ssedeploy verify` checks the served chain against (a file on the controller; default: the
    # controller's trust store). A private CA's roots, e.g. the sandbox's pebble.
    roots: Annotated[str, AfterValidator(_existing_file)] | None = None

    @model_validator(mode="after")
    def _files_given(self) -> "TLS":
        if self.mode == "files" and not (self.certificate and self.key):
            raise ValueError("mode 'files' needs both certificate and key (paths on the controller)")
        if self.mode != "files" and (self.certificate or self.key):
            raise ValueError("certificate/key are only for mode 'files'")
        if self.mode == "acme" and not self.email:
            raise ValueError("mode 'acme' needs email: the address the CA registers the account with")
        acme_only = {"email", "directory", "directory_ca", "roots"} & self.model_fields_set
        if self.mode != "acme" and acme_only:
            raise ValueError(f"{', '.join(sorted(acme_only))}: only for mode 'acme'")
        return self


class Site(_Model):
    server_names: list[Annotated[str, AfterValidator(_server_name)]] = Field(default=["_"], min_length=1)
    listen_port: Port = 80
    sse_paths: list[UrlPath] = Field(default=["/api/stream"], min_length=1)
    tls: TLS | None = None
    # Loopback-only listener that serves the live config revision (proves a reload took effect).
    revision_port: Port = 8573
    extra_directives: list[RawDirectives] = []

    @model_validator(mode="after")
    def _sse_paths_distinct(self) -> "Site":
        seen: dict[str, int] = {}
        for i, path in enumerate(self.sse_paths):
            loc = ("site", "sse_paths", str(i))
            if path == "/":
                # `location /` is the buffered default for pages and assets; a whole-site stream would
                # turn buffering and gzip off for every response. Streams live under their own prefixes.
                raise _CrossFieldError(loc, path, "cannot be the whole site: list the URL prefixes that stream "
                                                  "(e.g. /api/stream); pages and assets stay buffered and gzipped")
            if path in seen:
                raise _CrossFieldError(loc, path, f"is listed twice (also site.sse_paths.{seen[path]}): "
                                                  "each SSE path gets one location")
            seen[path] = i
        return self

    @property
    def default_server(self) -> bool:
        """With `_` among the names the site answers every request no other server_name claims."""
        return "_" in self.server_names

    @property
    def nginx_ports(self) -> dict[int, str]:
        """Every port nginx listens on for this site -> the setting that chose it."""
        ports = {self.revision_port: "site.revision_port", self.listen_port: "site.listen_port"}
        if self.tls:
            ports[self.tls.port] = "site.tls.port"
        return ports


def _address(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IP address (e.g. 127.0.0.1, or the private address proxies reach)") from None
    if address.is_unspecified:
        raise ValueError("must be one address, not every address: the app is for nginx only, never the world")
    return str(address)


class Nginx(_Model):
    expected_streams: int = Field(default=10_000, ge=1, le=1_000_000)
    proxy_read_timeout: int | None = Field(default=None, ge=1)
    worker_shutdown_timeout: int = Field(default=60, ge=1, le=3600)
    upstream_keepalive: int = Field(default=32, ge=1, le=10_000)
    version: Annotated[str, AfterValidator(_version)] = OLDEST_NGINX
    backups: int = Field(default=5, ge=1, le=100)
    extra_http_directives: list[RawDirectives] = []
    # What nginx allocates per stream (templates/nginx/sse-location.conf.j2, site.conf.j2; bench/idle.py): the
    # buffer the app's response headers must fit in (then each event passes through it), and the site's
    # request pool. None: the directive is left out, nginx's own default (proxy_buffer_size one memory page,
    # request_pool_size 4k).
    sse_proxy_buffer_size: Annotated[str, AfterValidator(_buffer_size)] | None = "4k"
    request_pool_size: Annotated[str, AfterValidator(_pool_size)] | None = "1k"
    # A cluster's proxy: the address its connections to the app hosts come from (the app hosts' firewall
    # admits it); default: the host's ssh_hostname when that is an IP address (ssedeploy/topology.py).
    private_address: Annotated[str, AfterValidator(_address)] | None = None


def _int_to_str(value):
    """`"node": 24` in a Python inventory means the line "24"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _env_name(value: str) -> str:
    if not _ENV_RE.fullmatch(value):
        raise ValueError("must be an environment variable name: A-Z, 0-9 and _, not starting with a digit")
    return value


def _env_value(value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError("must be one line (no newline or NUL)")
    return value


def _app_source(value: str, info: ValidationInfo) -> str:
    path = Path(value).expanduser()
    if (info.context or {}).get("offline"):  # verify/drift in a CI without the built app
        return str(path)
    if not path.is_dir():
        raise ValueError("must be a directory on the controller: a built app (Next.js: after `next build`)")
    return str(path.resolve())


EnvName = Annotated[str, AfterValidator(_env_name)]
REPO = Path(__file__).resolve().parents[1]
RESERVED_ENV = {"NODE_ENV", "PORT", "HOSTNAME", "KEEP_ALIVE_TIMEOUT", "HEARTBEAT_MS"}


class App(_Model):
    name: Annotated[str, AfterValidator(_unit_name)] = "sseapp"
    # The system user the app runs as (created if missing); default: the app's name.
    user: Annotated[str, AfterValidator(_unit_name)] | None = None
    # The two instances' ports: a release starts on the idle one while the other serves (default: port, port + 1).
    port: Port = 3000
    ports: list[Port] | None = Field(default=None, min_length=2, max_length=2)
    # The address the app listens on (and nginx's upstream names): loopback on one host.
    bind: Annotated[str, AfterValidator(_address)] = "127.0.0.1"
    # After a release goes live the old instance keeps its streams this long, then is stopped (SIGTERM) and
    # ends them with a short `retry:`. 30 s (Kamal's default): requests in flight finish, and with stop_timeout
    # it stays under nginx.worker_shutdown_timeout, so the app, not nginx, ends each stream.
    drain_seconds: int = Field(default=30, ge=0, le=3600)
    heartbeat_seconds: int = Field(default=15, ge=1, le=300)
    # `standalone`: `node server.js` (Next.js output: 'standalone', or any app with a server.js);
    # `next-start`: `next start` from the release's node_modules; `command`: `command` below.
    start: Literal["standalone", "next-start", "command"] = "standalone"
    command: Annotated[str, AfterValidator(_env_value)] | None = None
    env: dict[EnvName, Annotated[str, AfterValidator(_env_value)]] = {}
    # Names only: values come from the controller's environment or `secrets_file`, never the inventory.
    secret_env: list[EnvName] = []
    secrets_file: str | None = None
    # `distro` (the distro's nodejs package), a release line (`24`: its newest official build at deploy time)
    # or an exact version (`24.22.3`); official builds come from `node_mirror` (default: the Node.js site).
    node: Annotated[str, BeforeValidator(_int_to_str), AfterValidator(nodejs.check_spec)] = nodejs.DEFAULT
    node_mirror: Annotated[str, AfterValidator(nodejs.check_mirror)] | None = None
    source: Annotated[str, AfterValidator(_app_source)] = str(REPO / "examples" / "sse-app")
    keep_releases: int = Field(default=5, ge=2, le=50)
    health_path: UrlPath = "/healthz"
    stop_timeout: int = Field(default=15, ge=1, le=300)
    # In a cluster: how many app hosts a release switches at a time (roles/cluster.py).
    rolling_batch: int = Field(default=1, ge=1, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> "App":
        if self.system_user == "root":
            field = "user" if self.user else "name"
            raise _CrossFieldError(("app", field), getattr(self, field),
                                   "the app must not run as root: it takes requests from the network, and a hole in "
                                   "it or its dependencies would own the host; leave app.user unset (a system user "
                                   "named after app.name is created) or name another user")
        if (self.start == "command") != bool(self.command):
            raise _CrossFieldError(("app", "command"), self.command, "is required with start: command, and only then")
        for field in ("env", "secret_env"):
            clash = set(getattr(self, field)) & RESERVED_ENV
            if clash:
                raise _CrossFieldError(("app", field), sorted(clash),
                                       "ssedeploy sets these itself (from app.port, app.heartbeat_seconds)")
        if self.ports is not None:
            if self.ports[0] == self.ports[1]:
                raise _CrossFieldError(("app", "ports"), self.ports, "must be two different ports, one per instance")
            if "port" in self.model_fields_set and self.port != self.ports[0]:
                raise _CrossFieldError(("app", "port"), self.port,
                                       f"differs from app.ports[0] ({self.ports[0]}): set app.ports alone")
        elif self.port == 65535:
            raise _CrossFieldError(("app", "port"), self.port,
                                   "needs app.port + 1 free for the second instance: choose both with app.ports")
        if set(self.env) & set(self.secret_env):
            raise _CrossFieldError(("app", "secret_env"), sorted(set(self.env) & set(self.secret_env)),
                                   "a variable is either in env or in secret_env, not both")
        return self

    @property
    def system_user(self) -> str:
        return self.user or self.name

    @property
    def instance_ports(self) -> tuple[int, int]:
        """The two instances' ports: a release goes to the one nginx does not send to."""
        return tuple(self.ports) if self.ports else (self.port, self.port + 1)


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address or network (10.0.0.0/8, 2001:db8::/32)") from None


def _allow_entry(value):
    """`9100` in an inventory means {"port": 9100}."""
    return {"port": value} if isinstance(value, int) and not isinstance(value, bool) else value


class Allow(_Model):
    """One more thing the firewall admits: a port (TCP unless proto says udp), from anywhere or from `source`."""

    port: Port
    proto: Literal["tcp", "udp"] = "tcp"
    source: Annotated[str, AfterValidator(_network)] | None = None


class Firewall(_Model):
    """ssedeploy's own nftables table (ssedeploy/firewall.py): SSH, the site's ports, loopback, replies and the
    ICMP the network needs; `allow` adds more. `enabled: False` removes the table."""

    enabled: bool = True
    allow: list[Annotated[Allow, BeforeValidator(_allow_entry)]] = []
    # The port sshd listens on when it is not the inventory's ssh_port (a port forward in between).
    ssh_port: Port | None = None
    # Seconds the controller has to reach the host over a new SSH connection before a new ruleset undoes itself.
    confirm_seconds: int = Field(default=30, ge=5, le=600)


class Settings(_Model):
    site: Site = Site()
    nginx: Nginx = Nginx()
    app: App = App()
    firewall: Firewall = Firewall()

    @model_validator(mode="after")
    def _timeout_outlasts_heartbeats(self) -> "Settings":
        floor = 4 * self.app.heartbeat_seconds
        if self.nginx.proxy_read_timeout is not None and self.nginx.proxy_read_timeout < floor:
            raise _CrossFieldError(
                ("nginx", "proxy_read_timeout"), self.nginx.proxy_read_timeout,
                f"must be at least 4 x app.heartbeat_seconds ({floor}), or nginx cuts quiet streams",
            )
        site = self.site
        if site.tls and site.tls.port == site.listen_port:
            raise _CrossFieldError(("site", "tls", "port"), site.tls.port, "must differ from site.listen_port")
        if site.tls and site.tls.mode == "acme":
            for i, name in enumerate(site.server_names):
                if _not_for_acme(name):
                    raise _CrossFieldError(
                        ("site", "server_names", str(i)), name,
                        "cannot be in an ACME certificate: HTTP-01 validates public DNS names only, so list "
                        "every name the site answers to (no '_', wildcard, IP address or localhost), or choose "
                        "another site.tls: mode 'files' (your certificate) or None (plain HTTP)")
            if site.listen_port != 80:
                raise _CrossFieldError(("site", "listen_port"), site.listen_port,
                                       "must be 80 with site.tls.mode 'acme': the CA checks HTTP-01 challenges "
                                       "on port 80 only")
        if site.revision_port in (site.listen_port, site.tls and site.tls.port):
            raise _CrossFieldError(("site", "revision_port"), site.revision_port,
                                   "must differ from the site's listen and TLS ports")
        app = self.app
        field, value = (("app", "ports"), app.ports) if app.ports else (("app", "port"), app.port)
        for i, port in enumerate(app.instance_ports):
            which = "" if app.ports or i == 0 else f"the second instance's port {port} (app.port + 1): "
            if port in site.nginx_ports:
                raise _CrossFieldError(field, value,
                                       f"{which}nginx listens on {port} ({site.nginx_ports[port]}): the app needs a "
                                       "port of its own")
            if port < 1024:
                raise _CrossFieldError(field, value,
                                       f"{which}must be 1024 or above: the app runs as an unprivileged user without "
                                       "CAP_NET_BIND_SERVICE (nginx serves the public ports)")
        overlap = self.app.drain_seconds + self.app.stop_timeout
        if overlap >= self.nginx.worker_shutdown_timeout:
            raise _CrossFieldError(
                ("app", "drain_seconds"), self.app.drain_seconds,
                f"app.drain_seconds + app.stop_timeout ({overlap} s) must stay below nginx.worker_shutdown_timeout "
                f"({self.nginx.worker_shutdown_timeout} s): the old instance must end its streams (with a short "
                "retry:) before nginx's old workers cut them",
            )
        return self

    @property
    def proxy_read_timeout(self) -> int:
        """nginx closes a stream silent for this long: at least 4 heartbeats (playbook row 5)."""
        return self.nginx.proxy_read_timeout or 4 * self.app.heartbeat_seconds


class SettingsError(PyinfraError, ValueError):
    """Bad settings; a PyinfraError so pyinfra's CLI prints the message, not a traceback."""


def near_miss(key) -> str | None:
    """The settings key a top-level data key was probably meant to be (`sitee`, `Site`, `ngnix`), else None.

    Other keys belong to pyinfra and to users and stay allowed, so only close calls count: the same
    word in another case, the same letters in another order, or difflib's similarity of 0.8 or more.
    """
    if not isinstance(key, str) or key in DATA_KEYS:
        return None
    low = key.lower()
    for wanted in DATA_KEYS:
        if low == wanted or sorted(low) == sorted(wanted):
            return wanted
    close = difflib.get_close_matches(low, DATA_KEYS, n=1, cutoff=0.8)
    return close[0] if close else None


def parse(data: dict, host_name: str = "?", offline: bool = False) -> Settings:
    """Build Settings from one host's data; errors name host, field, value and what is allowed.

    `data` is the host's whole data (pyinfra's keys included): a top-level key that is a near miss
    of a settings key is refused rather than silently ignored.
    `offline`: do not require controller-side files (app.source) to exist.
    """
    lines = [f"host {host_name}: {key} = {data[key]!r}: not a key ssedeploy reads; did you mean `{near_miss(key)}`?"
             for key in data if near_miss(key)]
    if lines:
        raise SettingsError("\n".join(lines))
    raw = {key: data[key] for key in DATA_KEYS if data.get(key) is not None}
    try:
        return Settings.model_validate(raw, context={"offline": offline})
    except ValidationError as exc:
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, _CrossFieldError):
                where, value, msg = ".".join(cause.loc), cause.value, cause.msg
            else:
                where = ".".join(str(p) for p in err["loc"])
                value = err.get("input")
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = "unknown setting (a typo?)"
            lines.append(f"host {host_name}: {where} = {value!r}: {msg}")
        raise SettingsError("\n".join(lines)) from None


def merge(lower, higher):
    """`higher` over `lower`: dicts merge key by key, anything else replaces."""
    if isinstance(lower, dict) and isinstance(higher, dict):
        out = dict(lower)
        for key, value in higher.items():
            out[key] = merge(lower.get(key), value) if key in lower else copy.deepcopy(value)
        return out
    return copy.deepcopy(higher)


def host_data(host) -> dict:
    """A pyinfra host's data, with ssedeploy's keys merged per field across every layer.

    pyinfra itself takes a key whole from the highest layer that has it (and merges groups with
    dict.update), so the layers are read one by one, lowest first, as pyinfra orders them.
    """
    inventory = host.inventory
    layers = [host.get_deploy_data() or {}, inventory.get_data(),
              *(inventory.get_group_data(group) for group in host.groups),
              inventory.get_host_data(host.name), inventory.get_override_data()]
    base = dict(host.data.get(BASE_SITE_KEY) or {})
    if any("tls" in (layer.get("site") or {}) for layer in layers):
        base.pop("tls", None)  # a TLS mode of your own replaces the base's whole, not field by field
    layers.insert(0, {"site": base} if base else {})
    data = host.data.dict()
    for key in DATA_KEYS:
        present = [layer[key] for layer in layers if key in layer]
        if present:
            merged = None
            for value in present:
                merged = merge(merged, value)
            data[key] = merged
    return data


def for_host(host, offline: bool = False) -> Settings:
    """Settings of a pyinfra host, its data layers merged per field."""
    return parse(host_data(host), host.name, offline)
