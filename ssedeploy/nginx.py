"""What ssedeploy writes into /etc/nginx, rendered on the controller from settings and host facts.

Pure functions: the deploy, `ssedeploy check` and the unit tests all call these, so
what a test reads is what a host gets.
"""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import crossplane

from .render import render
from .settings import Settings

LIVE = "/etc/nginx"
NGINX_CONF = "nginx.conf"
SITE = "sites-available/ssedeploy.conf"
SITE_LINK = "sites-enabled/ssedeploy.conf"
# What ssedeploy owns, relative to /etc/nginx: files it writes, links it makes, links it removes.
LINKS = {SITE_LINK: "../" + SITE}
# Where nginx.conf's http block includes sites from, relative to LIVE.
SITE_INCLUDES = ("conf.d/*.conf", "sites-enabled/*")
REMOVED = ("sites-enabled/default",)
TLS_DIR = "/etc/ssl/ssedeploy"
# HTTP-01 tokens: certbot --webroot writes them here, the site's plain-HTTP server serves them (outside
# /etc/nginx and the app's tree, so nothing else is served from it).
ACME_WEBROOT = "/var/lib/ssedeploy/acme-challenge"
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
# Where a cluster's proxy serves the tokens it holds to the other proxies (for a name that points elsewhere).
ACME_PEER_PATH = "/.well-known/ssedeploy-acme-peer/"
DROP_IN = "/etc/systemd/system/nginx.service.d/ssedeploy.conf"
# After a crash systemd starts nginx again this many seconds later (the drop-in's Restart=on-failure).
RESTART_SECONDS = 1
MAX_WORKERS_PER_CPU = 4
# Seconds nginx waits for an app to accept a connection before it tries the next one: an app host that is
# gone (powered off, cut off) answers nothing, and a stream's reconnect should not wait nginx's default 60.
CONNECT_TIMEOUT = 3
# Marks nginx's own `retry:` answer while the app is unreachable (@sse_retry), so a client, verify or a test
# can tell it from the app's stream.
FALLBACK_HEADER = "X-Ssedeploy-Fallback"
# The loopback revision server's paths: the live config revision, and "REVISION PORT" (the app instance the
# upstream sends to, under that revision: what the deploy reads as the live instance).
REVISION_PATH = "/ssedeploy/revision"
UPSTREAM_PATH = "/ssedeploy/upstream"
# What every SSE location sends upstream (templates/nginx/sse-location.conf.j2; verify checks the live
# config against it): the forwarding headers, since one proxy_set_header drops every inherited one, and
# an empty Accept-Encoding so an app that compresses when asked (Express `compression`, Next.js's
# built-in compression on Pages Router routes) sends the stream uncompressed (playbook row 17).
SSE_UPSTREAM_HEADERS = {
    "Connection": "", "Host": "$host", "X-Real-IP": "$remote_addr",
    "X-Forwarded-For": "$proxy_add_x_forwarded_for", "X-Forwarded-Proto": "$scheme", "Accept-Encoding": "",
}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@dataclass(frozen=True)
class Limits:
    """Sizes derived from the expected streams, under the host's file-descriptor hard limit."""

    workers: int
    worker_connections: int
    worker_rlimit_nofile: int
    streams: int  # streams the sizes really carry (below expected when the fd limit caps them)


def limits(settings: Settings, cpus: int, nofile_hard: int | None) -> Limits:
    # Each stream holds a client and an upstream connection; 1.5 x for headroom.
    needed = 2 * settings.nginx.expected_streams * 1.5
    # worker_rlimit_nofile >= 2 x worker_connections (nginx docs, gixy), and setrlimit above the hard
    # limit fails (workers stay at 1024), so the hard limit caps connections per worker. The limit is
    # per process: where it caps, more workers (up to 4 per CPU) carry the streams.
    cap = nofile_hard // 2 if nofile_hard else None
    workers = max(1, cpus)
    if cap and needed / workers > cap:
        workers = min(math.ceil(needed / cap), MAX_WORKERS_PER_CPU * workers)
    connections = max(1024, math.ceil(needed / workers))
    if cap:
        connections = min(connections, cap)
    streams = min(settings.nginx.expected_streams, math.floor(connections * workers / 3))
    return Limits(workers, connections, 2 * connections, streams)


