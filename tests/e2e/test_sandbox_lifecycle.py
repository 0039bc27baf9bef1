"""The sandbox itself: status, several hosts, SSH policy, crash recovery and a complete teardown."""

from __future__ import annotations

import ipaddress
import json
import os
import resource
import signal
import subprocess
import urllib.request
from pathlib import Path

import paramiko
import pytest

from ssedeploy.sandbox import hosts as sandbox_hosts, instance, network, nodemirror

from .helpers import pyinfra_deploy, ssedeploy, host_of
from .polling import wait_until

NAME = "e2e-life"


def status() -> list[dict]:
    return json.loads(ssedeploy("sandbox", "status", "--name", NAME, "--json").stdout)


def running(pid: int) -> bool:
    """Alive and not a zombie (a stopped host whose parent has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def mirror_process() -> dict:
    """The instance's Node.js mirror server as recorded (pid, start_time, address)."""
    mirror = instance.load_mirror(NAME)
    assert mirror, f"sandbox {NAME!r} records no Node.js mirror"
    return mirror


def serves_index(address: str) -> bool:
    """Does address:PORT answer with a JSON list at /index.json? (A TCP connect is no test: this machine's
    uplink accepts connections to any address it routes, answering HTTP with 404.)"""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{address}:{nodemirror.PORT}/index.json", timeout=5) as response:
            return isinstance(json.loads(response.read()), list)
    except (OSError, ValueError):
        return False


def listening(address: str) -> bool:
    out = subprocess.run(["ss", "-Hltn", "src", address, "sport", "=", f":{nodemirror.PORT}"],
                         capture_output=True, text=True, check=True).stdout
    return bool(out.strip())


def kernel_state() -> dict:
    cgroups = [p for p in sandbox_hosts.cgroup_dirs(NAME) if p.exists()]
    return {
        "bridge": network.bridge_name(NAME) in network.links(),
        "table": network.table_exists(NAME),
        "mounts": sandbox_hosts.mounts_under(sandbox_hosts.instance_dir(NAME)),
        "cgroups": cgroups,
        "dirs": sandbox_hosts.instance_dir(NAME).exists(),
    }


@pytest.fixture(scope="module")
def life():
    ssedeploy("sandbox", "down", "--name", NAME)
    try:
        yield
    finally:
        ssedeploy("sandbox", "down", "--name", NAME, check=False)


def test_status_of_an_instance_that_is_not_up_is_an_empty_list(life):
    assert status() == []


def test_up_boots_two_hosts_with_their_own_subnet(life):
    ssedeploy("sandbox", "up", "--name", NAME, "-n", "2")
    hosts = status()
    assert [h["name"] for h in hosts] == [f"{NAME}-1", f"{NAME}-2"]
    for h in hosts:
        assert {"name", "address", "distro", "ssh_user", "ssh_key", "known_hosts", "port"} <= set(h)
        assert ipaddress.ip_address(h["address"]) in ipaddress.ip_network("198.18.0.0/15")
        assert h["distro"] == "debian12" and h["ssh_user"] != "root"
        assert Path(h["ssh_key"]).is_file() and Path(h["known_hosts"]).is_file()
    nets = {ipaddress.ip_interface(h["address"] + "/24").network for h in hosts}
    assert len(nets) == 1 and nets != {network.preferred_subnet("demo")}  # never the demo's /24


def test_each_host_runs_systemd_and_checks_in_as_a_sudo_user(life):
    for h in status():
        host = host_of(h)
        assert host.check_output("systemctl is-system-running") == "running"
        assert host.check_output("cat /proc/1/comm") == "systemd"
        assert host.check_output("id -un") == "root"  # through sudo
        assert host.check_output("hostname") == h["name"]
        assert host.file("/etc/resolv.conf").content_string.strip() == ""  # no resolver handed out


