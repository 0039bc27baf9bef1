"""A local ACME CA for each sandbox instance (Debian's `pebble` 2.4.0), so hosts get certificates with no internet.

On the instance's gateway address (the machine's side of its bridge, which its hosts reach):
- `pebble`: the ACME directory at https://GATEWAY:14000/dir and its management API at https://GATEWAY:15000
  (`/roots/N`, `/intermediates/N`, `/root-keys/N`, `/intermediate-keys/N`). Both are HTTPS only, served with a
  listener certificate made here with openssl: a small CA (`listener-ca.pem`, what clients trust: certbot's
  REQUESTS_CA_BUNDLE, curl's --cacert) and a leaf whose IP SAN is the gateway address, in
  /var/lib/ssedeploy/sandbox/<instance>/acme/. It validates http-01 on the hosts' port 80 and tls-alpn-01 on 443.
- `pebble-challtestsrv`: DNS for pebble (its -dnsserver) on GATEWAY:8053, UDP and TCP, and its management API at
  http://GATEWAY:8055 (`/add-a`, `/clear-a`, `/set-default-ipv4`, ...). Its http-01, https-01 and tls-alpn-01
  servers are off, so it takes none of the ports hosts serve on (2.4.0 has no DoH server). It has no default
  A/AAAA answer (its own would be 127.0.0.1 and ::1): a name resolves only once registered, and never to IPv6,
  since pebble 2.4.0 asks for AAAA first and dials the first address it gets.

Names (`names`, `set_name`): `<host>.<instance>.ssedeploy.test` for each host, and `<instance>.ssedeploy.test`, the
instance's site name, for its first host. `.test` is reserved (RFC 2606), so no such name is anyone's; pebble
2.4.0 checks an identifier's syntax only (no TLD or public-suffix list), so it issues for them.

Pebble keeps nothing: every start makes a new root and intermediate and forgets accounts and orders, so
whoever trusts its certificates fetches the root after `up` (`roots`), and an ACME client registers anew after
a restart (certbot 2.1, Debian 12's, fails on its saved account with "AttributeError: can't set attribute":
remove /etc/letsencrypt/accounts/GATEWAY:14000). `up` restarts only what is not running as asked, and
registers the names again (challtestsrv keeps them in memory only). Certificate lifetime: pebble 2.4.0 reads
`certificateValidityPeriod` (seconds) from its config; 0 means its default, 157766400 s (5 years). `up` sets it
per instance (`--cert-validity`).

Run as a test CA should: no random validation sleeps, no rejected nonces, every order validated afresh (no
authorization reused by chance), one root and one intermediate (PEBBLE_* below; any in the caller's
environment are dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import hosts

PORT = 14000  # pebble's ACME API (HTTPS)
MANAGEMENT_PORT = 15000  # pebble's management API (HTTPS): roots, intermediates
DNS_PORT = 8053  # challtestsrv's DNS (UDP and TCP)
DNS_MANAGEMENT_PORT = 8055  # challtestsrv's management API (HTTP)
HTTP_PORT = 80  # where pebble asks hosts for http-01 answers (its sample config says 5002)
TLS_PORT = 443  # and for tls-alpn-01 ones (its sample says 5001)
DOMAIN = "ssedeploy.test"
PEBBLE_LOG = "pebble.log"
CHALLTESTSRV_LOG = "challtestsrv.log"
LISTENER_CA = "listener-ca.pem"
ENV = {
    "PEBBLE_VA_NOSLEEP": "1",
    "PEBBLE_WFE_NONCEREJECT": "0",
    "PEBBLE_AUTHZREUSE": "0",
    "PEBBLE_ALTERNATE_ROOTS": "0",
    "PEBBLE_CHAIN_LENGTH": "1",
}
# No proxy: the servers are on this machine's bridge, which a proxy from the environment cannot reach.
_PLAIN = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AcmeError(RuntimeError):
    """The instance's CA cannot be set up or does not answer."""


def directory_url(address: str) -> str:
    return f"https://{address}:{PORT}/dir"


def management_url(address: str) -> str:
    return f"https://{address}:{MANAGEMENT_PORT}"


def dns_management_url(address: str) -> str:
    return f"http://{address}:{DNS_MANAGEMENT_PORT}"


def acme_dir(instance: str) -> Path:
    return hosts.instance_dir(instance) / "acme"


def listener_ca(instance: str) -> Path:
    """The CA of pebble's listener certificate: what a client of the directory or management API trusts."""
    return acme_dir(instance) / LISTENER_CA


