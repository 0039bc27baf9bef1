"""Which app instance is live and what a run does about the instances: pure decisions, as tables; and the
`AppInstances` fact's parsing of what a host prints."""

import pytest

from ssedeploy.facts import AppInstances, parse_instances
from ssedeploy.instances import (HostInstances, Instance, Release, Settle, drain_name, live_port, release_plan,
                                 settle_plan, unit_name)

PORTS = (3000, 3001)
UP = Instance(active="active", enabled=True, release="R1")
UP_R2 = Instance(active="active", enabled=True, release="R2")
DOWN = Instance(active="inactive", enabled=False, release="R1")
FAILED = Instance(active="failed", enabled=True, release="R1")
STARTED = Instance(active="active", enabled=False, release="R2")        # started by a run that died
DRAINING = Instance(active="active", enabled=False, release="R1", draining=True)


def found(served=None, files=None, a=None, b=None, legacy=None, current=None):
    instances = {p: i for p, i in zip(PORTS, (a, b)) if i is not None}
    return HostInstances(served_port=served, files_port=files, instances=instances, legacy=legacy, current=current)


@pytest.mark.parametrize("served,files,want", [
    (3001, 3000, 3001),    # what the workers serve wins: a run died between the swap and the reload
    (None, 3001, 3001),    # nginx down: its live files say
    (None, None, None),    # no config yet
    (8080, 3000, 3000),    # a port that is no instance's (a hand edit): the files'
    (None, 9999, None),
])
def test_live_port(served, files, want):
    assert live_port(found(served, files), PORTS) == want


@pytest.mark.parametrize("host,target,pending,want", [
    # a fresh host: nginx (deployed first) names the first port, nothing runs: start on the second
    (found(3000, 3000), "R1", False, Release(idle=3001, live=3000, old=None)),
    (found(None, None), "R1", False, Release(idle=3000, live=None, old=None)),      # no nginx at all
    # no nginx config: the one instance that runs is what serves (never restarted in place)
    (found(None, None, a=UP), "R1", False, None),
    (found(None, None, a=UP), "R2", False, Release(idle=3001, live=3000, old=3000)),
    (found(None, None, b=UP_R2), "R1", False, Release(idle=3000, live=3001, old=3001)),
    # R1 serves on 3000: nothing to do, unless its unit or environment changed
    (found(3000, 3000, a=UP), "R1", False, None),
    (found(3000, 3000, a=UP), "R1", True, Release(idle=3001, live=3000, old=3000)),
    (found(3000, 3000, a=UP), "R2", False, Release(idle=3001, live=3000, old=3000)),
    (found(3001, 3001, a=DOWN, b=UP), "R2", False, Release(idle=3000, live=3001, old=3001)),
    # the live instance is down or failed: release beside it (nothing to drain)
    (found(3000, 3000, a=FAILED), "R1", False, Release(idle=3001, live=3000, old=None)),
    (found(3000, 3000, a=DOWN), "R1", False, Release(idle=3001, live=3000, old=None)),
    # a dead run started R2 on 3001 but never switched: nginx still sends to 3000; do it again
    (found(3000, 3000, a=UP, b=STARTED), "R2", False, Release(idle=3001, live=3000, old=3000)),
    # a dead run switched to 3001 and died before draining: R2 serves, nothing owed (settle stops 3000)
    (found(3001, 3001, a=UP, b=UP_R2), "R2", False, None),
    # the swap went live but the reload never happened: nginx serves 3000
    (found(3000, 3001, a=UP, b=STARTED), "R2", False, Release(idle=3001, live=3000, old=3000)),
    # ssedeploy before two instances: APP.service serves on the first port; it is drained
    (found(3000, 3000, legacy=UP), "R1", False, Release(idle=3001, live=3000, old=None, legacy=True)),
    (found(3000, 3000, legacy=DOWN), "R1", False, Release(idle=3001, live=3000, old=None)),
])
def test_release_plan(host, target, pending, want):
    assert release_plan(host, PORTS, target, pending) == want


