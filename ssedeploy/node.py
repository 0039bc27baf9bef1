"""The app's Node.js: the distro's, or an official Linux build from a download site laid out like the Node.js
project's (index.json, vX.Y.Z/SHASUMS256.txt, vX.Y.Z/node-vX.Y.Z-linux-ARCH.tar.xz).

`app.node` is `distro`, a release line (`24`: the newest 24.x in index.json at deploy time) or an exact
version (`24.22.3`: never moves). The controller resolves it and reads the tarball's SHA-256 from that
release's SHASUMS256.txt before any host changes; the host downloads the tarball, checks it against that
sum before unpacking (scripts/node-install.sh) and keeps each version side by side under a versioned
directory. The pure parts (spec, resolution, checksum line) are table-tested; fetches are cached per run.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# The Node.js project's own download site; `app.node_mirror` names another one laid out the same way.
OFFICIAL_MIRROR = "https://nodejs.org/dist"
# The default line: an LTS line in support on the day of the release (24: maintenance LTS until 2028-04-30).
# Changing it is a documented change (README: Settings).
DEFAULT = "24"
DISTRO = "distro"
# `uname -m` -> the official builds' name for it.
ARCHES = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
FETCH_TIMEOUT = 30

_LINE_RE = re.compile(r"^[1-9]\d{0,2}$")
_VERSION_RE = re.compile(r"^[1-9]\d{0,2}\.\d{1,4}\.\d{1,4}$")
_MIRROR_RE = re.compile(r"^(https?|file)://[^\s'\"\\;$`]+$")


class NodeError(RuntimeError):
    """The Node a setting asks for cannot be had (no such release, no checksum, a tampered build)."""


class Unreachable(NodeError):
    """The download site did not answer."""


def check_spec(value: str) -> str:
    if value != DISTRO and not _LINE_RE.fullmatch(value) and not _VERSION_RE.fullmatch(value):
        raise ValueError("must be 'distro', a release line such as '24', or an exact version such as '24.22.3' "
                         "(no 'v', no ranges)")
    return value


def check_mirror(value: str) -> str:
    if not _MIRROR_RE.fullmatch(value):
        raise ValueError("must be an http(s):// URL of a site laid out like the Node.js download site "
                         "(index.json, vX.Y.Z/SHASUMS256.txt)")
    return value.rstrip("/")


def is_line(spec: str) -> bool:
    return bool(_LINE_RE.fullmatch(spec))


def lowest(spec: str) -> str | None:
    """The oldest version a spec can give: a line's X.0.0, an exact version itself; None for the distro's."""
    if spec == DISTRO:
        return None
    return f"{spec}.0.0" if is_line(spec) else spec


def arch(machine: str) -> str:
    """The official builds' name for `uname -m`; ValueError for an architecture they do not cover."""
    try:
        return ARCHES[machine]
    except KeyError:
        raise ValueError(f"the official Node.js Linux builds cover x64 and arm64, not {machine}: "
                         "set app.node to 'distro'") from None


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def resolve(spec: str, index: list[dict], arch_name: str) -> str:
    """The version a line or exact version means in a download site's index.json (entries with
    `version` "vX.Y.Z" and `files`, which must list linux-ARCH)."""
    build = f"linux-{arch_name}"
    offered = sorted((e["version"].lstrip("v") for e in index
                      if build in e.get("files", ()) and _VERSION_RE.fullmatch(e.get("version", "").lstrip("v"))),
                     key=version_key)
    if is_line(spec):
        matching = [v for v in offered if v.split(".")[0] == spec]
        if not matching:
            raise NodeError(f"no Node.js {spec}.x release with a {build} build is listed")
        return matching[-1]
    if spec not in offered:
        raise NodeError(f"Node.js {spec} with a {build} build is not listed")
    return spec


def tarball(version: str, arch_name: str) -> str:
    return f"node-v{version}-linux-{arch_name}.tar.xz"


def home_name(version: str, arch_name: str) -> str:
    """The versioned directory a build is installed to (one per version, side by side)."""
    return f"v{version}-linux-{arch_name}"


def sha256_for(shasums: str, filename: str) -> str:
    """The SHA-256 SHASUMS256.txt gives for `filename` ("<hex>  <name>" lines)."""
    for line in shasums.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            return parts[0]
    raise NodeError(f"SHASUMS256.txt lists no checksum for {filename}")


@dataclass(frozen=True)
class Build:
    """One official build: what a host installs and checks."""

    version: str
    arch: str
    url: str
    sha256: str

    @property
    def home(self) -> str:
        return home_name(self.version, self.arch)


def _open(url: str):
    """urlopen, with the environment's proxy for the internet but never for a private address (a sandbox's
    mirror on its bridge, a mirror on the LAN), which a proxy cannot reach."""
    try:
        private = ipaddress.ip_address(urlsplit(url).hostname or "").is_private
    except ValueError:
        private = False
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if private else urllib.request.build_opener()
    return opener.open(url, timeout=FETCH_TIMEOUT)


@functools.lru_cache(maxsize=None)
def _fetch(url: str) -> bytes:
    try:
        with _open(url) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise Unreachable(f"cannot fetch {url}: {reason}") from None


def index(mirror: str) -> list[dict]:
    try:
        entries = json.loads(_fetch(f"{mirror}/index.json"))
    except ValueError:
        raise NodeError(f"{mirror}/index.json is not a JSON list of releases") from None
    if not isinstance(entries, list):
        raise NodeError(f"{mirror}/index.json is not a JSON list of releases")
    return entries


def build_for(spec: str, mirror: str, arch_name: str) -> Build:
    """Resolve a line or version on `mirror` and read its tarball's checksum (two small fetches, cached)."""
    version = resolve(spec, index(mirror), arch_name)
    name = tarball(version, arch_name)
    sums = _fetch(f"{mirror}/v{version}/SHASUMS256.txt").decode("utf-8", "replace")
    return Build(version, arch_name, f"{mirror}/v{version}/{name}", sha256_for(sums, name))


def download(build: Build, dest: Path) -> None:
    """Fetch a build's tarball to DEST and check it against its SHASUMS256.txt entry (NodeError if not)."""
    try:
        with _open(build.url) as response, dest.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unreachable(f"cannot fetch {build.url}: {getattr(exc, 'reason', None) or exc}") from None
    digest = file_sha256(dest)
    if digest != build.sha256:
        raise NodeError(f"{build.url} has SHA-256 {digest}, but its SHASUMS256.txt says {build.sha256}: refused")


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in chunks (a Node build is 50 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def install_local(mirror: str, spec: str, arch_name: str, dest_root: Path) -> Path:
    """Install a build on this machine (the controller's builds use it): checked like a host's, unpacked to
    DEST_ROOT/vX.Y.Z-linux-ARCH by a rename, so a present directory is always whole. Returns that home."""
    build = build_for(spec, mirror, arch_name)
    home = dest_root / build.home
    if (home / "bin" / "node").is_file():
        return home
    dest_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=".install-") as tmp:
        archive = Path(tmp) / "node.tar.xz"
        download(build, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="tar")
        (Path(tmp) / f"node-v{build.version}-linux-{arch_name}").rename(home)
    return home


def distro_version(package_version: str) -> str | None:
    """The Node version in a Debian package version (`18.19.0+dfsg-6~deb12u2` -> 18.19.0); None if none."""
    match = re.match(r"^(?:\d+:)?(\d+\.\d+\.\d+)", package_version.strip())
    return match.group(1) if match else None