def upstream_name(settings: Settings) -> str:
    return f"{settings.app.name.replace('-', '_')}_upstream"


def acme_dir(settings: Settings) -> str:
    """The certificates nginx serves in mode acme: one directory per serial, `live` links the one in use
    (scripts/cert-install.sh switches it, so the pair nginx reads is always whole)."""
    return f"{TLS_DIR}/{settings.app.name}-acme"


def plain_http_warning(settings: Settings) -> str | None:
    """What `check` and the deploy say when the SSE paths are served over plain HTTP only."""
    if settings.site.tls:
        return None
    return (f"warning: the SSE paths ({' '.join(settings.site.sse_paths)}) are served over plain HTTP only: a "
            "browser opens at most 6 HTTP/1.1 connections per origin, so a 7th EventSource (a 7th tab) never "
            "opens; HTTPS brings HTTP/2, one connection for every stream (set site.tls, e.g. mode 'acme')")


def file_tls_paths(settings: Settings) -> tuple[str, str]:
    """Where modes self-signed and files keep the certificate and key."""
    return f"{TLS_DIR}/{settings.app.name}.crt", f"{TLS_DIR}/{settings.app.name}.key"


def tls_paths(settings: Settings) -> tuple[str, str]:
    """The certificate (full chain) and key nginx serves."""
    if settings.site.tls and settings.site.tls.mode == "acme":
        return f"{acme_dir(settings)}/live/fullchain.pem", f"{acme_dir(settings)}/live/privkey.pem"
    return file_tls_paths(settings)