def roots_path(instance: str) -> Path:
    """The roots the running pebble issues under (written by `up`): what a client of the site trusts."""
    return acme_dir(instance) / "roots.pem"


def save_roots(instance: str, address: str) -> Path:
    """Fetch the running pebble's roots into roots_path (a new pebble has new ones), by one rename."""
    path = roots_path(instance)
    hosts.write_whole(path, "".join(roots(address, listener_ca(instance))))
    return path


# The record is kept beside instance.json, not in it: a checkout of an older ssedeploy still reads the record.
def record_path(instance: str) -> Path:
    return hosts.instance_dir(instance) / "acme.json"


def load(instance: str) -> dict | None:
    return hosts.read_json(record_path(instance))


def save(instance: str, record: dict) -> None:
    hosts.write_whole(record_path(instance), json.dumps(record, indent=1) + "\n")


# Names

def host_name(instance: str, host: str) -> str:
    return f"{host}.{instance}.{DOMAIN}"


def site_name(instance: str) -> str:
    return f"{instance}.{DOMAIN}"


def default_names(instance: str, host_addresses: list[tuple[str, str]]) -> dict[str, list[str]]:
    """{name: [address]} for (host, address) pairs in host order: each host's name, and the site name for the first."""
    names = {host_name(instance, host): [address] for host, address in host_addresses}
    if host_addresses:
        names[site_name(instance)] = [host_addresses[0][1]]
    return names


def names(instance: str) -> dict[str, list[str]]:
    """The names the instance's CA resolves now, {name: [IPv4 address]}."""
    return dict((load(instance) or {}).get("names", {}))


def set_a(address: str, name: str, addresses: list[str]) -> None:
    """Make challtestsrv at `address` answer A queries for `name` with `addresses` alone (none: no answer)."""
    _post(address, "/clear-a", {"host": name})  # /add-a appends to what the name had
    if addresses:
        _post(address, "/add-a", {"host": name, "addresses": list(addresses)})


def set_name(instance: str, name: str, addresses: list[str]) -> None:
    """Add, move or (with no addresses) remove a name of the instance's CA; kept for the CA's next start."""
    record = load(instance)
    if not record:
        raise AcmeError(f"sandbox {instance!r} runs no ACME CA: run `ssedeploy sandbox up --name {instance}`")
    set_a(record["address"], name, addresses)
    record.setdefault("names", {})
    if addresses:
        record["names"][name] = list(addresses)
    else:
        record["names"].pop(name, None)
    save(instance, record)


def register(address: str, wanted: dict[str, list[str]]) -> None:
    for name, addresses in wanted.items():
        set_a(address, name, addresses)


def _post(address: str, path: str, body: dict, timeout: float = 10) -> None:
    request = urllib.request.Request(dns_management_url(address) + path, data=json.dumps(body).encode(),
                                     method="POST")
    try:
        with _PLAIN.open(request, timeout=timeout) as response:
            response.read()
    except OSError as exc:
        raise AcmeError(f"challtestsrv at {dns_management_url(address)}{path}: {exc}") from exc


# Pebble's issuing certificates

def roots(address: str, ca: Path | str) -> list[str]:
    """PEM of each root pebble at `address` issues under now (one: no alternate roots), trusting only `ca`."""
    return _numbered(address, ca, "roots")


def intermediates(address: str, ca: Path | str) -> list[str]:
    """PEM of the intermediate that signs certificates under each root (same order as `roots`)."""
    return _numbered(address, ca, "intermediates")


def _numbered(address: str, ca, kind: str) -> list[str]:
    found = []
    while True:  # /KIND/N for N = 0, 1, ... until 404
        try:
            found.append(_get(f"{management_url(address)}/{kind}/{len(found)}", ca))
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and found:
                return found
            raise AcmeError(f"pebble's management API at {management_url(address)}/{kind}/{len(found)}: {exc}") from exc
        except OSError as exc:
            raise AcmeError(f"pebble's management API at {management_url(address)}: {exc}") from exc


def _get(url: str, ca, timeout: float = 10) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(ca))))
    with opener.open(url, timeout=timeout) as response:
        return response.read().decode()


# The listener certificate

def ensure(instance: str, address: str) -> Path:
    """The instance's acme/ directory, with a listener CA and a leaf for `address` (made anew when missing,
    for another address, or expiring within a day)."""
    directory = acme_dir(instance)
    directory.mkdir(parents=True, exist_ok=True)
    if not listener_ok(directory, address):
        make_listener(directory, address)
    return directory


