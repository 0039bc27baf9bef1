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
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from debian import deb822
from debian.debian_support import Version

from . import hosts

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


# --- the pinned keys, kept by gpg (it checks each key's self-signatures as it imports)

def _gpg(home: str, *args: str, data: bytes | None = None) -> bytes:
    """gpg on a throwaway home; --no-autostart: public keys need no agent, so none is left running."""
    cmd = ["gpg", "--homedir", home, "--batch", "--no-tty", "--no-autostart", "--quiet", *args]
    try:
        done = subprocess.run(cmd, input=data, capture_output=True, check=True)
    except FileNotFoundError as exc:
        raise KeyringError("gpg is not installed (package gpg): it keeps only the pinned archive key") from exc
    except subprocess.CalledProcessError as exc:
        raise KeyringError(f"gpg {args[0]}: {exc.stderr.decode(errors='replace').strip()}") from exc
    return done.stdout


def _primary_fingerprints(listing: str) -> list[str]:
    """The primary keys' fingerprints in `gpg --with-colons` output (an fpr record follows its pub record)."""
    found, after_pub = [], False
    for line in listing.splitlines():
        kind = line.split(":", 1)[0]
        if kind == "fpr" and after_pub:
            found.append(line.split(":")[9])
        after_pub = kind == "pub"
    return found


def keys(data: bytes) -> list[str]:
    """The fingerprints of the primary keys in a keyring (binary or armored)."""
    with tempfile.TemporaryDirectory() as home:
        _gpg(home, "--import", data=data)
        return _primary_fingerprints(_gpg(home, "--with-colons", "--list-keys").decode())


def pinned_only(data: bytes, pinned=PINNED) -> bytes:
    """The pinned keys of a keyring (with their user IDs, signatures and subkeys), and nothing else."""
    with tempfile.TemporaryDirectory() as home:
        _gpg(home, "--import", data=data)
        have = _primary_fingerprints(_gpg(home, "--with-colons", "--list-keys").decode())
        missing = [f"{fpr} ({name})" for fpr, name in pinned.items() if fpr not in have]
        if missing:
            raise KeyringError(f"Ubuntu's keyring does not carry the pinned key(s) {', '.join(missing)}; "
                               f"it carries {', '.join(sorted(have)) or 'no key'}")
        return _gpg(home, "--export", *sorted(pinned))


# --- the ubuntu-keyring package in the archive's index

def find_package(index: str, name: str) -> dict[str, str]:
    """Filename, SHA256, Size and Version of `name` in an apt Packages index (the highest version if listed twice)."""
    found = [p for p in deb822.Packages.iter_paragraphs(index, use_apt_pkg=False)
             if p.get("Package") == name and {"Filename", "SHA256", "Size", "Version"} <= set(p)]
    if not found:
        raise KeyringError(f"the archive's index lists no {name} package")
    best = max(found, key=lambda p: Version(p["Version"]))
    return {k: best[k] for k in ("Filename", "SHA256", "Size", "Version")}


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
            if sorted(keys(target.read_bytes())) == sorted(PINNED):
                return target
        except KeyringError:
            pass  # a damaged cache is rebuilt below
    if MACHINE_KEYRING.exists():
        source, data = str(MACHINE_KEYRING), MACHINE_KEYRING.read_bytes()
    else:
        source, data = f"the ubuntu-keyring package of {suite}", fetch_deb_keyring(mirror, suite)
    kept = pinned_only(data)
    hosts.write_whole(target, kept)
    log(f"Ubuntu archive key {', '.join(PINNED)} (pinned) taken from {source}: debootstrap checks signatures with it")
    return target
