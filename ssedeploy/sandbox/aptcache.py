"""An apt cache per sandbox instance: apt-cacher-ng on the instance's bridge address, port 8781 (not the package's
default 3142, where a machine that runs apt-cacher-ng as a service already listens on every address).

Why: a cold deploy installs nginx, Node's download tools and their dependencies; twenty cold hosts would each
fetch the same .debs and index files from the package archive. With the cache, the first request for a file
fetches it once (requests for it that arrive meanwhile share that download) and every later one is served from
the cache on this machine.

Design (opt-in: `ssedeploy sandbox up --apt-cache`; the instance keeps its cache until `down`):

- The distro's package (`apt-cacher-ng`) runs as a child process of `up`, detached into its own session like the
  Node.js mirror (nodemirror.py), in the foreground (`ForeGround: 1`, no init system is asked: this kind of
  machine has no systemd), from a config directory of its own (`-c`), with its own cache, log, PID file and
  socket under the instance's directory (/var/lib/ssedeploy/sandbox/<instance>/apt-cache/), bound to the
  bridge address only. `down` ends it by its recorded PID and start time and removes that directory with the
  rest of the instance's files. The machine's own /etc/apt-cacher-ng is not read and no system daemon is
  started.
- Backends: the package's default Debian backend names a mirror that does not resolve here, and the packaged
  remap files list public mirrors by name. The config written here names none: it remaps exactly the archive
  URIs the hosts' sources.list uses (rootfs.archive_for, read from this machine's apt sources at run time, or
  debootstrap's default for Ubuntu) to themselves, so the cache fetches from the archive this machine reaches,
  files are kept under one directory per archive, and no host name is written in code.
- Hosts: each host of the instance gets /etc/apt/apt.conf.d/01ssedeploy-apt-cache with one per-host
  `Acquire::http::Proxy::<archive host> "http://<bridge address>:8781";` line per archive host; anything else
  stays direct. https archives cannot be cached by an HTTP proxy and are left out (their hosts go direct, over
  the instance's NAT, as without the cache). The NAT to the archive stays: a host that has no proxy line (an
  instance without the cache) still installs packages.
- Release files: apt asks for InRelease with `Cache-Control: max-age=0` and apt-cacher-ng 3.7.4 re-fetches it for
  every such request; when several hosts ask at once, each fetch tries to move the cached file aside, fails
  ("Failure to move file ... out of the way") and the host gets a 503 or a cut file, on which its apt-get could
  wait without end (bench/fleet.py, 15 cold hosts at once; measured: 12 concurrent requests for each of 3 release
  files gave 5 cut files on the first try). Its `DontCache` pass-through is no way out: it sends the archive two
  Host headers (a 400). So the config marks release files static (RELEASE_FILES): each is fetched once per
  instance, whole, and every host is served that copy, which keeps the hosts on one consistent snapshot of the
  archive (the index files it names are fetched by hash, which the cache already treats as static). An instance
  lives minutes to days; a newer archive state needs a new instance (`down`, `up`), and an instance older than
  the archive's Valid-Until (a week for security) gets apt's "expired" error.
- Figures: the cache's transfer log (`apt-cacher.log`, one `time|I or O|bytes|client|path` line per file; I =
  fetched from the archive, O = served to a host) is summed by `stats`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import hosts

PORT = 8781
# The archive's release files, kept whole for the cache's life (see above); the index files they name are by-hash.
RELEASE_FILES = r"/(InRelease|Release|Release\.gpg)$"
BINARY = "/usr/sbin/apt-cacher-ng"
PACKAGE = "apt-cacher-ng"
SUPPORT_DIR = "/usr/lib/apt-cacher-ng"  # the package's own support files (report page, mirror lists): read only
DIR_NAME = "apt-cache"
LOG_NAME = "apt-cache.log"  # the server's console output, in the checkout's .sandbox/<instance>/
TRANSFER_LOG = "apt-cacher.log"
HOST_CONF = "etc/apt/apt.conf.d/01ssedeploy-apt-cache"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AptCacheError(RuntimeError):
    """The cache cannot be started or does not answer."""


@dataclass(frozen=True)
class Remap:
    name: str  # the cache's directory for this archive
    match: str  # host/path prefix of the URLs hosts ask for
    backend: str  # where the cache fetches them: the same archive


def remaps(uris: list[str]) -> list[Remap]:
    """One remap per distinct http archive URI, named after its last path part (debian, debian-security,
    ubuntu...) so each archive has one directory in the cache; https URIs are left out (a proxy cannot cache
    TLS)."""
    out: list[Remap] = []
    seen: set[str] = set()
    for uri in uris:
        parts = urlsplit(uri.strip())
        if parts.scheme != "http" or not parts.hostname:
            continue
        path = parts.path.rstrip("/")
        match = f"{parts.netloc}{path}"
        if match in seen:
            continue
        seen.add(match)
        base = re.sub(r"[^a-z0-9]", "", (path.rsplit("/", 1)[-1] or parts.hostname).lower()) or "archive"
        name = base
        n = 2
        while name in {r.name for r in out}:
            name, n = f"{base}{n}", n + 1
        out.append(Remap(name, match, f"http://{match}/"))
    return out


def config(address: str, base: Path, uris: list[str], port: int = PORT) -> str:
    """The whole acng.conf of an instance's cache (nothing else is read from its config directory)."""
    lines = [
        "# Written by ssedeploy's sandbox (ssedeploy/sandbox/aptcache.py); removed by `ssedeploy sandbox down`.",
        f"CacheDir: {base / 'cache'}",
        f"LogDir: {base / 'log'}",
        f"SupportDir: {SUPPORT_DIR}",
        f"Port: {port}",
        f"BindAddress: {address}",
        "ForeGround: 1",
        f"PidFile: {base / 'pid'}",
        f"SocketPath: {base / 'socket'}",
        "VerboseLog: 1",
        "UnbufferLogs: 1",  # the transfer log is complete when a deploy ends, for `stats`
        "ExThreshold: 4",
        "ReportPage: acng-report.html",
        "PassThroughPattern: ^$",  # no CONNECT tunnels: hosts use the cache for the archive only
        f"SPfilePatternEx: {RELEASE_FILES}",  # release files are static: fetched once, never refreshed under readers
    ]
    lines += [f"Remap-{r.name}: {r.match} ; {r.backend}" for r in remaps(uris)]
    return "\n".join(lines) + "\n"


