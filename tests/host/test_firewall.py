"""The host firewall: ssedeploy's nftables table is loaded, is the one it applied, and its boot file is the
ruleset the settings declare (ssedeploy/firewall.py)."""

from __future__ import annotations

import hashlib

import pytest

from ssedeploy import firewall as fw
from ssedeploy.facts import FirewallState


def test_the_firewall_table_is_loaded_as_declared_and_loads_at_boot(target):
    s = target.settings
    if not s.firewall.enabled:
        pytest.skip(f"{target.name}: firewall.enabled is false")
    fact = FirewallState()
    state = fact.process(target.host.check_output(fact.command(live_file=fw.LIVE_FILE, state_dir=fw.STATE,
                                                               table=fw.TABLE)).splitlines())
    ssh_port = s.firewall.ssh_port or int(target.data.get("ssh_port") or 22)
    declared = fw.ruleset(s, ssh_port, public=target.runs_nginx, peers=target.layout.peers(target.name))
    assert state["kernel"] is not None, f"{target.name}: table inet {fw.TABLE} is not loaded"
    assert state["live_sha"] == hashlib.sha256(declared.encode()).hexdigest(), \
        f"{target.name}: {fw.LIVE_FILE} is not the ruleset the settings declare (deploy again)"
    changed = fw.changed_rules(state["applied"], state["kernel"])
    assert not changed, f"{target.name}: rules changed on the host: {'; '.join(changed)}"
    assert target.host.service(fw.UNIT).is_enabled, f"{target.name}: {fw.UNIT} is not enabled (no rules at boot)"
