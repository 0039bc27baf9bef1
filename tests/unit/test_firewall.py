"""The host firewall: the ruleset (ssedeploy/firewall.py, checked by nft itself where the machine has it) and
firewall-apply.sh run without root against a stub nft whose "kernel" is a file, with stub systemd-run and
systemctl: confirmed, not confirmed, cut at every fault point."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from ssedeploy import firewall
from ssedeploy.operations import SCRIPTS
from ssedeploy.settings import parse

from ..polling import wait_until
from .test_scripts import calls, killed, run, stubbed

NFT = shutil.which("nft") or shutil.which("/usr/sbin/nft")
WAIT = (SCRIPTS / "firewall-wait.sh").read_text()


@pytest.mark.parametrize("data, ssh_port, ports", [
    ({}, 22, [22, 80]),
    ({"site": {"tls": {}}}, 22, [22, 80, 443]),
    ({"site": {"tls": {"port": 8443}, "listen_port": 8080}}, 2222, [2222, 8080, 8443]),
])
def test_everyone_may_reach_ssh_and_the_sites_ports_and_never_the_revision_port(data, ssh_port, ports):
    settings = parse(data)
    assert firewall.ports(settings, ssh_port) == ports
    assert settings.site.revision_port not in ports


def test_allow_entries_become_rules_by_family_and_proto():
    settings = parse({"firewall": {"allow": [9100, {"port": 5432, "source": "10.1.2.3/8"},
                                             {"port": 53, "proto": "udp", "source": "2001:db8::1/32"}]}})
    text = firewall.ruleset(settings, 22)
    assert "        tcp dport 9100 accept\n" in text
    assert "        ip saddr 10.0.0.0/8 tcp dport 5432 accept\n" in text
    assert "        ip6 saddr 2001:db8::/32 udp dport 53 accept\n" in text
    assert "policy drop;" in text and 'iif "lo" accept' in text and "packet-too-big" in text
    assert text.count(f"table inet {firewall.TABLE}") == 3  # created if missing, deleted, made anew: one transaction


@pytest.mark.skipif(NFT is None or os.geteuid() != 0, reason="nft -c needs nft (and root for its netlink check)")
@pytest.mark.parametrize("data", [{}, {"site": {"tls": {}}}, {"firewall": {"allow": [1, {"port": 2, "source": "::1"}]}}])
def test_nft_itself_accepts_the_ruleset(tmp_path, data):
    path = tmp_path / "fw.nft"
    path.write_text(firewall.ruleset(parse(data), 22))
    result = subprocess.run([NFT, "-c", "-f", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("streams, current, want", [
    (10_000, 65_536, None),       # the host's is enough: left alone
    (50_000, 65_536, 200_000),    # raised for the expected streams
    (10_000, None, None),         # not settable here (a container's netns): left alone
])
def test_conntrack_max_is_raised_only_when_the_expected_streams_need_it(streams, current, want):
    assert firewall.conntrack_max(parse({"nginx": {"expected_streams": streams}}), current) == want


def test_bad_firewall_settings_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"host w: firewall.allow.0.source = 'nope': must be an IPv4 or IPv6"):
        parse({"firewall": {"allow": [{"port": 1, "source": "nope"}]}}, "w")
    with pytest.raises(ValueError, match=r"host w: firewall.allow.0.port = 0"):
        parse({"firewall": {"allow": [0]}}, "w")


# -- firewall-apply.sh ----------------------------------------------------------------------------------

STUBS = {
    # The "kernel": $STUB_TMP/kernel.nft holds the table as `nft list` prints it (absent: no table).
    "nft": r"""#!/bin/sh
echo "nft $*" >> "$STUB_LOG"
k="$STUB_TMP/kernel.nft"
case "$1" in
    list) [ -f "$k" ] && cat "$k" || { echo "Error: No such file or directory" >&2; exit 1; } ;;
    -f) if grep -q bogus "$2"; then echo "Error: syntax error" >&2; exit 1; fi
        body=$(sed '1,2d' "$2")  # the file's first two lines create and delete the table
        if [ -n "$body" ]; then printf '%s\n' "$body" > "$k"; else rm -f "$k"; fi ;;
esac
""",
    # --on-active: the undo timer; its command is kept in $STUB_TMP/timer (run by the test as systemd would).
    "systemd-run": r"""#!/bin/sh
echo "systemd-run $*" >> "$STUB_LOG"
while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
printf '%s\n' "$*" > "$STUB_TMP/timer"
""",
    "systemctl": r"""#!/bin/sh