def host_conf(address: str, uris: list[str], port: int = PORT) -> str:
    """A host's apt.conf snippet: the cache as proxy for each cached archive's host, nothing else."""
    archive_hosts = sorted({urlsplit(r.backend).netloc for r in remaps(uris)})
    lines = ["// ssedeploy sandbox: this instance's apt cache (apt-cacher-ng on the bridge)"]
    lines += [f'Acquire::http::Proxy::{h} "http://{address}:{port}";' for h in archive_hosts]
    return "\n".join(lines) + "\n"


def write_host_conf(root: Path, address: str, uris: list[str]) -> None:
    path = root / HOST_CONF
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(host_conf(address, uris))


def base_dir(instance: str) -> Path:
    return hosts.instance_dir(instance) / DIR_NAME


def ensure_installed(log=print) -> None:
    """Install the distro's apt-cacher-ng if missing, without letting its package start a system daemon."""
    if os.path.exists(BINARY):
        return
    log(f"installing machine package: {PACKAGE} (the sandbox's apt cache)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    made = not policy.exists()
    if made:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", PACKAGE], check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if made:
            policy.unlink(missing_ok=True)


def start(instance: str, address: str, uris: list[str], log_path: Path) -> dict:
    """Write the config and start the server detached; returns what `alive`/`stop` need to find it."""
    base = base_dir(instance)
    for server in stale_servers(instance, address):
        stop(server)
    for sub in ("conf", "cache", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "conf" / "acng.conf").write_text(config(address, base, uris))
    cmd = [BINARY, "-c", str(base / "conf")]
    server = hosts.spawn(cmd, log_path)
    return {**server, "address": address, "port": PORT, "base": str(base), "uris": list(uris)}


def alive(server: dict | None) -> bool:
    """Is the recorded server still that process (not a later one that reused its PID)?"""
    if not server or not server.get("pid"):
        return False
    return (hosts.cmdline(server["pid"]) == server.get("cmdline")
            and hosts.running(server["pid"], server.get("start_time")))


def stale_servers(instance: str, address: str) -> list[dict]:
    """Caches of this instance still bound to address:PORT that no record names (a run cut between starting one
    and recording it): a new one could not bind."""
    out = subprocess.run(["ss", "-Hltnp", "src", address, "sport", "=", f":{PORT}"], capture_output=True, text=True)
    cmd = [BINARY, "-c", str(base_dir(instance) / "conf")]
    found = []
    for pid in {int(p) for p in re.findall(r"pid=(\d+)", out.stdout)}:
        if hosts.cmdline(pid) == cmd:
            found.append({"pid": pid, "start_time": hosts.process_start_time(pid), "cmdline": cmd})
    return found


def url(address: str) -> str:
    return f"http://{address}:{PORT}"


def wait_answering(server: dict, log_path: Path, timeout: float = 30) -> None:
    """Poll the cache's report page until it answers; fail early if it exited (e.g. the port is taken)."""
    target = f"{url(server['address'])}/acng-report.html"
    error = hosts.poll_answering(_OPENER, target, lambda: alive(server), timeout)
    if error is None:
        return
    tail = log_path.read_text().splitlines()[-5:] if log_path.exists() else []
    errors = Path(server["base"], "log", "apt-cacher.err")
    tail += errors.read_text().splitlines()[-5:] if errors.exists() else []
    bound = subprocess.run(["ss", "-Hltnp", "sport", "=", f":{PORT}"], capture_output=True, text=True).stdout
    raise AptCacheError(
        f"the apt cache does not answer at {target} ({error}; "
        f"{'it still runs' if alive(server) else 'it ' + hosts.exit_status(server['pid'])}); see {log_path}:\n"
        + "\n".join(tail) + (f"\nport {PORT} is taken on this machine:\n{bound}" if bound.strip() else ""))


def stop(server: dict | None, timeout: float = 10) -> None:
    """End the recorded server by its PID (SIGTERM, then SIGKILL); nothing if it is already gone."""
    if alive(server):
        hosts.end_process(server["pid"], server["start_time"], timeout)


def parse_transfer_log(text: str) -> dict:
    """Sum the transfer log: bytes and files fetched from the archive (I) and served to hosts (O), and the
    files served that were not fetched for them (hits)."""
    fetched = served = fetched_files = served_files = 0
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 3 or not fields[2].isdigit():
            continue
        if fields[1] == "I":
            fetched += int(fields[2])
            fetched_files += 1
        elif fields[1] == "O":
            served += int(fields[2])
            served_files += 1
    return {"fetched_bytes": fetched, "fetched_files": fetched_files, "served_bytes": served,
            "served_files": served_files, "hit_files": max(0, served_files - fetched_files)}


def stats(instance: str) -> dict | None:
    """The instance's cache figures so far (parse_transfer_log), or None when it has no cache log."""
    path = base_dir(instance) / "log" / TRANSFER_LOG
    try:
        return parse_transfer_log(path.read_text())
    except OSError:
        return None


def remove(instance: str) -> None:
    shutil.rmtree(base_dir(instance), ignore_errors=True)