def address(host: str, port: int) -> str:
    """HOST:PORT as nginx writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_tree(settings: Settings, version: str, lim: Limits, app_port: int | None = None,
                tls_live: bool = True, tls_files: tuple[str, str] | None = None,
                servers: list[str] | None = None, acme_peers: Sequence[str] = ()) -> tuple[dict[str, str], str]:
    """The files ssedeploy owns under /etc/nginx, and the revision that identifies them.

    `app_port`: the app instance the upstream sends to (default: the first instance's port).
    `servers`: a cluster's proxy: every app host's `ADDRESS:PORT` instead, balanced by least_conn.
    `acme_peers`: a cluster's proxy in mode acme: the other proxies' addresses, asked for HTTP-01 tokens this
    one does not hold (each proxy asks the CA for its own certificate of the same names; the CA reaches one).
    `tls_live`: False while an ACME certificate does not exist yet: the site is served over plain HTTP (with
    the HTTP-01 challenge location) until the certificate is issued; `tls_files`: the pair to serve meanwhile
    instead (the self-signed or your own one a site served before moving to ACME).
    """
    app_port = app_port or settings.app.instance_ports[0]
    new_http2 = version_tuple(version) >= (1, 25, 1)  # `http2 on;` replaced `listen ... http2`
    cert, key = tls_files or tls_paths(settings)
    acme = bool(settings.site.tls and settings.site.tls.mode == "acme")
    conf = render("nginx/nginx.conf.j2", settings=settings, limits=lim, live=LIVE, includes=SITE_INCLUDES)
    site = render(
        "nginx/site.conf.j2", settings=settings, upstream=upstream_name(settings), balanced=servers is not None,
        upstream_servers=servers or [address(settings.app.bind, app_port)], fallback_header=FALLBACK_HEADER,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=settings.proxy_read_timeout, new_http2=new_http2, cert=cert, key=key,
        tls=settings.site.tls if tls_live else None, acme=acme,
        acme_webroot=ACME_WEBROOT, acme_path=ACME_CHALLENGE_PATH, acme_peer_path=ACME_PEER_PATH,
        acme_peers=[address(peer, 80) for peer in acme_peers] if acme else [],
        acme_upstream=f"{upstream_name(settings)}_acme_peers",
    )
    digest = hashlib.sha256()
    for name, text in ((NGINX_CONF, conf), (SITE, site), *sorted(LINKS.items())):
        digest.update(f"{name}\0{text}\0".encode())
    revision = digest.hexdigest()[:16]
    site += render("nginx/revision.conf.j2", revision=revision, port=settings.site.revision_port,
                   app_port=" ".join(servers) if servers is not None else app_port,
                   revision_path=REVISION_PATH, upstream_path=UPSTREAM_PATH)
    return {NGINX_CONF: conf, SITE: site}, revision


def drop_in(lim: Limits) -> str:
    """nginx.service's drop-in: the file limit the workers are sized for, and a restart after a crash."""
    return render("systemd/nginx-service.conf.j2", limits=lim, restart_seconds=RESTART_SECONDS)


def parse_dump(dump: str) -> list[dict]:
    """`nginx -T` output parsed by crossplane: every file nginx loaded, as one list of directives."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "nginx-T.conf")
        path.write_text(dump)
        parsed = crossplane.parse(str(path), single=True, check_ctx=False, comments=False)
    if parsed["status"] != "ok":
        raise ValueError(f"nginx -T does not parse: {parsed['errors']}")
    return parsed["config"][0]["parsed"]


def walk(directives: list[dict], parents: tuple = ()):
    """Every directive of a crossplane tree with its enclosing blocks, depth first."""
    for d in directives:
        yield d, parents
        yield from walk(d.get("block", []), (*parents, d))


def dump_files(dump: str) -> dict[str, str]:
    """`nginx -T` output split into the files nginx loaded: path -> text."""
    files: dict[str, str] = {}
    current = None
    for line in dump.splitlines(keepends=True):
        header = re.fullmatch(r"# configuration file (.+):\n?", line)
        if header:
            current = header.group(1)
            files[current] = ""
        elif current:
            files[current] += line
    return files


def listen_port(address: str) -> int | None:
    """The port of a `listen` address (`80`, `*:80`, `[::]:443`, `10.0.0.1` = 80); None for a unix socket."""
    if address.startswith("unix:"):
        return None
    tail = address.rsplit("]", 1)[-1]
    if tail.isdigit():
        return int(tail)
    return int(tail.rsplit(":", 1)[1]) if ":" in tail and tail.rsplit(":", 1)[1].isdigit() else 80


def default_listens(dump: str) -> list[tuple[str, int, str]]:
    """(file, port, listen line) of every `listen ... default_server` in the files of an `nginx -T` dump."""
    found = []
    for path, text in dump_files(dump).items():
        try:
            directives = parse_dump(text)
        except ValueError:
            continue  # a file nginx itself could not load claims nothing
        for d, _ in walk(directives):
            args = d["args"]
            if d["directive"] == "listen" and args and {"default_server", "default"} & set(args[1:]):
                port = listen_port(args[0])
                if port is not None:
                    found.append((path, port, " ".join(["listen", *args])))
    return found


def foreign_default_servers(listens: list[tuple[str, int, str]], settings: Settings) -> list[str]:
    """Other sites' `default_server` claims on the ports where ssedeploy's site must be the default.

    Empty unless the site has server_name `_`. Its own files and the distro's default site (which
    the deploy removes) do not count.
    """
    if not settings.site.default_server:
        return []
    ports = {settings.site.listen_port, *([settings.site.tls.port] if settings.site.tls else [])}
    own = {f"{LIVE}/{rel}" for rel in (SITE, SITE_LINK, *REMOVED)}
    return [f"{path}: {line}" for path, port, line in listens if port in ports and path not in own]
