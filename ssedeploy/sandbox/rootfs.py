"""The read-only root filesystem that every sandbox host boots from.

Built once per distro with debootstrap and cached under /var/cache/ssedeploy, keyed
by everything that shapes it, so a changed package list or provisioning step makes a
new one instead of silently reusing a stale tree. Hosts get it through overlayfs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import aptsources, keyring

CACHE = Path("/var/cache/ssedeploy/rootfs")
LOGIN_USER = "admin"  # what Debian's cloud images call their sudo user
# Bump when the provisioning below changes, so cached trees are rebuilt.
PROVISION_VERSION = 3
PACKAGES = (
    "systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,python3,iproute2,"
    "ca-certificates,procps,curl,sudo,gnupg"
)
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # Debian 12's carries the Debian 13 keys too


class ArchiveUnreachable(RuntimeError):
    """The distro's package archive cannot be reached from this machine."""


@dataclass(frozen=True)
class Distro:
    key: str
    family: str
    suite: str
    components: tuple[str, ...]
    # Packages beyond PACKAGES that the distro's cloud image has (debootstrap's minbase has only `required` ones).
    extra: tuple[str, ...] = ()

    @property
    def packages(self) -> str:
        return ",".join([PACKAGES, *self.extra])


DISTROS = {
    "debian12": Distro("debian12", "debian", "bookworm", ("main",)),
    "debian13": Distro("debian13", "debian", "trixie", ("main",)),
    "ubuntu22": Distro("ubuntu22", "ubuntu", "jammy", ("main", "universe")),
    "ubuntu24": Distro("ubuntu24", "ubuntu", "noble", ("main", "universe")),
    # 26.04's sudo is sudo-rs: ubuntu-minimal depends on both `sudo` and `sudo-rs`, and sudo-rs takes
    # /usr/bin/sudo through update-alternatives (the classic one stays as sudo.ws). `sudo` alone would
    # give a host that is not what Ubuntu ships.
    "ubuntu26": Distro("ubuntu26", "ubuntu", "resolute", ("main", "universe"), extra=("sudo-rs",)),
}


@dataclass(frozen=True)
class Archive:
    """Where a distro's packages come from, read from this machine at run time."""

    mirror: str
    security: str
    sources_list: str

    @property
    def hosts(self) -> list[str]:
        return sorted({urlsplit(u).hostname for u in (self.mirror, self.security)})


def archive_for(distro: Distro) -> Archive:
    if distro.family == "debian":
        sources = aptsources.machine_sources()
        mirror = next((s.uri.rstrip("/") for s in sources if s.uri.rstrip("/").endswith("/debian")), None)
        security = next(
            (s.uri.rstrip("/") for s in sources if s.uri.rstrip("/").endswith("/debian-security")), None
        )
        if not mirror:
            raise ArchiveUnreachable("no Debian archive in this machine's apt sources")
        security = security or mirror
        comps = " ".join(distro.components)
        lines = [
            f"deb {mirror} {distro.suite} {comps}",
            f"deb {mirror} {distro.suite}-updates {comps}",
            f"deb {security} {distro.suite}-security {comps}",
        ]
    else:
        mirror = debootstrap_default_mirror()
        security = mirror
        comps = " ".join(distro.components)
        lines = [f"deb {mirror} {distro.suite}{pocket} {comps}" for pocket in ("", "-updates", "-security")]
    return Archive(mirror, security, "\n".join(lines) + "\n")


def debootstrap_default_mirror() -> str:
    """debootstrap's own default Ubuntu mirror for this architecture (read, not written here)."""
    text = Path("/usr/share/debootstrap/scripts/gutsy").read_text()
    for mirror in re.findall(r"default_mirror\s+(\S+)", text):
        if "old-releases" not in mirror and "ports" not in mirror:
            return mirror.rstrip("/")
    raise ArchiveUnreachable("debootstrap has no default Ubuntu mirror")


def check_reachable(archive: Archive, distro: Distro, timeout: float = 15) -> None:
    url = f"{archive.mirror}/dists/{distro.suite}/Release"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read(1)
    except Exception as exc:  # any failure means the same thing to the user
        raise ArchiveUnreachable(f"{distro.key}: its package archive is not reachable from this machine ({url}: {exc})")


