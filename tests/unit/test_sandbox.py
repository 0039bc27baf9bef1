"""The sandbox's pure parts: names, addressing, apt sources, nftables rules, host files."""

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from ssedeploy.sandbox import aptsources, hosts, instance, network
from ssedeploy.sandbox.instance import SandboxError, check_name


def test_demo_gets_the_first_subnet_and_others_a_stable_one():
    assert network.preferred_subnet("demo") == ipaddress.ip_network("198.18.0.0/24")
    assert network.preferred_subnet("e2e") == network.preferred_subnet("e2e")
    assert network.preferred_subnet("e2e") != network.preferred_subnet("demo")
    for name in ("e2e", "ci-7", "x"):
        assert network.preferred_subnet(name).subnet_of(ipaddress.ip_network("198.18.0.0/15"))


def test_subnet_in_use_is_skipped():
    want = network.preferred_subnet("e2e")
    chosen = network.choose_subnet("e2e", {want})
    assert chosen != want and chosen.subnet_of(network.SUPERNET)


@pytest.mark.parametrize("name", ["demo", "e2e", "ci-1", "a0123456789"])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "Demo", "1abc", "a_b", "a" * 12, "a b", "../x", "demo\n"])
def test_invalid_names_are_refused_with_the_rule(name):
    with pytest.raises(SandboxError, match="1-11 characters"):
        check_name(name)


def test_bridge_and_table_names_fit_the_kernel():
    assert len(network.bridge_name("a0123456789")) <= 15
    assert network.table_name("ci-1") == "ssedeploy_ci_1"


def test_apt_sources_both_formats():
    one = aptsources.parse_one_line(
        "# comment\ndeb [signed-by=/k.gpg] http://mirror.test/debian bookworm main contrib\n"
        "deb-src http://mirror.test/debian bookworm main\n"
    )
    assert one == [aptsources.Source("http://mirror.test/debian", ("bookworm",), ("main", "contrib"))]
    deb822 = aptsources.parse_deb822(
        "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://sec.test/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off.test/x\nSuites: bookworm\nComponents: main\n"
    )
    assert [s.host for s in deb822] == ["mirror.test", "sec.test"]
    assert aptsources.find_uri(deb822, "bookworm-security") == "http://sec.test/debian-security"


