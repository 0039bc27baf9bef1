"""One sandbox host: an overlay over the cached rootfs, booted with systemd-nspawn.

Each host's writable layer and mount live under /var/lib/ssedeploy/sandbox/<instance>/,
named by instance so a later run (from any checkout) finds and cleans what a crashed
one left. nspawn is started from a cgroup of its own in every hierarchy it uses:
it creates payload/ and supervisor/ where it starts, so two hosts from one cgroup
would collide.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

HOSTS_DIR = Path("/var/lib/ssedeploy/sandbox")
CGROUP_ROOTS = [Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup")]


def instance_dir(instance: str) -> Path:
    return HOSTS_DIR / instance


def cgroup_dirs(instance: str, host: str | None = None) -> list[Path]:
    """The cgroups this instance starts hosts from, one per mounted hierarchy nspawn uses."""
    dirs = []
    for root in CGROUP_ROOTS:
        if (root / "cgroup.procs").exists() and (root != Path("/sys/fs/cgroup") or _is_cgroup2(root)):
            base = root / "ssedeploy" / instance
            dirs.append(base / host if host else base)
    return dirs


def _is_cgroup2(path: Path) -> bool:
    return (path / "cgroup.controllers").exists()


def mount_overlay(lower: Path, instance: str, host: str) -> Path:
    """A fresh writable layer over the rootfs; anything left from an earlier run is discarded."""
    base = instance_dir(instance) / host
    root = base / "root"
    if root.is_mount():
        subprocess.run(["umount", "-l", str(root)], check=True)
    for sub in ("upper", "work"):
        shutil.rmtree(base / sub, ignore_errors=True)
        (base / sub).mkdir(parents=True)
    root.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)], check=True)
    return root


def write_host_files(
    root: Path, *, name: str, address: str, prefixlen: int, gateway: str,
    login_user: str, authorized_key: str, pins: dict[str, list[str]],
) -> str:
    """Per-host identity and network; returns the host's public SSH key line."""
    etc = root / "etc"
    (etc / "hostname").write_text(name + "\n")
    (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
    hosts = ["127.0.0.1 localhost", f"127.0.1.1 {name}", "::1 localhost ip6-localhost ip6-loopback"]
    hosts += [f"{addr} {hostname}" for hostname, addrs in sorted(pins.items()) for addr in addrs[:1]]
    (etc / "hosts").write_text("\n".join(hosts) + "\n")
    # Sorts before systemd's 80-container-host0.network, which would ask for DHCP.
    (etc / "systemd/network/10-host0.network").write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={address}/{prefixlen}\nGateway={gateway}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    key = etc / "ssh/ssh_host_ed25519_key"
    for path in (key, key.with_suffix(".pub")):
        path.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    home_ssh = root / "home" / login_user / ".ssh"
    auth = home_ssh / "authorized_keys"
    auth.write_text(authorized_key.strip() + "\n")
    st = home_ssh.stat()
    os.chown(auth, st.st_uid, st.st_gid)
    auth.chmod(0o600)
    keytype, keydata = key.with_suffix(".pub").read_text().split()[:2]
    return f"{keytype} {keydata}"


# The open-files limits a systemd server starts its services with (soft:hard, systemd's default), given
# to the container instead of this machine's own: ssedeploy sizes nginx under the host's hard limit, so
# a sandbox must have a real server's to derive what a real server gets. Raising a hard limit needs
# CAP_SYS_RESOURCE, which some machines withhold even from root (this project's CI machine: setrlimit
# gives EPERM above its 20000); there the hosts keep the machine's limit and `up` says so.
NOFILE = (1024, 524288)


def server_nofile() -> bool:
    """Give this process (and so every nspawn it starts) a server's open-files limits; False if not allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard >= NOFILE[1]:
        return True
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, NOFILE[0]), NOFILE[1]))
    except (ValueError, OSError):
        return False
    return True


# Every booted host's systemd, journald, logind, dbus, agetty... hold about 10 inotify instances, all counted
# against root (the containers' root is this machine's), and the kernel's default limit of 128 per user leaves the
# 12th host or so with failed `.path` units ("systemd is 'degraded' after boot"): `up` raises the limit for the
# hosts it runs (INOTIFY_PER_HOST each, at least INOTIFY_FLOOR) and the last instance's `down` puts the machine's
# own value back, as with ip_forward.
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_HOST = 16
INOTIFY_FLOOR = 1024


def inotify_limit_for(current: int, hosts_running: int) -> int:
    """The max_user_instances to set for `hosts_running` sandbox hosts: never lower than `current`."""
    return max(current, INOTIFY_FLOOR, 128 + INOTIFY_PER_HOST * hosts_running)


def raise_inotify_limit(hosts_running: int, saved: Path) -> None:
    """Raise max_user_instances for the hosts about to run, remembering the machine's own value the first time."""
    try:
        current = int(INOTIFY_INSTANCES.read_text())
    except (OSError, ValueError):
        return
    wanted = inotify_limit_for(current, hosts_running)
    if wanted == current:
        return
    saved.parent.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        saved.write_text(f"{current}\n")
    INOTIFY_INSTANCES.write_text(f"{wanted}\n")


def restore_inotify_limit(saved: Path) -> None:
    """Put the machine's own max_user_instances back (once no sandbox instance is left)."""
    if saved.exists():
        INOTIFY_INSTANCES.write_text(saved.read_text())
        saved.unlink()


# systemd 258 dropped cgroup v1: Ubuntu 26.04's 259 stops at boot with "Detected unsupported legacy cgroup
# hierarchy, refusing execution" where systemd-nspawn (Debian 12's 252) hands it the hybrid layout of a machine
# like this project's. Such hosts get the unified (v2) hierarchy alone; older ones (Debian 13's 257 included)
# keep the hybrid layout, as before.
UNIFIED_FROM_SYSTEMD = 258


def boot(instance: str, host: str, root: Path, bridge: str, log_path: Path, systemd: int | None = None) -> int:
    """Start `systemd-nspawn --boot` detached, from the host's own cgroups; returns its PID.

    `systemd`: the version the rootfs carries (rootfs.systemd_version), which decides its cgroup layout."""
    cgroups = cgroup_dirs(instance, host)
    for cg in cgroups:
        cg.mkdir(parents=True, exist_ok=True)

    def enter_cgroups() -> None:
        for cg in cgroups:
            (cg / "cgroup.procs").write_text("0\n")

    cmd = [
        "systemd-nspawn", "--boot", "-D", str(root), "-M", host,
        "--register=no", "--keep-unit",  # there is no system bus on the machine
        f"--network-bridge={bridge}",
        "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only",
        f"--rlimit=NOFILE={NOFILE[0]}:{NOFILE[1]}",
    ]
    env = dict(os.environ)
    if systemd and systemd >= UNIFIED_FROM_SYSTEMD:
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=enter_cgroups,
        )
    return proc.pid