echo "systemctl $*" >> "$STUB_LOG"
[ "$1" = stop ] && rm -f "$STUB_TMP/timer"
exit 0
""",
}

OLD = "table inet ssedeploy {\n\tchain input { tcp dport 22 accept }\n}"
NEW = "table inet ssedeploy {\n\tchain input { tcp dport 2222 accept }\n}"


@pytest.fixture
def fw(tmp_path):
    env = stubbed(tmp_path, STUBS, STUB_TMP=str(tmp_path))
    (tmp_path / "kernel.nft").write_text(OLD + "\n")
    new = tmp_path / "new.nft"
    new.write_text(f"table inet ssedeploy {{}}\ndelete table inet ssedeploy\n{NEW}\n")
    live = tmp_path / "etc" / "firewall.nft"
    live.parent.mkdir()
    live.write_text("the previous live file\n")
    args = [new, live, tmp_path / "state", tmp_path / "state" / "confirmed", 2]
    return env, args, tmp_path


def kernel(tmp: Path) -> str | None:
    path = tmp / "kernel.nft"
    return path.read_text().strip() if path.exists() else None


def fire_timer(env, tmp: Path) -> None:
    """What systemd does when the undo timer elapses: run its command."""
    command = (tmp / "timer").read_text().split()
    subprocess.run(command, env=env, check=True)


def test_confirmed_over_a_new_connection_the_new_rules_stay_and_become_the_boot_file(fw):
    env, args, tmp = fw
    args[-1] = 30
    proc = subprocess.Popen(["/bin/sh", str((SCRIPTS / "firewall-apply.sh")), *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: kernel(tmp) == NEW, 20, "the new rules are live")
    assert (tmp / "timer").exists(), "the undo timer is armed before the new rules go live"
    (tmp / "state" / "confirmed").touch()  # the controller's new SSH connection
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert kernel(tmp) == NEW and not (tmp / "timer").exists()
    assert args[1].read_text() == args[0].read_text() and not (tmp / "state" / "confirmed").exists()
    assert (tmp / "state" / "result").read_text() == "confirmed\n"
    assert (tmp / "state" / "applied.list").read_text().strip() == NEW  # what drift compares the kernel's with


def test_not_confirmed_in_time_the_previous_rules_are_back_and_it_says_so(fw):
    env, args, tmp = fw
    result = run(env, "firewall-apply.sh", *args)
    assert result.returncode == 1
    assert "no new SSH connection reached the host within 2 s of the new firewall rules" in result.stderr
    assert kernel(tmp) == OLD and not (tmp / "timer").exists()
    assert args[1].read_text() == "the previous live file\n"
    assert (tmp / "state" / "result").read_text().startswith("no new SSH connection reached the host")


def test_with_no_table_before_an_unconfirmed_one_is_removed(fw):
    env, args, tmp = fw
    (tmp / "kernel.nft").unlink()
    assert run(env, "firewall-apply.sh", *args).returncode == 1
    assert kernel(tmp) is None


def test_rules_nft_refuses_change_nothing_say_why_and_disarm_the_undo_timer(fw):
    env, args, tmp = fw
    args[0].write_text("table inet ssedeploy {}\ndelete table inet ssedeploy\nbogus\n")
    result = run(env, "firewall-apply.sh", *args)
    assert result.returncode == 1 and "nft refused the new rules: Error: syntax error" in result.stderr
    assert (tmp / "state" / "result").read_text().startswith("nft refused the new rules")
    assert kernel(tmp) == OLD and not (tmp / "timer").exists() and not (tmp / "state" / "loaded").exists()


def test_the_controller_is_told_to_connect_only_once_the_new_rules_are_loaded(fw):
    """A connection opened before the new rules load is established already and passes any rules."""
    env, args, tmp = fw
    args[-1] = 30
    proc = subprocess.Popen(["/bin/sh", str((SCRIPTS / "firewall-apply.sh")), *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (tmp / "state" / "loaded").exists(), 20, "the script says the rules are loaded")
        assert kernel(tmp) == NEW
        waited = subprocess.run(["sh", "-c", WAIT, "firewall-wait", str(tmp / "state"), "loaded", "5"], env=env)
        assert waited.returncode == 0
    finally:
        (tmp / "state" / "confirmed").touch()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    done = subprocess.run(["sh", "-c", WAIT, "firewall-wait", str(tmp / "state"), "confirmed", "5"], env=env)
    assert done.returncode == 0


def test_the_wait_fails_with_the_scripts_reason(fw):
    env, _, tmp = fw
    (tmp / "state").mkdir()
    (tmp / "state" / "result").write_text("no new SSH connection reached the host within 2 s\n")
    waited = subprocess.run(["sh", "-c", WAIT, "firewall-wait", str(tmp / "state"), "loaded", "5"], env=env,
                            capture_output=True, text=True)
    assert waited.returncode == 1 and "ssedeploy: no new SSH connection reached the host" in waited.stderr


@pytest.mark.parametrize("point", ["1", "2", "3", "4"])
def test_cut_at_any_point_ends_with_the_previous_rules_or_confirmed_ones(fw, point):
    env, args, tmp = fw
    if point == "4":
        args[-1] = 30
        threading.Timer(0.5, lambda: (tmp / "state" / "confirmed").touch()).start()
    assert killed(run(env, "firewall-apply.sh", *args, fault=point))
    if (tmp / "timer").exists():  # the undo timer was armed and not stopped: systemd fires it
        fire_timer(env, tmp)
    if point == "4":  # confirmed: the new rules stay; the boot file is the old one until the next run
        assert kernel(tmp) == NEW
    else:
        assert kernel(tmp) == OLD
    assert "Error" not in "".join(calls(env, "nft"))


APPLIED = "table inet ssedeploy {\n\tchain input {\n\t\ttcp dport { 22, 80 } accept\n\t}\n}\n"


@pytest.mark.parametrize("live_sha, applied, kernel, why", [
    ("a", APPLIED, APPLIED, None),                                   # as declared: nothing to do
    (None, None, None, "no firewall yet"),
    ("b", APPLIED, APPLIED, "new rules"),
    ("a", APPLIED, None, "table inet ssedeploy is not loaded"),       # flushed by someone, or not loaded at boot
    ("a", APPLIED, APPLIED.replace("\t}\n}", "\t\ttcp dport 9999 accept\n\t}\n}"),
     "rules changed on the host: + tcp dport 9999 accept"),
])
def test_the_ruleset_is_applied_only_when_it_or_the_hosts_table_differs(live_sha, applied, kernel, why):
    assert firewall.needs_apply("a", live_sha, applied, kernel) == why


def test_changed_rules_name_what_was_added_and_removed():
    kernel = APPLIED.replace("{ 22, 80 }", "{ 22 }")
    assert firewall.changed_rules(APPLIED, kernel) == ["- tcp dport { 22, 80 } accept", "+ tcp dport { 22 } accept"]
    assert firewall.changed_rules(None, kernel) == []


def test_the_state_fact_reads_the_boot_file_the_applied_and_the_kernels_table():
    from ssedeploy.facts import FirewallState

    out = ["live abc123", "== applied", "table inet ssedeploy {", "}", "== kernel", "table inet ssedeploy {",
           "\ttcp dport 1 accept", "}", "== end", "conntrack 262144", "writable"]
    assert FirewallState().process(out) == {
        "live_sha": "abc123", "applied": "table inet ssedeploy {\n}\n",
        "kernel": "table inet ssedeploy {\n\ttcp dport 1 accept\n}\n", "conntrack_max": 262144,
        "conntrack_writable": True}
    assert FirewallState().process(["live ", "== end", "conntrack "]) == FirewallState.default()


# -- a cluster's app host: SSH for everyone, the app's ports for its proxies only -------------------------

PEERS = [(3000, "198.18.0.2"), (3001, "198.18.0.2")]


@pytest.mark.parametrize("data", [{}, {"site": {"tls": {"port": 8443}, "listen_port": 8080}}])
def test_an_app_host_of_a_cluster_opens_ssh_only_to_everyone(data):
    assert firewall.ports(parse(data), 2222, public=False) == [2222]
    assert firewall.ports(parse(data), 2222) != [2222]  # nginx's host: the site's ports too


def test_an_app_host_of_a_cluster_admits_its_proxies_to_the_app_ports_only():
    text = firewall.ruleset(parse({"site": {"tls": {}}}), 22, public=False, peers=PEERS)
    rules = [line.strip() for line in text.splitlines()]
    assert "tcp dport { 22 } accept" in rules
    assert "ip saddr 198.18.0.2 tcp dport 3000 accept" in rules
    assert "ip saddr 198.18.0.2 tcp dport 3001 accept" in rules
    assert not [r for r in rules if "dport" in r and ("80" in r or "443" in r)], rules
    assert not [r for r in rules if r.startswith("tcp dport 300")]  # never the app's ports to everyone


def test_an_ipv6_proxy_is_admitted_by_its_ipv6_address_beside_the_allow_entries():
    settings = parse({"firewall": {"allow": [9100]}})
    text = firewall.ruleset(settings, 22, public=False, peers=[(3000, "fd00::2"), (3000, "198.18.0.3")])
    rules = [line.strip() for line in text.splitlines()]
    assert "ip6 saddr fd00::2 tcp dport 3000 accept" in rules
    assert "ip saddr 198.18.0.3 tcp dport 3000 accept" in rules
    assert "tcp dport 9100 accept" in rules  # firewall.allow still applies


@pytest.mark.skipif(NFT is None or os.geteuid() != 0, reason="nft -c needs nft (and root for its netlink check)")
@pytest.mark.parametrize("peers", [PEERS, [(3000, "fd00::2"), (3001, "fd00::2"), (3000, "198.18.0.3")]])
def test_nft_itself_accepts_an_app_hosts_ruleset(tmp_path, peers):
    path = tmp_path / "fw.nft"
    path.write_text(firewall.ruleset(parse({"firewall": {"allow": [9100]}}), 22, public=False, peers=peers))
    result = subprocess.run([NFT, "-c", "-f", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