def cache_key(distro: Distro, archive: Archive) -> str:
    parts = [distro.key, distro.packages, PROVISION_VERSION, archive.sources_list, LOGIN_USER]
    if distro.family == "ubuntu":
        # Trees built before the pinned key (possibly with --no-check-gpg) are not reused: a new key, a new tree.
        parts.append(sorted(keyring.PINNED))
    blob = json.dumps(parts)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure(distro: Distro, log=print) -> Path:
    """Return a ready rootfs for `distro`, building it under a lock if missing."""
    archive = archive_for(distro)
    target = CACHE / f"{distro.key}-{cache_key(distro, archive)}"
    if (target / ".ssedeploy-ready").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent `up` waits instead of building twice
        if (target / ".ssedeploy-ready").exists():
            return target
        check_reachable(archive, distro)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"building the {distro.key} rootfs once (about a minute), cached in {target}")
        _debootstrap(distro, archive, tmp, _keyring(distro, archive, log))
        _provision(tmp, archive)
        (tmp / ".ssedeploy-ready").write_text(json.dumps({"distro": distro.key}) + "\n")
        tmp.rename(target)
    return target


def _keyring(distro: Distro, archive: Archive, log=print) -> str | None:
    """The keyring debootstrap checks the archive's signatures with; None (said loudly) when there is none."""
    if distro.family == "ubuntu":
        try:
            return str(keyring.ubuntu_keyring(archive.mirror, distro.suite, log))
        except OSError as exc:  # the archive stopped answering between the reachability check and here
            raise ArchiveUnreachable(f"{distro.key}: could not fetch Ubuntu's keyring package: {exc}") from exc
    if os.path.exists(DEBIAN_KEYRING):
        return DEBIAN_KEYRING
    print(f"WARNING: {DEBIAN_KEYRING} is missing (package debian-archive-keyring): building the SANDBOX-ONLY "
          f"{distro.key} rootfs WITHOUT signature checks (--no-check-gpg)", file=sys.stderr)
    return None


def _debootstrap(distro: Distro, archive: Archive, dest: Path, keyring_path: str | None) -> None:
    cmd = ["debootstrap", "--variant=minbase", f"--include={distro.packages}",
           f"--components={','.join(distro.components)}"]
    cmd.append(f"--keyring={keyring_path}" if keyring_path else "--no-check-gpg")
    cmd += [distro.suite, str(dest), archive.mirror]
    if distro.family == "ubuntu":
        cmd.append("/usr/share/debootstrap/scripts/gutsy")  # Debian 12's debootstrap has no noble/resolute script
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        if "Failed getting release file" in tail or "Couldn't download" in tail:
            raise ArchiveUnreachable(f"{distro.key}: debootstrap could not download from the archive:\n{tail}")
        raise RuntimeError(f"debootstrap failed:\n{tail}")


def _chroot(root: Path, *args: str) -> None:
    subprocess.run(["chroot", str(root), *args], check=True, capture_output=True)


def _provision(root: Path, archive: Archive) -> None:
    """Make the tree look like a fresh cloud image: per-host bits are added at boot time."""
    etc = root / "etc"
    (etc / "apt/sources.list").write_text(archive.sources_list)
    # Targets get no resolver at all (archive names are pinned in /etc/hosts per host).
    (etc / "resolv.conf").unlink(missing_ok=True)
    (etc / "resolv.conf").write_text("")
    (etc / "machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()  # each host gets its own, written into its known_hosts entry
    (etc / "ssh/sshd_config.d").mkdir(exist_ok=True)
    (etc / "ssh/sshd_config.d/ssedeploy-sandbox.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n"
    )
    _chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "--user-group", LOGIN_USER)
    sudoers = etc / "sudoers.d" / LOGIN_USER
    sudoers.write_text(f"{LOGIN_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    ssh_dir = root / "home" / LOGIN_USER / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    uid_gid = _uid_gid(root, LOGIN_USER)
    os.chown(ssh_dir, *uid_gid)
    _chroot(root, "systemctl", "enable", "systemd-networkd", "ssh")
    # apt timers grab the dpkg lock mid-deploy; wait-online stalls boot with no DHCP.
    _chroot(
        root, "systemctl", "mask",
        "apt-daily.timer", "apt-daily-upgrade.timer", "systemd-networkd-wait-online.service",
    )
    (etc / "apt/apt.conf.d/80ssedeploy-sandbox").write_text('Acquire::Retries "3";\n')


def _uid_gid(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise KeyError(user)


def systemd_version(root: Path) -> int | None:
    """The systemd a rootfs carries, from the name of its libsystemd-shared-NNN.so (what systemd-nspawn reads)."""
    for pattern in ("usr/lib/systemd/libsystemd-shared-*.so", "usr/lib/*/systemd/libsystemd-shared-*.so"):
        for lib in root.glob(pattern):
            match = re.match(r"libsystemd-shared-(\d+)", lib.name)
            if match:
                return int(match.group(1))
    return None
