"""A named sandbox instance: its hosts, its state files and the kernel state it owns.

State is kept twice on purpose: `.sandbox/<instance>/` in the checkout (SSH key,
known_hosts, the host list with PIDs) is what users and inventories read, and
/var/lib/ssedeploy/sandbox/<instance>/instance.json lets any later run, from any
checkout, find and clean what a crashed run left. Kernel objects (bridge, table,
mounts, cgroups) are also found by name, so a run whose state files are gone is
cleaned all the same.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import paramiko

from . import acme, aptcache, hosts, keyring, network, nodemirror, rootfs

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,10}$")  # bridge `ssd-<name>` must fit IFNAMSIZ
REPO_ROOT = Path(__file__).resolve().parents[2]
MACHINE_TOOLS = {
    "debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nft": "nftables",
    "ip": "iproute2", "ssh-keygen": "openssh-client", "ssh": "openssh-client",
    "npm": "npm", "xz": "xz-utils",  # the Node.js mirror (nodemirror.py)
    "gpg": "gpg",  # keeps only the pinned Ubuntu archive key (keyring.py)
    "pebble": "pebble", "pebble-challtestsrv": "pebble", "openssl": "openssl",  # the ACME CA (acme.py)
}


INOTIFY_SAVED = network.RUN_DIR / "inotify_max_user_instances.orig"  # the machine's own, restored by the last `down`


def _hosts_running() -> int:
    """Sandbox hosts running on this machine, every instance's (their systemd-nspawn processes)."""
    out = subprocess.run(["pgrep", "-c", "-x", "systemd-nspawn"], capture_output=True, text=True).stdout
    return int(out.strip() or 0)


class SandboxError(RuntimeError):
    exit_status = 1


class Unreachable(SandboxError):
    exit_status = 3


@dataclass
class Host:
    name: str
    address: str
    pid: int
    start_time: int | None

    @property
    def alive(self) -> bool:
        return hosts.is_ours(self.pid, self.start_time)