def listener_ok(directory: Path, address: str) -> bool:
    ca, leaf = directory / LISTENER_CA, directory / "listener.pem"
    if not (ca.exists() and leaf.exists() and (directory / "listener.key").exists()):
        return False
    verify = _openssl("verify", "-CAfile", ca, leaf, check=False)
    fresh = _openssl("x509", "-in", leaf, "-noout", "-checkend", "86400", check=False)
    san = _openssl("x509", "-in", leaf, "-noout", "-ext", "subjectAltName", check=False)
    return (verify.returncode == 0 and fresh.returncode == 0
            and re.findall(r"IP Address:([0-9.]+)", san.stdout) == [address])


def make_listener(directory: Path, address: str) -> None:
    """A CA (10 years) and a server leaf for `address` (IP SAN) it signs, made by openssl; keys mode 0600.
    Extensions as strict verifiers want them (critical CA constraints, key identifiers)."""
    if not shutil.which("openssl"):
        raise AcmeError("the sandbox's ACME CA needs `openssl` on this machine (package openssl)")
    with tempfile.TemporaryDirectory(dir=directory, prefix=".make-") as tmp:
        t = Path(tmp)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        _openssl("req", "-x509", *ec, "-keyout", t / "listener-ca.key", "-out", t / LISTENER_CA, "-days", "3650",
                 "-subj", f"/CN=ssedeploy sandbox ACME listener CA {address}",
                 "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=hash")
        _openssl("req", "-new", *ec, "-keyout", t / "listener.key", "-out", t / "listener.csr", "-subj", f"/CN={address}")
        (t / "leaf.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            f"subjectAltName=IP:{address}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")
        _openssl("x509", "-req", "-in", t / "listener.csr", "-CA", t / LISTENER_CA, "-CAkey", t / "listener-ca.key",
                 "-set_serial", "0x" + secrets.token_hex(16), "-days", "397", "-extfile", t / "leaf.ext",
                 "-out", t / "listener.pem")
        for name in ("listener-ca.key", "listener.key"):
            os.chmod(t / name, 0o600)
        for name in ("listener-ca.key", "listener.key", "listener.pem", LISTENER_CA):  # the CA last: it marks a whole set
            os.replace(t / name, directory / name)


def _openssl(*args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AcmeError(f"openssl {args[0]} failed: {result.stderr.strip()[-500:]}")
    return result


# The two servers

def pebble_config(address: str, directory: Path, validity: int = 0) -> dict:
    """pebble's config file: both listeners on `address`, the listener certificate of `directory`."""
    return {"pebble": {
        "listenAddress": f"{address}:{PORT}",
        "managementListenAddress": f"{address}:{MANAGEMENT_PORT}",
        "certificate": str(directory / "listener.pem"),
        "privateKey": str(directory / "listener.key"),
        "httpPort": HTTP_PORT,
        "tlsPort": TLS_PORT,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        "certificateValidityPeriod": validity,
    }}


def pebble_command(address: str, directory: Path) -> list[str]:
    return [_binary("pebble"), "-config", str(directory / "pebble.json"), "-dnsserver", f"{address}:{DNS_PORT}"]


def challtestsrv_command(address: str) -> list[str]:
    return [_binary("pebble-challtestsrv"), "-dns01", f"{address}:{DNS_PORT}",
            "-management", f"{address}:{DNS_MANAGEMENT_PORT}",
            "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "", "-defaultIPv6", ""]


def pebble_env(base: dict | None = None) -> dict:
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("PEBBLE_")}
    return {**env, **ENV}


def _binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise AcmeError(f"the sandbox's ACME CA needs `{name}` on this machine (package pebble)")
    return path


def _digest(config: dict, directory: Path) -> str:
    """What a running pebble was started with: its config and listener certificate."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    h.update((directory / "listener.pem").read_bytes())
    return h.hexdigest()


def start(address: str, directory: Path, log_dir: Path, validity: int = 0, running: dict | None = None) -> dict:
    """Run challtestsrv and pebble on `address`, detached, keeping those of `running` (a record) that still run
    as asked; returns the new record (without names). Servers of ours on `address` that it does not keep are
    ended first: they would hold the ports and answer in the new ones' place."""
    running = running or {}
    config = pebble_config(address, directory, validity)
    digest = _digest(config, directory)
    dns_cmd, pebble_cmd = challtestsrv_command(address), pebble_command(address, directory)
    keep_dns = _runs_as(running.get("challtestsrv"), dns_cmd)
    keep_pebble = _runs_as(running.get("pebble"), pebble_cmd) and running["pebble"].get("digest") == digest
    kept = {running[k]["pid"] for k, keep in (("challtestsrv", keep_dns), ("pebble", keep_pebble)) if keep}
    for proc in stale_processes(address):
        if proc["pid"] not in kept:
            stop_process(proc)
    log_dir.mkdir(parents=True, exist_ok=True)
    dns = running["challtestsrv"] if keep_dns else hosts.spawn(dns_cmd, log_dir / CHALLTESTSRV_LOG)
    if keep_pebble:
        pebble = running["pebble"]
    else:
        (directory / "pebble.json").write_text(json.dumps(config, indent=1) + "\n")
        pebble = {**hosts.spawn(pebble_cmd, log_dir / PEBBLE_LOG, pebble_env()), "digest": digest}
    return {"address": address, "validity": validity, "ca": str(directory / LISTENER_CA),
            "challtestsrv": dns, "pebble": pebble,
            "logs": [str(log_dir / CHALLTESTSRV_LOG), str(log_dir / PEBBLE_LOG)]}


def _runs_as(proc: dict | None, cmd: list[str]) -> bool:
    return process_alive(proc) and proc["cmdline"] == cmd


def stale_processes(address: str) -> list[dict]:
    """pebble and challtestsrv processes listening on `address` (a sandbox bridge address: any there are ours)
    at the CA's ports."""
    ports = " or ".join(f"sport = :{p}" for p in (PORT, MANAGEMENT_PORT, DNS_PORT, DNS_MANAGEMENT_PORT))
    out = subprocess.run(["ss", "-Hltunp", "src", address, f"( {ports} )"], capture_output=True, text=True)
    found = []
    for pid in sorted({int(p) for p in re.findall(r"pid=(\d+)", out.stdout)}):
        cmdline = hosts.cmdline(pid)
        if cmdline and os.path.basename(cmdline[0]) in ("pebble", "pebble-challtestsrv"):
            found.append({"pid": pid, "start_time": hosts.process_start_time(pid), "cmdline": cmdline})
    return found


def process_alive(proc: dict | None) -> bool:
    """Is the recorded process still that one (same command line, not a later one that reused its PID)?"""
    if not proc or not proc.get("pid"):
        return False
    return (hosts.cmdline(proc["pid"]) == proc.get("cmdline")
            and hosts.process_start_time(proc["pid"]) == proc.get("start_time"))


def alive(record: dict | None) -> bool:
    """Both servers of the record still run."""
    return bool(record) and process_alive(record.get("pebble")) and process_alive(record.get("challtestsrv"))


def wait_answering(record: dict, timeout: float = 60) -> None:
    """Poll challtestsrv's management API and pebble's directory and management API (trusting only the
    listener CA) until they answer; fail early if either server exited (e.g. a port is taken)."""
    address, ca = record["address"], record["ca"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            _post(address, "/clear-a", {"host": f"answering.{DOMAIN}"}, timeout=2)
            directory = json.loads(_get(directory_url(address), ca, timeout=2))
            if "newOrder" not in directory:
                raise AcmeError(f"{directory_url(address)} is no ACME directory: {directory}")
            _get(f"{management_url(address)}/roots/0", ca, timeout=2)
            if alive(record):  # it was these servers that answered
                return
            error: Exception = OSError("another process answered")
        except (OSError, ValueError, AcmeError) as exc:
            error = exc
        if not alive(record) or time.monotonic() > deadline:
            raise AcmeError(f"the sandbox's ACME CA does not answer on {address} ({error}; "
                            f"pebble: {_exit_status(record.get('pebble'))}, challtestsrv: "
                            f"{_exit_status(record.get('challtestsrv'))}); see {_tails(record)}")
        time.sleep(0.1)


def _tails(record: dict) -> str:
    parts = []
    for path in map(Path, record.get("logs", [])):
        try:
            parts.append(f"{path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-5:]))
        except OSError:
            parts.append(str(path))
    return "\n".join(parts)


def _exit_status(proc: dict | None) -> str:
    """How a server ended, if it did (it is this process's child when `up` started it)."""
    if process_alive(proc):
        return "runs"
    return hosts.exit_status(proc["pid"]) if proc and proc.get("pid") else "is gone"


def stop_process(proc: dict | None, timeout: float = 10) -> None:
    """End a recorded process by its PID (SIGTERM, then SIGKILL); nothing if it is already gone."""
    if process_alive(proc):
        hosts.end_process(proc["pid"], proc["start_time"], timeout)


def stop(record: dict | None) -> None:
    """End both servers of the record, pebble first."""
    for key in ("pebble", "challtestsrv"):
        stop_process((record or {}).get(key))