@pytest.mark.parametrize("host,want", [
    (found(3000, 3000, a=UP, current="R1"), Settle()),                                  # settled
    (found(3000, 3000, a=UP, b=DRAINING, current="R1"), Settle()),                      # a drain is pending
    (found(3001, 3001, a=UP, b=UP_R2, current="R1"),                                    # a run died before draining
     Settle(stop=("sseapp@3000.service",), disable=("sseapp@3000.service",), record=("R2", 3001))),
    (found(3000, 3000, a=Instance(active="active", enabled=False, release="R1"), current="R1"),
     Settle(enable="sseapp@3000.service")),
    (found(3000, 3000, a=UP, b=Instance(active="inactive", enabled=True, release="R2"), current="R1"),
     Settle(disable=("sseapp@3001.service",))),
    (found(3001, 3001, b=UP_R2, legacy=DOWN, current="R2"), Settle(remove_legacy=True)),  # migrated
    (found(3001, 3001, b=UP_R2, legacy=UP, current="R2"),                              # its drain died
     Settle(stop=("sseapp.service",), disable=("sseapp.service",))),
    (found(3000, 3000, a=FAILED), Settle()),                     # nothing serves: a release, not a settle
    (found(3000, 3000, legacy=UP), Settle()),                    # not migrated yet
    (found(None, None), Settle()),
])
def test_settle_plan(host, want):
    assert settle_plan(host, PORTS, "sseapp") == want
    assert bool(want) == (want != Settle())


def test_units_and_timers_are_named_by_port():
    assert unit_name("sseapp", 3001) == "sseapp@3001.service"
    assert unit_name("sseapp", None) == "sseapp.service"
    assert drain_name("sseapp", 3001) == "ssedeploy-sseapp-drain-3001"
    assert drain_name("sseapp", None) == "ssedeploy-sseapp-drain-legacy"


def test_the_fact_reads_served_files_units_and_links():
    lines = [
        "served 0123456789abcdef 3001",
        "files 3001",
        "instance 3000 active disabled 1 ../releases/R1",
        "instance 3001 active enabled  ../releases/R2",
        "legacy - inactive disabled  ",
        "current releases/R2",
        "previous releases/R1",
    ]
    assert parse_instances(lines) == HostInstances(
        served_port=3001, served_revision="0123456789abcdef", files_port=3001,
        instances={3000: Instance("active", False, "R1", True), 3001: Instance("active", True, "R2", False)},
        legacy=Instance("inactive", False, None, False), current="R2", previous="R1")


def test_the_fact_on_a_fresh_host_knows_nothing():
    lines = ["served ", "files ", "instance 3000 inactive  ", "instance 3001 inactive  ", "current ", "previous "]
    got = parse_instances(lines)
    assert (got.served_port, got.files_port, got.legacy, got.current) == (None, None, None, None)
    assert not any(i.running for i in got.instances.values())
    assert live_port(got, PORTS) is None
    # nginx answers something that is not its revision server (an old config, an error page)
    assert parse_instances(["served <html>404</html>"]).served_port is None


def test_the_fact_command_names_every_instance_and_the_legacy_unit():
    command = AppInstances().command(app="web", app_dir="/srv/web", ports=(4000, 4001), revision_port=8573)
    for part in ("web@4000.service", "web@4001.service", "ssedeploy-web-drain-4000", "/etc/systemd/system/web.service",
                 "/srv/web/instances/4001", "/ssedeploy/upstream", "/etc/nginx/sites-available/ssedeploy.conf"):
        assert part in command