def process_start_time(pid: int) -> int | None:
    """Kernel start time of `pid`, to tell our process from a later one that reused its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_ours(pid: int, start_time: int | None) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"systemd-nspawn" in cmdline and (start_time is None or process_start_time(pid) == start_time)


def stop(pid: int, start_time: int | None, timeout: float = 20) -> None:
    """SIGTERM powers the host off cleanly (~2 s); SIGKILL if it does not."""
    if not is_ours(pid, start_time):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_ours(pid, start_time):
            return
        _reap(pid)
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def write_whole(path: Path, data: str | bytes) -> None:
    """Replace `path` by one rename of a temp file beside it: a reader sees the old file or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    tmp.replace(path)


def read_json(path: Path) -> dict | None:
    """A record written by write_whole, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> list[str] | None:
    """A process's command line (None: gone, or it reads empty, as while a process exits)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else None


def spawn(cmd: list[str], log_path: Path, env: dict | None = None, timeout: float = 10) -> dict:
    """Start a server of ours detached (own session, output appended to `log_path`) and return its record
    ({pid, start_time, cmdline}) once it runs `cmd`: until its exec is done its command line is its parent's
    (or reads empty), and a check of who it is would take a starting server for a gone one."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while cmdline(proc.pid) != cmd and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"pid": proc.pid, "start_time": process_start_time(proc.pid), "cmdline": cmd}


def running(pid: int, start_time: int | None) -> bool:
    """Has the process with this PID and start time not exited yet? A zombie has (its sockets are closed);
    its command line reads empty already while it exits, before its files are closed, so that is no test."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and int(fields[19]) == start_time


def end_process(pid: int, start_time: int | None, timeout: float = 10) -> None:
    """End one of our servers by PID (SIGTERM, then SIGKILL), and return once it has exited, so that its
    address and port are free for the next one."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not running(pid, start_time):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while running(pid, start_time) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)


def poll_answering(opener, target: str, alive, timeout: float) -> Exception | None:
    """Fetch `target` until it answers while `alive()` (a server this machine started: not another process
    on its port); None once it does, else the last error when the server exited or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(target, timeout=2) as response:
                response.read()
            if alive():
                return None
            error: Exception = OSError("another process answered")
        except OSError as exc:
            error = exc
        if not alive() or time.monotonic() > deadline:
            return error
        time.sleep(0.1)


def exit_status(pid: int) -> str:
    """How an ended server of ours exited, if this process is its parent and has not reaped it yet."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "is gone"
    if reaped == 0:
        return "is gone"
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def cgroup_pids(instance: str) -> list[int]:
    pids = set()
    for base in cgroup_dirs(instance):
        for procs in base.rglob("cgroup.procs") if base.exists() else []:
            try:
                pids |= {int(p) for p in procs.read_text().split()}
            except OSError:
                pass
    return sorted(pids)


def remove_cgroups(instance: str) -> None:
    """Kill what is left in the instance's own cgroups, then remove them deepest first."""
    for _ in range(50):
        pids = cgroup_pids(instance)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    for base in cgroup_dirs(instance):
        if not base.exists():
            continue
        for path in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            path.rmdir()
        base.rmdir()
        try:
            base.parent.rmdir()  # the shared ssedeploy/ level, once no instance uses it
        except OSError:
            pass


def mounts_under(path: Path) -> list[Path]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = Path(line.split()[4].replace("\\040", " "))
        if mount_point == path or path in mount_point.parents:
            found.append(mount_point)
    return sorted(found, key=lambda p: -len(p.parts))


def unmount_all(instance: str) -> None:
    for mount_point in mounts_under(instance_dir(instance)):
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            lazy = subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, text=True)
            # A concurrent `down` may have unmounted it in between: only a mount still there is an error.
            if lazy.returncode != 0 and mount_point in mounts_under(instance_dir(instance)):
                raise subprocess.CalledProcessError(lazy.returncode, lazy.args, lazy.stdout, lazy.stderr)


def remove_dirs(instance: str) -> None:
    shutil.rmtree(instance_dir(instance), ignore_errors=True)
