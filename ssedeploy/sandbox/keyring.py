"""Ubuntu's archive signing key for debootstrap, on a machine that packages no Ubuntu keyring.

Debian 12 has no ubuntu-keyring package (`apt-cache policy ubuntu-keyring`: no candidate), so the keys come
from Ubuntu's own ubuntu-keyring .deb, fetched from the archive the sandbox already builds from. Nothing
fetched is trusted as such: a key is kept only if its full fingerprint is pinned below, and debootstrap then
checks each Release file against that key alone. A keyring on the machine (an Ubuntu machine has one) is
filtered the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

CACHE = Path("/var/cache/ssedeploy/keyrings")
MACHINE_KEYRING = Path("/usr/share/keyrings/ubuntu-archive-keyring.gpg")
KEYRING_IN_DEB = "usr/share/keyrings/ubuntu-archive-keyring.gpg"
# Ubuntu Archive Automatic Signing Key (2018) <ftpmaster@ubuntu.com>, rsa4096, made 2018-09-17: the key that
# signs the Release files of every supported release since 20.10 (jammy, noble, resolute). Full fingerprint as
# Canonical publishes it in chisel-releases' chisel.yaml (public-keys: ubuntu-archive-key-2018,
# "rsa4096/f6ecb3762474eda9d21b7022871920d1991bc93c 2018-09-17T15:01:46Z") and in the Ubuntu Security Team FAQ
# (wiki page SecurityTeam/FAQ); Launchpad bug 1881278 added it to xenial's keyring for the same reason.
PINNED = {"F6ECB3762474EDA9D21B7022871920D1991BC93C": "Ubuntu Archive Automatic Signing Key (2018)"}
MAX_DEB = 1 << 20  # the keyring package is ~20 KB; never read an archive's worth


class KeyringError(RuntimeError):
    """The keys could not be had, or do not carry the pinned fingerprints."""


# --- OpenPGP packets (RFC 4880 section 4.2): just enough to split a keyring into keys and fingerprint them.

def packets(data: bytes):
    """(tag, header+body bytes, body) of each packet; old and new header formats."""
    i = 0
    while i < len(data):
        start, first = i, data[i]
        if not first & 0x80:
            raise KeyringError(f"not an OpenPGP keyring (byte {i})")
        if first & 0x40:  # new format
            tag, o = first & 0x3F, data[i + 1]
            if o < 192:
                length, i = o, i + 2
            elif o < 224:
                length, i = ((o - 192) << 8) + data[i + 2] + 192, i + 3
            elif o == 255:
                length, i = int.from_bytes(data[i + 2:i + 6], "big"), i + 6
            else:
                raise KeyringError("partial-length packet in a keyring")
        else:  # old format
            tag, kind = (first >> 2) & 0x0F, first & 3
            if kind == 3:
                raise KeyringError("indeterminate-length packet in a keyring")
            size = 1 << kind
            length, i = int.from_bytes(data[i + 1:i + 1 + size], "big"), i + 1 + size
        body = data[i:i + length]
        if len(body) != length:
            raise KeyringError("truncated OpenPGP packet")
        i += length
        yield tag, data[start:i], body


def fingerprint(body: bytes) -> str | None:
    """The v4 fingerprint of a public-key packet body (SHA-1 of 0x99, length, body); None for other versions."""
    if not body or body[0] != 4:
        return None
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()


def keys(data: bytes) -> dict[str, bytes]:
    """Each primary key of a binary keyring by fingerprint, with its user IDs, signatures and subkeys."""
    found: dict[str, bytes] = {}
    current = None
    for tag, raw, body in packets(data):
        if tag == 6:  # a public key starts a new transferable key
            current = fingerprint(body)
            if current:
                found[current] = b""
        if current:
            found[current] += raw
    return found


def pinned_only(data: bytes, pinned=PINNED) -> bytes:
    """The pinned keys of a keyring, and nothing else; refused if one is missing."""
    have = keys(data)
    missing = [f"{fpr} ({name})" for fpr, name in pinned.items() if fpr not in have]
    if missing:
        raise KeyringError(f"Ubuntu's keyring does not carry the pinned key(s) {', '.join(missing)}; "
                           f"it carries {', '.join(sorted(have)) or 'no key'}")
    return b"".join(have[fpr] for fpr in sorted(pinned))


# --- the ubuntu-keyring package in the archive's index

def find_package(index: str, name: str) -> dict[str, str]:
    """Filename, SHA256 and Size of `name` in an apt Packages index (the highest version if listed twice)."""
    best: dict[str, str] | None = None
    for stanza in re.split(r"\n\s*\n", index):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+):[ \t]*(.*)$", stanza, re.M))
        if fields.get("Package") == name and {"Filename", "SHA256", "Size"} <= fields.keys():
            if best is None or _newer(fields["Version"], best["Version"]):
                best = fields
    if best is None:
        raise KeyringError(f"the archive's index lists no {name} package")
    return {k: best[k] for k in ("Filename", "SHA256", "Size", "Version")}


def _newer(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


def _get(url: str, limit: int, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data = resp.read(limit + 1)
    if len(data) > limit:
        raise KeyringError(f"{url}: larger than {limit} bytes")
    return data


def _index(mirror: str, suite: str, arch: str) -> str:
    """The suite's main Packages index (.xz, else .gz); a network failure is raised as it is (OSError)."""
    base = f"{mirror}/dists/{suite}/main/binary-{arch}/Packages"
    try:
        return lzma.decompress(_get(base + ".xz", 64 << 20)).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    return gzip.decompress(_get(base + ".gz", 64 << 20)).decode("utf-8", "replace")


def fetch_deb_keyring(mirror: str, suite: str) -> bytes:
    """ubuntu-archive-keyring.gpg out of the ubuntu-keyring .deb in `mirror`'s `suite` (not yet trusted)."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    entry = find_package(_index(mirror, suite, arch), "ubuntu-keyring")
    deb = _get(f"{mirror}/{entry['Filename']}", MAX_DEB)
    # The index is not yet authenticated either: this catches a broken download, the pin catches the rest.
    if hashlib.sha256(deb).hexdigest() != entry["SHA256"]:
        raise KeyringError(f"{entry['Filename']}: SHA-256 differs from the archive's index")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "keyring.deb")
        path.write_bytes(deb)
        subprocess.run(["dpkg-deb", "-x", str(path), tmp], check=True, capture_output=True)
        found = Path(tmp, KEYRING_IN_DEB)
        if not found.is_file():
            raise KeyringError(f"ubuntu-keyring {entry['Version']} has no {KEYRING_IN_DEB}")
        return found.read_bytes()


def ubuntu_keyring(mirror: str, suite: str, log=print) -> Path:
    """A keyring holding only the pinned Ubuntu archive key(s), for debootstrap --keyring."""
    target = CACHE / "ubuntu-archive-pinned.gpg"
    if target.exists():
        try:
            if set(keys(target.read_bytes())) == set(PINNED):
                return target
        except KeyringError:
            pass  # a damaged cache is rebuilt below
    if MACHINE_KEYRING.exists():
        source, data = str(MACHINE_KEYRING), MACHINE_KEYRING.read_bytes()
    else:
        source, data = f"the ubuntu-keyring package of {suite}", fetch_deb_keyring(mirror, suite)
    kept = pinned_only(data)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(kept)
    tmp.replace(target)
    log(f"Ubuntu archive key {', '.join(PINNED)} (pinned) taken from {source}: debootstrap checks signatures with it")
    return target
