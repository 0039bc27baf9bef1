"""The sandbox's pure parts: names, addressing, apt sources, nftables rules, host files."""

import ipaddress
import os
import subprocess

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


def test_up_exits_3_when_the_archive_is_unreachable(monkeypatch, capsys):
    """Port 9 on loopback is closed: the same path a blocked distro archive takes."""
    from ssedeploy import cli
    from ssedeploy.sandbox import instance, rootfs

    if os.geteuid() != 0:
        pytest.skip("sandbox up needs root")
    unreachable = rootfs.Archive("http://127.0.0.1:9/ubuntu", "http://127.0.0.1:9/ubuntu", "")
    monkeypatch.setattr(rootfs, "archive_for", lambda distro: unreachable)
    monkeypatch.setattr(instance, "clean", lambda *a, **k: None)  # touch no kernel state
    assert cli.main(["sandbox", "up", "--name", "unreach", "--distro", "ubuntu24"]) == 3
    err = capsys.readouterr().err
    assert "ubuntu24: its package archive is not reachable" in err


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