@pytest.mark.parametrize("bind,port", [("127.0.0.1", 3001), ("10.0.0.5", 4000), ("::1", 3000)])
def test_the_fact_reads_the_upstream_port_from_a_rendered_site(tmp_path, bind, port):
    import subprocess

    from ssedeploy import nginx
    from ssedeploy.settings import parse

    settings = parse({"app": {"bind": bind, "ports": [port, port + 1]}})
    files, _ = nginx.render_tree(settings, "1.22.1", nginx.limits(settings, 2, None), port)
    site = tmp_path / "site.conf"
    site.write_text(files[nginx.SITE])
    command = AppInstances().command(app="sseapp", app_dir=str(tmp_path), ports=(port, port + 1), revision_port=1)
    files_line = next(c for c in command.split("; ") if c.startswith('printf "files'))
    files_line = files_line.replace(f"{nginx.LIVE}/{nginx.SITE}", str(site))
    out = subprocess.run(["/bin/sh", "-c", files_line], capture_output=True, text=True, check=True).stdout
    assert parse_instances(out.splitlines()).files_port == port


# -- a cluster's app host: no nginx of its own, the port it recorded live ------------------------------

def recorded(port, a=None, b=None, current=None):
    instances = {p: i for p, i in zip(PORTS, (a, b)) if i is not None}
    return HostInstances(recorded_port=port, instances=instances, current=current)


@pytest.mark.parametrize("served,files,recorded_port,want", [
    (None, None, 3001, 3001),    # a cluster's app host: only the recorded port is read
    (None, None, 3000, 3000),
    (3000, None, 3001, 3000),    # what nginx's workers serve wins
    (None, 3000, 3001, 3000),    # then nginx's files
    (8080, 9999, 3001, 3001),    # neither is an instance's port: the recorded one
    (None, None, 9999, None),    # a recorded port that is no instance's
    (None, None, None, None),
])
def test_live_port_prefers_served_then_files_then_recorded(served, files, recorded_port, want):
    host = HostInstances(served_port=served, files_port=files, recorded_port=recorded_port)
    assert live_port(host, PORTS) == want


@pytest.mark.parametrize("lines,want", [
    (["recorded 3001"], 3001),
    (["recorded 3000 "], 3000),
    (["recorded "], None),          # nothing recorded yet
    (["recorded"], None),
    (["recorded 30x1"], None),
    (["files 3000"], None),         # the files' port is not the recorded one
])
def test_the_fact_reads_the_recorded_port(lines, want):
    assert parse_instances(lines).recorded_port == want


def test_the_fact_reads_a_cluster_app_hosts_whole_output():
    lines = ["recorded 3001", "instance 3000 active disabled  ../releases/R1",
             "instance 3001 active enabled  ../releases/R2", "current releases/R2", "previous releases/R1"]
    assert parse_instances(lines) == HostInstances(
        recorded_port=3001, instances={3000: Instance("active", False, "R1", False), 3001: UP_R2},
        current="R2", previous="R1")


@pytest.mark.parametrize("host,target,want", [
    (recorded(3001, a=UP, b=UP_R2), "R2", None),                                   # R2 recorded live: nothing owed
    (recorded(3001, a=UP, b=UP_R2), "R3", Release(idle=3000, live=3001, old=3001)),
    (recorded(3000, a=UP, b=STARTED), "R2", Release(idle=3001, live=3000, old=3000)),  # started, never recorded
])
def test_release_plan_on_a_cluster_app_host_follows_the_recorded_port(host, target, want):
    assert release_plan(host, PORTS, target, False) == want


def test_a_held_release_not_drained_yet_is_settled_by_stopping_the_old_instance():
    """After `app-release.sh --hold` the old instance runs with no drain pending: settle stops it at once (a
    cluster's run drains it first, app_drain, so settle only ever sees this when the drain did not run)."""
    held = recorded(3001, a=Instance(active="active", enabled=False, release="R1"), b=UP_R2, current="R2")
    assert settle_plan(held, PORTS, "sseapp") == Settle(stop=("sseapp@3000.service",))
    drained = recorded(3001, a=Instance(active="active", enabled=False, release="R1", draining=True), b=UP_R2,
                       current="R2")
    assert settle_plan(drained, PORTS, "sseapp") == Settle()
