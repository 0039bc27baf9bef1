"""The host firewall on real sandbox hosts (Debian 12 and Ubuntu 24.04, the suite's shared instances): only
what the site needs is reachable; a ruleset that would cut SSH undoes itself and the run says so; streams keep
flowing while rules are applied and re-applied; drift names a rule changed on the host; the table comes back
from its boot unit."""

from __future__ import annotations

import socket

import pytest

from roles import firewall as role
from ssedeploy import firewall as fw

from .eventsource import Fleet, id_holes
from .helpers import deploy_with, host_of, pyinfra_deploy, ssedeploy
from .polling import wait_until

LISTENER_PORT = 9999


@pytest.fixture(scope="module")
def fwhost(deployed):
    instance, target, host = deployed
    yield instance, target, host
    pyinfra_deploy(instance=instance)  # the other tests expect the default settings


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except OSError:
        return False


def table(host) -> str:
    return host.check_output(f"sudo nft list table inet {fw.TABLE}")


def ran(result, name: str) -> bool:
    return any(op.startswith(f"{role.ROLE} | {name}") for _, op in result.results.ran())


def test_a_listener_of_anything_else_is_unreachable_while_ssh_and_the_site_are(fwhost):
    _, target, host = fwhost
    node = host.check_output("readlink -f /srv/sseapp/current/.ssedeploy-node") + "/bin/node"
    host.run_expect([0], f"sudo systemd-run --quiet --collect --unit=ssedeploy-test-listener {node} -e "
                         f"\"require('net').createServer(s => s.end('hi')).listen({LISTENER_PORT}, '0.0.0.0')\"")
    try:
        wait_until(lambda: host.socket(f"tcp://0.0.0.0:{LISTENER_PORT}").is_listening, 30, "the listener listens")
        assert host.run(f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{LISTENER_PORT}'").rc == 0  # it does answer locally
        assert not reachable(target["address"], LISTENER_PORT), "a listener on 0.0.0.0 is reachable from outside"
        assert reachable(target["address"], 22) and reachable(target["address"], 80)
    finally:
        host.run("sudo systemctl stop ssedeploy-test-listener")


def test_rules_that_would_cut_ssh_undo_themselves_and_the_run_says_so(fwhost, tmp_path):
    instance, target, host = fwhost
    before = table(host)
    cut = deploy_with({"firewall": {"ssh_port": 2222, "confirm_seconds": 10}}, tmp_path, instance=instance)
    assert cut.returncode != 0 and ran(cut, role.APPLY)
    assert cut.results.failed_at(target["name"]) == f"{role.ROLE} | {role.KEPT}"
    assert "no new SSH connection reached the host within 10 s of the new firewall rules: the previous rules " \
           "are back" in cut.results.error(target["name"])
    assert any("firewall: no new SSH connection got through" in n
               for n in cut.results.data["hosts"][target["name"]]["notes"])
    wait_until(lambda: host_of(target).run("true").rc == 0, 30, "a new SSH connection gets through")
    fresh = host_of(target)  # a new connection, after the rules undid themselves
    assert fresh.check_output(f"sudo nft list table inet {fw.TABLE}") == before
    assert fresh.check_output(f"sudo cat {fw.STATE}/result").startswith("no new SSH connection reached the host")
    again = pyinfra_deploy(instance=instance)
    assert again.returncode == 0 and not again.results.changed(), again.results.changed()


def test_streams_keep_flowing_while_rules_are_applied_and_applied_again(fwhost, tmp_path):
    instance, target, _ = fwhost
    fleet = Fleet(target["address"], 80, "/api/stream", 50, stagger_s=0.01).start()
    try:
        fleet.wait_streaming(60)
        since = fleet.mark()
        opened = deploy_with({"firewall": {"allow": [LISTENER_PORT]}}, tmp_path, instance=instance)
        assert opened.returncode == 0 and ran(opened, role.APPLY), opened.stderr[-2000:]
        back = pyinfra_deploy(instance=instance)
        assert back.returncode == 0 and ran(back, role.APPLY), back.stderr[-2000:]
        until = fleet.mark()
        wait_until(lambda: all(c.events and c.events[-1][1] > until for c in fleet.clients), 30,
                   "every client has an event after both applies")
    finally:
        clients = fleet.stop()
    assert all(len(c.connections) == 1 for c in clients), "a stream was cut while the firewall was applied"
    assert all(id_holes(c, since) == (0, 0) for c in clients)


def test_drift_names_a_rule_changed_on_the_host_and_a_deploy_puts_it_back(fwhost):
    instance, _, host = fwhost
    host.run_expect([0], f"sudo nft add rule inet {fw.TABLE} input tcp dport 9998 accept")
    drift = ssedeploy("drift", "inventories/sandbox.py", instance=instance, check=False)
    assert drift.returncode == 1, drift.stdout
    assert "firewall: rules changed on the host: + tcp dport 9998 accept" in drift.stdout, drift.stdout
    fixed = pyinfra_deploy(instance=instance)
    assert fixed.returncode == 0 and ran(fixed, role.APPLY)
    assert "9998" not in table(host)
    checked = ssedeploy("verify", "inventories/sandbox.py", instance=instance, check=False)
    assert checked.returncode == 0 and "test_the_firewall_table_is_loaded_as_declared" in checked.stdout, \
        checked.stdout[-3000:]


def test_the_boot_unit_loads_the_table(fwhost):
    _, _, host = fwhost
    before = table(host)
    host.run_expect([0], f"sudo nft delete table inet {fw.TABLE} && sudo systemctl restart {fw.UNIT}")
    assert table(host) == before
