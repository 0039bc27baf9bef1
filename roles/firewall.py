"""ssedeploy's host firewall (ssedeploy/firewall.py): one nftables table of its own, on by default.

A new ruleset goes live through scripts/firewall-apply.sh in a transient unit that undoes it unless the
controller reaches the host again over a NEW SSH connection within `firewall.confirm_seconds` (established
connections survive any ruleset, so the deploy's own connection proves nothing). Nothing is applied when the
boot file and the kernel's table are as declared; `drift` names a rule changed on the host.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
import time
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api import StringCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.context import ctx_host
from pyinfra.operations import apt, files, python, server, systemd

from roles import APT_LOCK_WAIT
from ssedeploy import cluster, firewall as fw
from ssedeploy.facts import FirewallState
from ssedeploy.operations import SCRIPTS
from ssedeploy.paths import SYSTEMD_UNITS
from ssedeploy.render import render
from ssedeploy.run_results import note

ROLE = "firewall"
APPLY = "Firewall rules applied (undone unless confirmed)"
CONFIRM = "Firewall confirmed over a new SSH connection"
KEPT = "Firewall rules kept"
REMOVE = "Firewall table removed (firewall.enabled is false)"
UNIT_PATH = f"{SYSTEMD_UNITS}/{fw.UNIT}"
STATE_FACT = (FirewallState, (), {"live_file": fw.LIVE_FILE, "state_dir": fw.STATE, "table": fw.TABLE})


def reads(settings) -> list:
    """The facts the role reads while pyinfra plans ((fact, args, kwargs); deploy.py reads them in one go)."""
    return [STATE_FACT]


def ssh_port(settings) -> int:
    return settings.firewall.ssh_port or int(host.data.get("ssh_port") or 22)


def confirm(target, path: str, seconds: int) -> None:
    """Reach `target` over a NEW SSH connection, made by pyinfra's own connector from the same inventory data
    (host key, jump host, agent), and create `path` with sudo; retry until shortly before the host's own
    deadline. If none gets through, say so in the run's notes: the host undoes the rules, and the step after
    this one fails with firewall-apply.sh's own words."""
    if not isinstance(target.connector, SSHConnector):
        raise OperationError(f"{target.name}: the firewall's confirmation needs an SSH host (or firewall.enabled: false)")
    end, last = time.monotonic() + max(1, seconds - 5), None
    while time.monotonic() < end:
        fresh = SSHConnector(target.state, target)
        fresh.data = {**fresh.data, "ssh_connect_retries": 0}
        try:
            fresh.connect()
            ok, output = fresh.run_shell_command(StringCommand("touch", path), _sudo=bool(target.data.get("_sudo")))
            if ok:
                return
            last = " ".join(output.stderr_lines) or "touch failed"
        except Exception as exc:  # refused, timed out, dropped: try again until the deadline
            last = exc
        finally:
            if fresh.client:
                fresh.client.close()
        time.sleep(1)
    # No raise: the host puts the previous rules back by itself, and the next step fails with its reason.
    note(target, f"firewall: no new SSH connection got through the new rules within {seconds} s ({last}); "
                 "check firewall.ssh_port and firewall.allow")


@deploy(ROLE)
def firewall(settings):
    state = host.get_fact(STATE_FACT[0], **STATE_FACT[2])
    if not settings.firewall.enabled:
        if state["kernel"] is not None:
            server.shell(name=REMOVE, commands=[f"nft delete table inet {fw.TABLE}"])
        unit = files.file(name=f"{fw.UNIT} removed", path=UNIT_PATH, present=False)
        systemd.daemon_reload(name="systemd daemon-reload (firewall)", _if=unit.did_change)
        files.file(name=f"{fw.LIVE_FILE} removed", path=fw.LIVE_FILE, present=False)
        return
    apt.update(name="apt lists are fresh (firewall)", cache_time=3600)
    apt.packages(name="Install nftables", packages=["nftables"], extra_install_args=APT_LOCK_WAIT)
    unit = files.put(name=fw.UNIT, src=StringIO(render("systemd/ssedeploy-firewall.service.j2", table=fw.TABLE,
                                                       live_file=fw.LIVE_FILE)), dest=UNIT_PATH, mode="644")
    systemd.daemon_reload(name="systemd daemon-reload (firewall)", _if=unit.did_change)
    # Enabled, not started: the apply step loads the rules now, the unit at every boot.
    systemd.service(name=f"{fw.UNIT} enabled (loads the table at boot)", service=fw.UNIT, running=None, enabled=True)

    topo = cluster.current()
    text = fw.ruleset(settings, ssh_port(settings), public=topo.is_proxy(host.name), peers=cluster.app_allow(host.name))
    why = fw.needs_apply(hashlib.sha256(text.encode()).hexdigest(), state["live_sha"], state["applied"],
                         state["kernel"])
    changed = fw.changed_rules(state["applied"], state["kernel"])
    if changed:
        note(host, f"firewall: rules changed on the host: {'; '.join(changed)}")
    if why:
        token, seconds = secrets.token_hex(4), settings.firewall.confirm_seconds
        new, script, confirm_path = f"{fw.STATE}/new.nft", f"{fw.STATE}/firewall-apply.sh", f"{fw.STATE}/confirmed-{token}"
        files.put(name="Firewall rules staged", src=StringIO(text), dest=new, mode="600")
        files.put(name="firewall-apply.sh", src=str(SCRIPTS / "firewall-apply.sh"), dest=script, mode="700")
        server.shell(name=f"{APPLY}: {why}", commands=[
            # Detached (not --wait): it must outlive a connection the new rules cut. The last verdict goes
            # first, so the waits read this run's; this step returns once the new rules are in the kernel.
            f"rm -f {fw.STATE}/result {fw.STATE}/loaded && systemd-run --quiet --collect "
            f"--unit=ssedeploy-firewall-apply-{token} sh {script} {new} {fw.LIVE_FILE} {fw.STATE} {confirm_path} "
            f"{seconds}",
            shlex.join(["sh", "-c", (SCRIPTS / "firewall-wait.sh").read_text(), "firewall-wait", fw.STATE,
                        "loaded", str(seconds)])])
        python.call(name=CONFIRM, function=confirm, target=ctx_host.get(), path=confirm_path, seconds=seconds)
        server.shell(name=KEPT, commands=[shlex.join(["sh", "-c", (SCRIPTS / "firewall-wait.sh").read_text(),
                                                      "firewall-wait", fw.STATE, "confirmed", str(seconds + 15)])])
    want = fw.conntrack_max(settings, state["conntrack_max"])
    if want and state["conntrack_writable"]:
        server.sysctl(name="nf_conntrack_max for the expected streams", key="net.netfilter.nf_conntrack_max",
                      value=want, persist=True, persist_file="/etc/sysctl.d/90-ssedeploy.conf")
    elif want:
        note(host, f"firewall: nf_conntrack_max is {state['conntrack_max']}, below {want} for "
                   f"{settings.nginx.expected_streams} expected streams, and this host does not let a deploy raise it")