@dataclass
class Record:
    instance: str
    distro: str
    subnet: str
    state_dir: str
    hosts: list[Host] = field(default_factory=list)

    def dump(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> "Record | None":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        data["hosts"] = [Host(**h) for h in data.get("hosts", [])]
        return cls(**data)


def check_name(instance: str) -> str:
    if not NAME_RE.fullmatch(instance or ""):
        raise SandboxError(
            f"sandbox name {instance!r} is not allowed: use 1-11 characters, a lower-case letter "
            "first, then lower-case letters, digits or '-'"
        )
    return instance


def state_dir(instance: str) -> Path:
    return REPO_ROOT / ".sandbox" / instance


def global_record_path(instance: str) -> Path:
    return hosts.instance_dir(instance) / "instance.json"


def load_record(instance: str) -> Record | None:
    """This checkout's record, else the machine-wide one (e.g. left by another checkout)."""
    return Record.load(state_dir(instance) / "instance.json") or Record.load(global_record_path(instance))


def save_record(rec: Record) -> None:
    for path in (Path(rec.state_dir) / "instance.json", global_record_path(rec.instance)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(rec.dump())
        tmp.replace(path)


def require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (bridges, mounts, nspawn): run it as root")


def ensure_machine_tools(log=print) -> None:
    missing = sorted({pkg for tool, pkg in MACHINE_TOOLS.items() if not shutil.which(tool)})
    if not missing:
        return
    log(f"installing machine packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_key(state: Path) -> Path:
    key = state / "id_ed25519"
    if not key.exists():
        state.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ssedeploy-sandbox", "-f", str(key)],
                       check=True)
    return key


def host_status(rec: Record, host: Host) -> dict:
    state = Path(rec.state_dir)
    info = {
        "name": host.name, "address": host.address, "port": 22, "distro": rec.distro,
        "ssh_user": rootfs.LOGIN_USER, "ssh_key": str(state / "id_ed25519"),
        "known_hosts": str(state / "known_hosts"), "pid": host.pid, "instance": rec.instance,
    }
    mirror = load_mirror(rec.instance)
    if mirror:
        info["node_mirror"] = nodemirror.url(mirror["address"])
    cache = load_apt_cache(rec.instance)
    if cache:
        info["apt_cache"] = aptcache.url(cache["address"])
    ca = acme.load(rec.instance)
    if ca:
        info.update(acme_directory=acme.directory_url(ca["address"]), acme_ca=ca["ca"],
                    acme_roots=str(acme.roots_path(rec.instance)),
                    acme_name=acme.host_name(rec.instance, host.name), acme_site=acme.site_name(rec.instance),
                    acme_first=host.name == rec.hosts[0].name)
    return info


# The Node.js mirror's server (nodemirror.start) is recorded beside instance.json, not in it: a checkout of an
# older ssedeploy still reads the instance's record.
def mirror_path(instance: str) -> Path:
    return hosts.instance_dir(instance) / "node-mirror.json"


def load_mirror(instance: str) -> dict | None:
    return hosts.read_json(mirror_path(instance))


def save_mirror(instance: str, mirror: dict) -> None:
    hosts.write_whole(mirror_path(instance), json.dumps(mirror) + "\n")


# The apt cache's server (aptcache.start), recorded beside instance.json like the mirror's.
def apt_cache_path(instance: str) -> Path:
    return hosts.instance_dir(instance) / "apt-cache.json"


def load_apt_cache(instance: str) -> dict | None:
    return hosts.read_json(apt_cache_path(instance))


def save_apt_cache(instance: str, cache: dict) -> None:
    hosts.write_whole(apt_cache_path(instance), json.dumps(cache) + "\n")


def status(instance: str) -> list[dict]:
    rec = load_record(instance)
    if not rec:
        return []
    return [host_status(rec, h) for h in rec.hosts if h.alive]


def up(instance: str, count: int = 1, distro_key: str = "debian12", log=print,
       cert_validity: int | None = None, apt_cache: bool = False) -> list[dict]:
    """`cert_validity`: seconds the instance's ACME CA makes certificates valid for (0: pebble's default);
    None keeps a running instance's, or 0 for a new one. `apt_cache`: run an apt cache for the instance's
    hosts (aptcache.py); an instance that has one keeps it until `down`, asked for again or not."""
    check_name(instance)
    if cert_validity is not None and cert_validity < 0:
        raise SandboxError(f"certificate validity {cert_validity} is not allowed: use seconds, or 0 for pebble's default")
    with _making(instance):
        return _up(instance, count, distro_key, log, cert_validity, apt_cache)


# Held while `up` makes an instance: until its first host is recorded it looks stale, and another run's
# `down` (down_stale) must not clean it from under it.
def _lock_path(instance: str) -> Path:
    return network.RUN_DIR / f"up-{instance}.lock"


@contextmanager
def _making(instance: str):
    network.RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(_lock_path(instance), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _being_made(instance: str) -> bool:
    try:
        with open(_lock_path(instance)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


def _up(instance: str, count: int, distro_key: str, log, cert_validity: int | None = None,
        apt_cache: bool = False) -> list[dict]:
    if distro_key not in rootfs.DISTROS:
        raise SandboxError(f"distro {distro_key!r} is not supported: use one of {', '.join(rootfs.DISTROS)}")
    if count < 1 or count > 20:
        raise SandboxError(f"host count {count} is not allowed: use 1 to 20")
    require_root()
    ensure_machine_tools(log)
    distro = rootfs.DISTROS[distro_key]
    state = state_dir(instance)

    rec = load_record(instance)
    live = [h for h in rec.hosts if h.alive] if rec else []
    if live:
        if Path(rec.state_dir) != state:
            raise SandboxError(
                f"sandbox {instance!r} is running from {rec.state_dir}: run `ssedeploy sandbox down` "
                "there, or pick another name with --name"
            )
        if rec.distro != distro_key:
            raise SandboxError(
                f"sandbox {instance!r} runs {rec.distro} hosts; run `ssedeploy sandbox down` first to switch to {distro_key}"
            )
        rec.hosts = live
    else:
        clean(instance, log=lambda *_: None)  # whatever a crashed run left
        rec = None
    # A running instance keeps its cache (its hosts' apt is pointed at it).
    apt_cache = apt_cache or (bool(live) and aptcache.alive(load_apt_cache(instance)))
    if apt_cache:
        aptcache.ensure_installed(log)

    try:
        archive = rootfs.archive_for(distro)
        lower = rootfs.ensure(distro, log)
    except rootfs.ArchiveUnreachable as exc:
        raise Unreachable(str(exc)) from exc
    except keyring.KeyringError as exc:  # a key that is not the pinned one is never used: stop, say why
        raise SandboxError(f"{distro_key}: archive signatures cannot be checked: {exc}") from exc
    try:
        nodemirror.ensure(log)
    except nodemirror.MirrorError as exc:
        raise SandboxError(str(exc)) from exc

    bridge = network.bridge_name(instance)
    if rec:
        subnet = ipaddress.ip_network(rec.subnet)
    else:
        subnet = network.choose_subnet(instance, network.subnets_in_use(except_bridge=bridge))
        rec = Record(instance, distro_key, str(subnet), str(state))
    network.ensure_bridge(instance, subnet)
    pins = {name: network.resolve([name]) for name in archive.hosts}
    network.ensure_table(instance, subnet, sorted({a for addrs in pins.values() for a in addrs}))
    network.enable_forwarding()

    key = ensure_key(state)
    pubkey = key.with_suffix(".pub").read_text()
    known = _read_known_hosts(state / "known_hosts", {h.address for h in rec.hosts})
    if count > len(rec.hosts) and not hosts.server_nofile():
        log(f"NOTE: this machine does not let root raise the open-files hard limit (no CAP_SYS_RESOURCE): "
            f"hosts get its {resource.getrlimit(resource.RLIMIT_NOFILE)[1]} instead of a server's {hosts.NOFILE[1]}, "
            "so nginx is sized for that limit here")
    new_hosts = []
    taken = {h.name for h in rec.hosts}
    hosts.raise_inotify_limit(_hosts_running() + count - len(rec.hosts), INOTIFY_SAVED)
    cache_uris = [archive.mirror, archive.security]
    if apt_cache:  # hosts that were up before the cache was asked for are pointed at it too
        for host in rec.hosts:
            aptcache.write_host_conf(hosts.instance_dir(instance) / host.name / "root", str(subnet[1]), cache_uris)
    systemd = rootfs.systemd_version(lower)
    for i in range(1, count + 1):
        name = f"{instance}-{i}"
        if name in taken:
            continue
        address = str(subnet[1 + i])
        root = hosts.mount_overlay(lower, instance, name)
        host_key = hosts.write_host_files(
            root, name=name, address=address, prefixlen=subnet.prefixlen, gateway=str(subnet[1]),
            login_user=rootfs.LOGIN_USER, authorized_key=pubkey, pins=pins,
        )
        if apt_cache:
            aptcache.write_host_conf(root, str(subnet[1]), cache_uris)
        known.append(f"{address} {host_key}")
        pid = hosts.boot(instance, name, root, bridge, state / f"{name}.console.log", systemd)
        host = Host(name, address, pid, hosts.process_start_time(pid))
        rec.hosts.append(host)
        new_hosts.append(host)
        save_record(rec)  # recorded at once, so `down` can clean up after a failed boot
    (state / "known_hosts").write_text("\n".join(known) + "\n")
    rec.hosts.sort(key=lambda h: int(h.name.rsplit("-", 1)[1]))
    save_record(rec)
    mirror = load_mirror(instance)
    attempts = 0 if nodemirror.alive(mirror) else 2  # a second `up` keeps the one that runs
    for attempt in range(1, attempts + 1):
        mirror = nodemirror.start(str(subnet[1]), state / nodemirror.LOG_NAME)
        save_mirror(instance, mirror)  # recorded before the wait, so `down` stops it even if it never answers
        try:
            nodemirror.wait_answering(mirror, state / nodemirror.LOG_NAME)
            break
        except nodemirror.MirrorError as exc:
            nodemirror.stop(mirror)
            if attempt == attempts:
                raise SandboxError(str(exc)) from exc
            log(f"{exc}\nstarting the Node.js mirror once more")
    if apt_cache:
        start_apt_cache(instance, str(subnet[1]), cache_uris, state, log)
    start_acme(instance, rec, state, cert_validity, log)

    with ThreadPoolExecutor(max_workers=max(1, len(new_hosts))) as pool:
        list(pool.map(lambda h: wait_ready(rec, h), new_hosts))
    return [host_status(rec, h) for h in rec.hosts]


def start_apt_cache(instance: str, gateway: str, uris: list[str], state: Path, log) -> dict:
    """Run the instance's apt cache on its gateway, keeping one that runs (a second `up`)."""
    cache = load_apt_cache(instance)
    if aptcache.alive(cache) and cache.get("address") == gateway:
        return cache
    aptcache.stop(cache)
    log_path = state / aptcache.LOG_NAME
    for attempt in (1, 2):
        cache = aptcache.start(instance, gateway, uris, log_path)
        save_apt_cache(instance, cache)  # recorded before the wait, so `down` stops it even if it never answers
        try:
            aptcache.wait_answering(cache, log_path)
            return cache
        except aptcache.AptCacheError as exc:
            aptcache.stop(cache)
            if attempt == 2:
                raise SandboxError(str(exc)) from exc
            log(f"{exc}\nstarting the apt cache once more")
    raise AssertionError("unreachable")


def start_acme(instance: str, rec: Record, state: Path, cert_validity: int | None, log) -> dict:
    """Run the instance's ACME CA on its gateway, keeping servers that run as asked (a second `up`), and
    make it resolve the instance's names: the recorded ones (a moved name stays moved) and each host's."""
    gateway = str(ipaddress.ip_network(rec.subnet)[1])
    running = acme.load(instance)
    if running and running.get("address") != gateway:
        acme.stop(running)
        running = None
    validity = cert_validity if cert_validity is not None else (running or {}).get("validity", 0)
    wanted = {**acme.default_names(instance, [(h.name, h.address) for h in rec.hosts]),
              **(running or {}).get("names", {})}
    try:
        acme.ensure(instance, gateway)
        for attempt in (1, 2):
            record = {**acme.start(gateway, acme.acme_dir(instance), state, validity, running), "names": wanted}
            acme.save(instance, record)  # recorded before the wait, so `down` stops it even if it never answers
            try:
                acme.wait_answering(record)
                break
            except acme.AcmeError as exc:
                acme.stop(record)
                if attempt == 2:
                    raise
                running = None
                log(f"{exc}\nstarting the ACME CA once more")
        acme.register(gateway, wanted)
        acme.save_roots(instance, gateway)
    except acme.AcmeError as exc:
        raise SandboxError(str(exc)) from exc
    return record


def _read_known_hosts(path: Path, addresses: set[str]) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.split(" ", 1)[0] in addresses]


def connect(info: dict, timeout: float = 10) -> paramiko.SSHClient:
    """An SSH client that trusts only the host key the sandbox wrote (no trust on first use)."""
    client = paramiko.SSHClient()
    client.load_host_keys(info["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        info["address"], port=info.get("port", 22), username=info["ssh_user"], key_filename=info["ssh_key"],
        timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, allow_agent=False, look_for_keys=False,
    )
    return client


def wait_ready(rec: Record, host: Host, timeout: float = 120) -> None:
    """Wait until sshd answers with the expected key and systemd has finished booting."""
    info = host_status(rec, host)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not host.alive:
            raise SandboxError(f"{host.name}: systemd-nspawn exited; see {Path(rec.state_dir) / (host.name + '.console.log')}")
        try:
            with socket.create_connection((host.address, 22), timeout=2):
                pass
            client = connect(info)
        except (OSError, paramiko.SSHException) as exc:
            last_error = exc
            time.sleep(0.3)
            continue
        try:
            _, stdout, _ = client.exec_command("systemctl is-system-running --wait", timeout=max(5, deadline - time.monotonic()))
            state = stdout.read().decode().strip()
            if state == "running":
                return
            _, failed, _ = client.exec_command("systemctl --failed --no-legend --plain")
            raise SandboxError(f"{host.name}: systemd is {state!r} after boot; failed units:\n{failed.read().decode()}")
        finally:
            client.close()
    raise SandboxError(f"{host.name}: not reachable by SSH at {host.address} after {timeout:.0f} s: {last_error}")


def clean(instance: str, log=print) -> None:
    """Stop recorded hosts, then remove the instance's kernel state by name. Idempotent."""
    check_name(instance)
    for path in (state_dir(instance) / "instance.json", global_record_path(instance)):
        rec = Record.load(path)
        for host in rec.hosts if rec else []:
            if host.alive:
                log(f"stopping {host.name} (pid {host.pid})")
            hosts.stop(host.pid, host.start_time)
    mirror = load_mirror(instance)
    if nodemirror.alive(mirror):
        log(f"stopping the Node.js mirror (pid {mirror['pid']})")
        nodemirror.stop(mirror)
    # One no record names (a run cut between starting it and recording it) is still bound to the address.
    for server in nodemirror.stale_servers(mirror["address"]) if mirror else []:
        log(f"stopping an unrecorded Node.js mirror (pid {server['pid']})")
        nodemirror.stop(server)
    cache = load_apt_cache(instance)
    if aptcache.alive(cache):
        log(f"stopping the apt cache (pid {cache['pid']})")
        aptcache.stop(cache)
    for server in aptcache.stale_servers(instance, cache["address"]) if cache else []:
        log(f"stopping an unrecorded apt cache (pid {server['pid']})")
        aptcache.stop(server)
    aptcache.remove(instance)
    ca = acme.load(instance)
    if ca and any(acme.process_alive(ca.get(k)) for k in ("pebble", "challtestsrv")):
        log(f"stopping the ACME CA (pebble pid {ca['pebble']['pid']}, challtestsrv pid {ca['challtestsrv']['pid']})")
    acme.stop(ca)
    hosts.remove_cgroups(instance)
    hosts.unmount_all(instance)
    hosts.remove_dirs(instance)
    network.delete_table(instance)
    network.delete_bridge(instance)
    network.restore_forwarding_if_unused()
    if not any(n.startswith(network.BRIDGE_PREFIX) for n in network.links()) and not network.instance_tables():
        hosts.restore_inotify_limit(INOTIFY_SAVED)


def down(instance: str, log=print) -> None:
    require_root()
    clean(instance, log)
    shutil.rmtree(state_dir(instance), ignore_errors=True)
    _lock_path(instance).unlink(missing_ok=True)


def down_stale(log=print) -> list[str]:
    """Clean every instance whose recorded hosts are all gone (e.g. after a crash)."""
    names = {p.name for p in hosts.HOSTS_DIR.iterdir()} if hosts.HOSTS_DIR.exists() else set()
    names |= {n[len(network.BRIDGE_PREFIX):] for n in network.links() if n.startswith(network.BRIDGE_PREFIX)}
    cleaned = []
    for name in sorted(names):
        if not NAME_RE.fullmatch(name):
            continue
        rec = Record.load(global_record_path(name))
        if (rec and any(h.alive for h in rec.hosts)) or _being_made(name):
            continue
        clean(name, log)
        cleaned.append(name)
    return cleaned