def test_hosts_get_a_servers_open_files_limit_or_up_says_why_not(life):
    allowed = sandbox_hosts.server_nofile()  # what this machine lets root do
    want = sandbox_hosts.NOFILE[1] if allowed else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for h in status():
        limits = host_of(h).check_output("grep '^Max open files' /proc/1/limits").split()
        assert int(limits[4]) == want, f"{h['name']}: PID 1 may open {limits[4]} files, expected {want}"


def test_hosts_reach_the_instances_node_mirror_and_its_checksums_hold(life):
    h = status()[1]
    mirror = h["node_mirror"]
    assert mirror == f"http://{ipaddress.ip_network(h['address'] + '/24', strict=False)[1]}:{nodemirror.PORT}"
    host = host_of(h)
    index = json.loads(host.check_output(f"curl -fsS {mirror}/index.json"))
    assert {e["version"] for e in index} == {f"v{v}" for v in nodemirror.VERSIONS}
    version = index[0]["version"]
    tarball = f"node-{version}-linux-{nodemirror.machine_arch()}.tar.xz"
    sums = host.check_output(f"curl -fsS {mirror}/{version}/SHASUMS256.txt")
    got = host.check_output(f"curl -fsS {mirror}/{version}/{tarball} | sha256sum").split()[0]
    assert sums == f"{got}  {tarball}"


def test_sandbox_ssh_runs_a_command_on_the_named_host(life):
    result = ssedeploy("sandbox", "ssh", "--name", NAME, f"{NAME}-2", "--", "hostname")
    assert result.stdout.strip() == f"{NAME}-2"


def test_root_login_by_ssh_is_refused(life):
    h = status()[0]
    client = paramiko.SSHClient()
    client.load_host_keys(h["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(h["address"], username="root", key_filename=h["ssh_key"], allow_agent=False,
                       look_for_keys=False, timeout=10)


def test_up_again_is_idempotent(life):
    before = {h["name"]: h["pid"] for h in status()}
    mirror = mirror_process()
    ssedeploy("sandbox", "up", "--name", NAME, "-n", "2")
    assert {h["name"]: h["pid"] for h in status()} == before
    assert mirror_process() == mirror and nodemirror.alive(mirror), "the running mirror is kept"


def test_up_recovers_after_the_hosts_were_killed(life):
    for h in status():
        os.kill(h["pid"], signal.SIGKILL)
    wait_until(lambda: status() == [], 10, "status lists no host after the kill")
    left = kernel_state()
    assert left["bridge"] and left["table"] and left["mounts"], "the crash should leave kernel state behind"
    ssedeploy("sandbox", "up", "--name", NAME, "-n", "2")
    hosts = status()
    assert len(hosts) == 2
    host = host_of(hosts[1])
    assert host.check_output("systemctl is-system-running") == "running"


def test_down_removes_everything_and_is_idempotent(life):
    pids = [h["pid"] for h in status()]
    mirror = mirror_process()
    assert serves_index(mirror["address"]) and listening(mirror["address"])
    ssedeploy("sandbox", "down", "--name", NAME)
    assert not [pid for pid in pids if running(pid)], "a host process outlived `down`"
    assert not running(mirror["pid"]) and not nodemirror.alive(mirror), "the Node.js mirror outlived `down`"
    assert not listening(mirror["address"]) and not serves_index(mirror["address"])
    assert kernel_state() == {"bridge": False, "table": False, "mounts": [], "cgroups": [], "dirs": False}
    assert status() == []
    ssedeploy("sandbox", "down", "--name", NAME)  # again: still fine


def test_bad_name_is_refused_before_anything_is_made(life):
    result = ssedeploy("sandbox", "up", "--name", "Bad_Name", check=False)
    assert result.returncode == 1
    assert "'Bad_Name' is not allowed" in result.stderr
    assert "ssd-Bad_Name" not in network.links()


def test_inventory_without_hosts_says_how_to_start_them(life):
    result = pyinfra_deploy(check=False, instance=NAME, timeout=120)
    assert result.returncode != 0
    assert f"sandbox '{NAME}' has no running host" in result.stdout + result.stderr