def test_ruleset_only_lets_hosts_reach_the_archive():
    rules = network.ruleset("e2e", ipaddress.ip_network("198.18.7.0/24"), ["203.0.113.9"])
    assert 'iifname "ssd-e2e" ip daddr @archive tcp dport { 80, 443 } accept' in rules
    assert 'iifname "ssd-e2e" drop' in rules
    assert "elements = { 203.0.113.9 }" in rules
    assert "ip saddr 198.18.7.0/24 ip daddr @archive" in rules
    # nft itself accepts it (syntax check only, nothing is loaded)
    if os.geteuid() == 0 and subprocess.run(["which", "nft"], capture_output=True).returncode == 0:
        check = subprocess.run(["nft", "-c", "-f", "-"], input=rules, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr


def test_host_files_give_identity_network_and_keys(tmp_path):
    root = tmp_path
    for d in ("etc/ssh", "etc/systemd/network", "home/admin/.ssh"):
        (root / d).mkdir(parents=True)
    line = hosts.write_host_files(
        root, name="t-1", address="198.18.9.2", prefixlen=24, gateway="198.18.9.1",
        login_user="admin", authorized_key="ssh-ed25519 AAAAkey user", pins={"archive.test": ["203.0.113.5"]},
    )
    assert line.startswith("ssh-ed25519 ")
    assert line.split()[1] in (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
    assert (root / "etc/hostname").read_text() == "t-1\n"
    assert "203.0.113.5 archive.test" in (root / "etc/hosts").read_text()
    net = (root / "etc/systemd/network/10-host0.network").read_text()
    assert "Address=198.18.9.2/24" in net and "Gateway=198.18.9.1" in net
    auth = root / "home/admin/.ssh/authorized_keys"
    assert auth.read_text() == "ssh-ed25519 AAAAkey user\n"
    assert oct(auth.stat().st_mode & 0o777) == "0o600"
    assert len((root / "etc/machine-id").read_text().strip()) == 32


@pytest.mark.parametrize("distro", ["debian12", "debian13", "ubuntu22", "ubuntu24", "ubuntu26"])
def test_up_exits_3_when_the_archive_is_unreachable(monkeypatch, capsys, distro):
    """Port 9 on loopback is closed: the same path a blocked distro archive takes."""
    from ssedeploy import cli
    from ssedeploy.sandbox import instance, rootfs

    if os.geteuid() != 0:
        pytest.skip("sandbox up needs root")
    unreachable = rootfs.Archive("http://127.0.0.1:9/x", "http://127.0.0.1:9/x", "deb http://127.0.0.1:9/x s main\n")
    monkeypatch.setattr(rootfs, "archive_for", lambda distro: unreachable)
    monkeypatch.setattr(instance, "clean", lambda *a, **k: None)  # touch no kernel state
    assert cli.main(["sandbox", "up", "--name", "unreach", "--distro", distro]) == 3
    err = capsys.readouterr().err
    assert f"{distro}: its package archive is not reachable" in err


def test_an_unreachable_keyring_package_is_an_unreachable_archive(monkeypatch, tmp_path):
    """The archive can stop answering between the reachability check and the keyring fetch: still exit 3's error."""
    from ssedeploy.sandbox import keyring, rootfs

    monkeypatch.setattr(keyring, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(keyring, "MACHINE_KEYRING", tmp_path / "none.gpg")
    unreachable = rootfs.Archive("http://127.0.0.1:9/x", "http://127.0.0.1:9/x", "")
    with pytest.raises(rootfs.ArchiveUnreachable, match="ubuntu26: could not fetch Ubuntu's keyring package"):
        rootfs._keyring(rootfs.DISTROS["ubuntu26"], unreachable, log=lambda *_: None)


def test_hosts_get_a_servers_open_files_limit_where_the_machine_allows(monkeypatch):
    from ssedeploy.sandbox import hosts

    calls = []
    monkeypatch.setattr(hosts.resource, "getrlimit", lambda _: (1024, 20000))
    monkeypatch.setattr(hosts.resource, "setrlimit", lambda _, limits: calls.append(limits))
    assert hosts.server_nofile() and calls == [hosts.NOFILE]

    def refuse(_, limits):
        raise ValueError("not allowed to raise maximum limit")  # no CAP_SYS_RESOURCE

    monkeypatch.setattr(hosts.resource, "setrlimit", refuse)
    assert hosts.server_nofile() is False
    monkeypatch.setattr(hosts.resource, "getrlimit", lambda _: (1024, 1048576))
    assert hosts.server_nofile() is True  # already enough: nothing to raise


def test_an_instance_being_made_is_not_cleaned_as_stale_by_another_run(tmp_path, monkeypatch):
    monkeypatch.setattr(instance.network, "RUN_DIR", tmp_path)
    assert not instance._being_made("x")
    with instance._making("x"):
        assert instance._being_made("x")
    assert not instance._being_made("x")


# --- Distros and Ubuntu's archive key (ssedeploy/sandbox/rootfs.py, keyring.py)

def test_every_distro_builds_from_its_own_suite_with_a_login_users_sudo():
    from ssedeploy.sandbox import rootfs

    assert {k: d.suite for k, d in rootfs.DISTROS.items()} == {
        "debian12": "bookworm", "debian13": "trixie", "ubuntu22": "jammy", "ubuntu24": "noble",
        "ubuntu26": "resolute",
    }
    for d in rootfs.DISTROS.values():
        assert d.components == (("main",) if d.family == "debian" else ("main", "universe"))  # nodejs: universe
        assert "sudo" in d.packages.split(",")
    assert "sudo-rs" in rootfs.DISTROS["ubuntu26"].packages.split(",")  # what 26.04 ships as its sudo
    # The distros that were there before keep their package list, so Debian 12's cached rootfs stays valid.
    assert rootfs.DISTROS["debian12"].packages == rootfs.DISTROS["ubuntu24"].packages == rootfs.PACKAGES


def test_an_ubuntu_rootfs_is_keyed_by_the_pinned_archive_key(monkeypatch):
    """A tree built before signatures were checked against the pinned key is never reused."""
    from ssedeploy.sandbox import keyring, rootfs

    archive = rootfs.Archive("http://mirror.test/ubuntu", "http://mirror.test/ubuntu", "deb x noble main\n")
    noble, bookworm = rootfs.DISTROS["ubuntu24"], rootfs.DISTROS["debian12"]
    key, debian_key = rootfs.cache_key(noble, archive), rootfs.cache_key(bookworm, archive)
    monkeypatch.setattr(keyring, "PINNED", {"0" * 40: "another key"})
    assert rootfs.cache_key(noble, archive) != key
    assert rootfs.cache_key(bookworm, archive) == debian_key


@pytest.fixture
def two_keys(tmp_path):
    """Two keys gpg makes (A, B), exported as one binary keyring, and their fingerprints; its agent is ended."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    try:
        for uid in ("A <a@test>", "B <b@test>"):
            subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                           check=True, capture_output=True)
        listed = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True,
                                text=True).stdout
        ring = subprocess.run([*gpg, "--export"], check=True, capture_output=True).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    uids = [line.split(":")[9] for line in listed.splitlines() if line.startswith("uid:")]
    fprs = [line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:")]
    return ring, dict(zip([u[0] for u in uids], fprs))


def test_only_pinned_keys_are_kept(two_keys):
    from ssedeploy.sandbox import keyring

    ring, fpr = two_keys
    assert sorted(keyring.keys(ring)) == sorted([fpr["A"], fpr["B"]])
    kept = keyring.pinned_only(ring, {fpr["B"]: "B"})
    assert keyring.keys(kept) == [fpr["B"]]  # B and its packets; A does not travel with it
    with pytest.raises(keyring.KeyringError, match=f"does not carry the pinned key.*{fpr['A'][:8]}"):
        keyring.pinned_only(kept, {fpr["A"]: "A"})
    with pytest.raises(keyring.KeyringError, match="gpg --import"):
        keyring.keys(b"not a keyring")


def test_the_pinned_ubuntu_key_is_the_2018_archive_key():
    from ssedeploy.sandbox import keyring

    assert keyring.PINNED == {"F6ECB3762474EDA9D21B7022871920D1991BC93C": "Ubuntu Archive Automatic Signing Key (2018)"}


def test_the_keyring_package_is_found_in_the_archive_index():
    from ssedeploy.sandbox import keyring

    index = (
        "Package: ubuntu-keyring\nVersion: 2021.03.26\nFilename: pool/main/u/ubuntu-keyring/old.deb\n"
        "Size: 20\nSHA256: aa\n\n"
        "Package: ubuntu-keyring-extra\nVersion: 9\nFilename: x.deb\nSize: 1\nSHA256: bb\n\n"
        "Package: ubuntu-keyring\nVersion: 2023.11.28.1build1\nFilename: pool/main/u/ubuntu-keyring/new.deb\n"
        "Size: 11228\nSHA256: cc\nDescription: GnuPG keys of the Ubuntu archive\n"
    )
    assert keyring.find_package(index, "ubuntu-keyring") == {
        "Filename": "pool/main/u/ubuntu-keyring/new.deb", "SHA256": "cc", "Size": "11228",
        "Version": "2023.11.28.1build1",
    }
    with pytest.raises(keyring.KeyringError, match="lists no ubuntu-keyring"):
        keyring.find_package("Package: other\nVersion: 1\n", "ubuntu-keyring")


def test_a_keyring_without_the_pinned_key_stops_up_with_exit_1(monkeypatch, capsys):
    from ssedeploy import cli
    from ssedeploy.sandbox import instance, keyring, rootfs

    if os.geteuid() != 0:
        pytest.skip("sandbox up needs root")

    def wrong_key(distro, log=print):
        raise keyring.KeyringError("Ubuntu's keyring does not carry the pinned key(s) F6EC...")

    nowhere = rootfs.Archive("http://127.0.0.1:9/u", "http://127.0.0.1:9/u", "")
    monkeypatch.setattr(rootfs, "archive_for", lambda distro: nowhere)
    monkeypatch.setattr(rootfs, "ensure", wrong_key)
    monkeypatch.setattr(instance, "clean", lambda *a, **k: None)  # touch no kernel state
    assert cli.main(["sandbox", "up", "--name", "keyx", "--distro", "ubuntu26"]) == 1
    assert "ubuntu26: archive signatures cannot be checked: Ubuntu's keyring does not carry" in capsys.readouterr().err


@pytest.mark.parametrize("path,version", [
    ("usr/lib/systemd/libsystemd-shared-252.so", 252),                    # Debian 12
    ("usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-259.so", 259),   # a multiarch layout
    ("usr/lib/systemd/libsystemd-shared-259.5-0ubuntu3.so", 259),
    ("usr/lib/systemd/systemd", None),
])
def test_the_systemd_version_of_a_rootfs_is_read_from_its_shared_library(tmp_path, path, version):
    from ssedeploy.sandbox import rootfs

    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text("")
    assert rootfs.systemd_version(tmp_path) == version


@pytest.mark.parametrize("systemd,unified", [(None, False), (252, False), (257, False), (258, True), (259, True)])
def test_hosts_whose_systemd_refuses_cgroup_v1_are_booted_on_the_unified_hierarchy(monkeypatch, tmp_path,
                                                                                   systemd, unified):
    from ssedeploy.sandbox import hosts

    started = {}

    class Popen:
        def __init__(self, cmd, env=None, **kw):
            started.update(cmd=cmd, env=env)
            self.pid = 4242

    monkeypatch.setattr(hosts, "cgroup_dirs", lambda instance, host=None: [])
    monkeypatch.setattr(hosts.subprocess, "Popen", Popen)
    monkeypatch.delenv("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", raising=False)
    assert hosts.boot("t", "t-1", tmp_path, "ssd-t", tmp_path / "console.log", systemd) == 4242
    assert started["cmd"][:2] == ["systemd-nspawn", "--boot"]
    assert ("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY" in started["env"]) == unified


def test_end_process_returns_once_the_process_has_exited_even_one_that_ignores_sigterm():
    """A server is ended only when it has exited (its port free for the next): its command line reads empty
    while it exits, so the exit is read from its state, and a zombie counts as exited."""
    from ssedeploy.sandbox import hosts

    from ..polling import wait_until

    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; echo ready; exec sleep 60"], stdout=subprocess.PIPE,
                                start_new_session=True)
    assert stubborn.stdout.readline() == b"ready\n"  # the trap is set
    start = hosts.process_start_time(stubborn.pid)
    assert hosts.running(stubborn.pid, start) and not hosts.running(stubborn.pid, start + 1)
    hosts.end_process(stubborn.pid, start, timeout=0.5)
    assert not hosts.running(stubborn.pid, start)
    assert not Path(f"/proc/{stubborn.pid}").exists()  # SIGTERM was ignored: SIGKILL ended it, and it was reaped
    done = subprocess.Popen(["true"])
    done_start = hosts.process_start_time(done.pid)
    wait_until(lambda: not hosts.running(done.pid, done_start), 10, "`true` exited (a zombie: not reaped yet)")
    hosts.end_process(done.pid, done_start)  # nothing to end; reaped
    assert done.poll() is not None or not Path(f"/proc/{done.pid}").exists()


def test_spawn_returns_once_the_server_runs_its_own_command(tmp_path):
    """Right after fork the child's command line is its parent's: spawn waits for the exec, so whoever checks
    the record at once (the mirror's wait_answering) does not take a starting server for a gone one."""
    from ssedeploy.sandbox import hosts

    cmd = ["sleep", "30"]
    server = hosts.spawn(cmd, tmp_path / "logs" / "server.log")
    try:
        assert hosts.cmdline(server["pid"]) == cmd == server["cmdline"]
        assert hosts.running(server["pid"], server["start_time"])
        assert (tmp_path / "logs" / "server.log").exists()
    finally:
        hosts.end_process(server["pid"], server["start_time"])
    assert not hosts.running(server["pid"], server["start_time"])
