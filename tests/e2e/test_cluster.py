"""More than one server (issue 18), on a sandbox instance of 5 Debian 12 hosts: 2 proxies (nginx) in front of
3 app hosts (inventory groups `proxies` and `apps`). The layout deploys and verifies; streams flow through
each proxy; a new build rolls over the app hosts one at a time while 200 EventSource-like clients stream
through both proxies; a check that fails on one app host stops the roll; an app host's app stopped, then
every app, then an app host vanishing (its network cut, then killed), while clients stream; the host brought
back, and the next run converges.

Timeouts are shortened to fit `make test` (as in test_releases.py), and app.heartbeat_seconds is 2, so nginx's
proxy_read_timeout (4 heartbeats) is 8 s: the bound for streams of a host that vanishes. Every wait polls.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from roles import app as app_role
from roles import cluster as cluster_role
from ssedeploy import nginx
from ssedeploy.instances import live_port, unit_name
from ssedeploy.settings import merge, parse
from ssedeploy.sse import read_stream

from .eventsource import Fleet, report
from .helpers import HTTPS_ON, booted, host_of, instances, pyinfra, ssedeploy
from .polling import wait_until
from .releasing import build, watched

INSTANCE = "e2e-cl"
# nginx's old workers outlast the whole roll (3 batches, then the drains), as the defaults' 60 s do.
SETTINGS = {"nginx": {"worker_shutdown_timeout": 40},
            "app": {"drain_seconds": 3, "stop_timeout": 5, "heartbeat_seconds": 2}}
DEFAULTS = parse(SETTINGS)
APP = DEFAULTS.app
# A vanished app host's streams: silent until proxy_read_timeout, then the client waits its retry (the app's
# first `retry: 5000`), and its reconnect may try the vanished host first (nginx's connect timeout).
VANISH_BOUND_S = DEFAULTS.proxy_read_timeout + 5 + nginx.CONNECT_TIMEOUT + 2
HELD = f"{cluster_role.ROLE} | {app_role.HELD}"


def inventory(tmp: Path, data: dict, per_host: dict | None = None) -> Path:
    """The instance's hosts 1-2 as `proxies`, 3-5 as `apps` (app.bind: their address), `data` for all and
    `per_host` merged on top for some (an inventory like inventories/sandbox_cluster.py)."""
    path = tmp / f"cluster_{abs(hash(repr((data, per_host))))}.py"
    path.write_text(
        "from ssedeploy.inventory import sandbox_hosts\n"
        "from ssedeploy.settings import merge\n"
        f"data, per_host = {data!r}, {per_host or {}!r}\n"
        f"hosts = sandbox_hosts({INSTANCE!r})\n"
        "def entry(name, host, bind=None):\n"
        "    mine = merge(merge(data, {'app': {'bind': bind}} if bind else {}), per_host.get(name, {}))\n"
        "    return (name, {**host, **mine})\n"
        "proxies = [entry(n, h) for n, h in hosts[:2]]\n"
        "apps = [entry(n, h, h['ssh_hostname']) for n, h in hosts[2:5]]\n")
    return path


def deploy(cl, data: dict | None = None, per_host: dict | None = None, check: bool = False, env: dict | None = None):
    path = inventory(cl["tmp"], merge(SETTINGS, data or {}), per_host)
    return pyinfra("-y", str(path), "deploy.py", instance=INSTANCE, check=check, env=env)


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    with booted(INSTANCE, "-n", "5") as (up, hosts):
        assert up.returncode == 0, up.stdout + up.stderr
        assert len(hosts) == 5, hosts
        tmp = tmp_path_factory.mktemp("cluster")
        state = {"tmp": tmp, "proxies": hosts[:2], "apps": hosts[2:], "first": None}
        state["first"] = deploy(state)
        yield state


def _instances(info):
    """An app host's instances, read with the deploy's own fact (a cluster's app host: the port it recorded)."""
    return instances(host_of(info), DEFAULTS, cluster=True)


def live(info) -> tuple[int | None, str | None]:
    """(the port an app host recorded live, the release that instance runs)."""
    found = _instances(info)
    port = live_port(found, APP.instance_ports)
    return port, found.instances[port].release if port in found.instances else None


def upstream(proxy) -> list[str]:
    """The servers of the proxy's upstream, as nginx loaded them."""
    tree = nginx.parse_dump(host_of(proxy).check_output("nginx -T 2>/dev/null"))
    blocks = [d for d, _ in nginx.walk(tree) if d["directive"] == "upstream"]
    assert len(blocks) == 1, blocks
    assert any(d["directive"] == "least_conn" for d in blocks[0]["block"]), blocks[0]
    return sorted(d["args"][0] for d in blocks[0]["block"] if d["directive"] == "server")


def served_at(cl) -> list[str]:
    return sorted(nginx.address(a["address"], live(a)[0]) for a in cl["apps"])


def settled(cl) -> None:
    """A roll is over: each app host runs only its live instance and no proxy has an old worker left."""
    def done():
        for a in cl["apps"]:
            found, port = _instances(a), live(a)[0]
            if any(p != port and (i.running or i.draining) for p, i in found.instances.items()):
                return False
        return all(host_of(p).run("pgrep -c -f '^nginx: worker process is shutting down' || true").stdout.strip()
                   in ("", "0") for p in cl["proxies"])
    wait_until(done, 40, "every app host's old instance drained and stopped, and the proxies' old workers gone")


def streams_on(info) -> int:
    """Established connections to an app host's instances (each one a stream or a keepalive connection)."""
    ports = " or ".join(f"sport = :{p}" for p in APP.instance_ports)
    return int(host_of(info).check_output(f"ss -Htn state established '( {ports} )' | wc -l"))


# -- the layout -------------------------------------------------------------------------------------------

def test_proxies_run_nginx_only_app_hosts_the_app_only_and_a_rerun_changes_nothing(cl):
    first = cl["first"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for p in cl["proxies"]:
        ops = [o["name"] for o in first.results.operations(p["name"]) if o["result"] != "not run"]
        assert any(o.startswith("nginx | ") for o in ops) and not any(o.startswith(("app | ", "node | ")) for o in ops), ops
    for a in cl["apps"]:
        ops = [o["name"] for o in first.results.operations(a["name"]) if o["result"] != "not run"]
        assert any(o.startswith("app | ") for o in ops) and not any(o.startswith("nginx | ") for o in ops), ops
        assert not host_of(a).package("nginx").is_installed, f"{a['name']}: nginx installed on an app host"
    again = deploy(cl, check=True)
    assert again.results.changed() == [], again.results.changed()


def test_a_layout_that_cannot_work_stops_the_run_before_any_operation(cl):
    loopback = deploy(cl, per_host={cl["apps"][0]["name"]: {"app": {"bind": "127.0.0.1"}}})
    limited = pyinfra("-y", "--limit", cl["apps"][0]["name"], str(inventory(cl["tmp"], SETTINGS)), "deploy.py",
                      instance=INSTANCE, check=False)
    for ran, said in ((loopback, f"host {cl['apps'][0]['name']}: app.bind = '127.0.0.1': an app host of a cluster"),
                      (limited, f"host {cl['apps'][0]['name']}: this run is limited to app hosts")):
        assert ran.returncode == 1 and said in ran.stdout + ran.stderr, (ran.stdout + ran.stderr)[-2000:]
        assert ran.results.ran() == []


def test_every_proxy_sends_to_every_app_host_at_its_live_instance(cl):
    want = served_at(cl)
    assert len(want) == 3
    for p in cl["proxies"]:
        assert upstream(p) == want, p["name"]


def test_drift_finds_none_and_verify_passes_on_the_cluster(cl):
    path, junit = inventory(cl["tmp"], SETTINGS), cl["tmp"] / "verify.xml"
    result = ssedeploy("drift", str(path), "--junitxml", str(junit), instance=INSTANCE, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = {case.get("name") for case in ElementTree.parse(junit).iter("testcase") if not len(case)}
    # The cluster's own checks ran and passed (they skip on a single host): each proxy's upstream, each app's firewall.
    for name in [h["name"] for h in cl["proxies"]]:
        assert f"test_the_proxy_sends_to_every_app_host_at_its_live_instance_by_least_conn[{name}]" in passed
    for name in [h["name"] for h in cl["apps"]]:
        assert f"test_the_app_answers_the_proxies_and_nobody_else[{name}]" in passed


def test_streams_flow_through_each_proxy_and_spread_over_the_app_hosts(cl):
    fleets = [Fleet(p["address"], 80, "/api/stream", 30, stagger_s=0.01).start() for p in cl["proxies"]]
    try:
        for fleet in fleets:
            fleet.wait_streaming(30)
        counts = {a["name"]: streams_on(a) for a in cl["apps"]}
    finally:
        clients = [c for fleet in fleets for c in fleet.stop()]
    r = report(clients)
    assert r.non_200 == 0 and r.lost_ids == 0 and r.gave_up == 0, r
    # least_conn over 3 app hosts: 60 streams land on every one of them, none takes most of them.
    assert all(n >= 5 for n in counts.values()) and max(counts.values()) <= 40, counts


# -- a rolling release --------------------------------------------------------------------------------------

def test_a_new_build_rolls_over_the_app_hosts_one_at_a_time_and_no_stream_notices(cl):
    source = build(cl["tmp"], "rolled")
    before = {a["name"]: live(a) for a in cl["apps"]}

    def change():
        ran = deploy(cl, {"app": {"source": source}})
        if ran.returncode == 0:
            settled(cl)
        return ran

    r, ran = watched([p["address"] for p in cl["proxies"]], change)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    new = {a["name"]: live(a) for a in cl["apps"]}
    for name, (port, rel) in new.items():
        assert port != before[name][0] and rel != before[name][1], (name, before[name], (port, rel))
    assert len({rel for _, rel in new.values()}) == 1
    for p in cl["proxies"]:
        assert upstream(p) == served_at(cl), p["name"]
    # Batch by batch: the batch's host starts its new instance, then every proxy switches; once the last batch
    # is switched, every old instance drains.
    apps = [a["name"] for a in cl["apps"]]
    drain = f"{cluster_role.ROLE} | {cluster_role.DRAIN}"
    last = f"{cluster_role.ROLE} | {cluster_role.SWITCHED} (batch 3/3: {apps[2]})"
    for k, name in enumerate(apps):
        label = f"(batch {k + 1}/3: {name})"
        started, switched = f"{cluster_role.ROLE} | {cluster_role.STARTED} {label}", f"{cluster_role.ROLE} | {cluster_role.SWITCHED} {label}"
        ops = [o["name"] for o in ran.results.operations(name)]
        held = next(o for o in ops if o.startswith(HELD))
        assert ran.results.of(name, held) == "changed" and ran.results.of(name, drain) == "changed"
        assert ops.index(held) < ops.index(started) < ops.index(switched) <= ops.index(last) < ops.index(drain), ops
        for p in cl["proxies"]:
            pops = [o["name"] for o in ran.results.operations(p["name"])]
            switch = f"{cluster_role.ROLE} | {cluster_role.SWITCH} {label}"
            assert ran.results.of(p["name"], switch) == "changed"
            assert pops.index(started) < pops.index(switch) < pops.index(switched), pops
    # Every stream is cut once, by its old instance's drain (short retry:), and comes back at once through the
    # same proxy, with no id lost and never a non-200 or a fallback answer.
    assert r.non_200 == 0 and r.fallback_answers == 0 and r.gave_up == 0, r
    assert r.lost_ids == 0 and r.repeated_ids == 0 and r.clients_unrecovered == 0, r
    assert r.clients_cut == r.clients and r.max_cuts_per_client == 1, r
    assert r.worst_gap_minus_retry_s is not None and r.worst_gap_minus_retry_s <= 1, r
    assert r.probes > 0 and r.probes_without_event == 0 and r.probe_worst_first_event_s <= 3, r


def test_a_check_that_fails_on_one_app_host_stops_the_roll(cl):
    apps = [a["name"] for a in cl["apps"]]
    before = {a["name"]: live(a) for a in cl["apps"]}
    source = build(cl["tmp"], "stopped-roll")
    ran = deploy(cl, {"app": {"source": source}}, per_host={apps[1]: {"app": {"health_path": "/no-such-path"}}})
    assert ran.returncode != 0
    assert ran.results.failed_at(apps[1]).startswith(HELD), ran.results.failed_at(apps[1])
    assert "failed its check" in ran.results.error(apps[1])
    after = {a["name"]: live(a) for a in cl["apps"]}
    assert after[apps[0]] != before[apps[0]]   # batch 1 rolled
    assert after[apps[1]] == before[apps[1]]   # its check failed: what served still serves
    assert after[apps[2]] == before[apps[2]]   # batch 3 never started
    settled(cl)
    for p in cl["proxies"]:
        assert upstream(p) == served_at(cl), p["name"]
    fixed = deploy(cl, {"app": {"source": source}})
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    assert len({live(a)[1] for a in cl["apps"]}) == 1
    settled(cl)


# -- losing an app host -------------------------------------------------------------------------------------

def test_an_app_host_that_vanishes_loses_its_streams_for_the_stated_bound_and_the_next_run_converges(cl):
    victim = cl["apps"][1]

    def to_victim(proxy) -> int:
        return int(host_of(proxy).check_output(f"ss -Htn state established '( dst {victim['address']} )' | wc -l"))

    def change():
        assert all(to_victim(p) for p in cl["proxies"]), "the victim serves no stream of some proxy"
        # Network gone first (no FIN or RST gets out), then the host killed: a power cut, as a proxy sees it.
        subprocess.run(["ip", "link", "del", f"vb-{victim['name']}"], check=True)
        os.kill(victim["pid"], signal.SIGKILL)
        # The proxies give its streams up after proxy_read_timeout; the window lasts until they did.
        wait_until(lambda: not any(to_victim(p) for p in cl["proxies"]), VANISH_BOUND_S + 10,
                   f"no proxy connected to {victim['name']}")

    r, _ = watched([p["address"] for p in cl["proxies"]], change, count=90)
    logs = [host_of(p).run("sudo tail -n 15 /var/log/nginx/error.log").stdout for p in cl["proxies"]]
    assert r.clients_cut > 0 and r.clients_unrecovered == 0 and r.gave_up == 0, (r, logs)
    assert r.lost_ids == 0 and r.repeated_ids == 0 and r.non_200 == 0 and r.fallback_answers == 0, (r, logs)
    assert r.worst_gap_s is not None and r.worst_gap_s <= VANISH_BOUND_S, (r, VANISH_BOUND_S)
    # Back: a new host in its place, and one run makes it an app host of the cluster again.
    up = ssedeploy("sandbox", "up", "-n", "5", "--name", INSTANCE, instance=INSTANCE, check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    hosts = json.loads(ssedeploy("sandbox", "status", "--name", INSTANCE, "--json", instance=INSTANCE).stdout)
    cl["apps"] = hosts[2:]
    ran = deploy(cl)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert deploy(cl).results.changed() == []
    settled(cl)
    for p in cl["proxies"]:
        assert upstream(p) == served_at(cl), p["name"]


def stop_app(info) -> str:
    unit = unit_name(APP.name, live(info)[0])
    host_of(info).run_expect([0], f"sudo systemctl stop {unit}")
    return unit


def test_an_app_host_whose_app_stops_loses_no_stream_and_with_no_app_up_clients_get_the_retry_answer(cl):
    victim = cl["apps"][0]
    units = {}

    def change():
        wait_until(lambda: streams_on(victim) > 0, 10, f"streams on {victim['name']}")
        units[victim["name"]] = stop_app(victim)
        wait_until(lambda: streams_on(victim) == 0, 15, f"no stream left on {victim['name']}")

    r, _ = watched([p["address"] for p in cl["proxies"]], change, count=90)
    # The stopped app ended its streams with a short retry:, and they came back on the other app hosts.
    assert r.clients_cut > 0 and r.clients_unrecovered == 0 and r.gave_up == 0, r
    assert r.lost_ids == 0 and r.repeated_ids == 0 and r.non_200 == 0 and r.fallback_answers == 0, r
    assert r.worst_gap_minus_retry_s is not None and r.worst_gap_minus_retry_s <= 2, r
    try:
        for a in cl["apps"][1:]:
            units[a["name"]] = stop_app(a)
        for p in cl["proxies"]:
            answer = read_stream(p["address"], 80, "/api/stream", duration=5, until=lambda s: s.blocks)
            assert answer.status == 200 and answer.headers.get(nginx.FALLBACK_HEADER.lower()) == "1", answer
    finally:
        for a in cl["apps"]:
            if a["name"] in units:
                host_of(a).run(f"sudo systemctl start {units[a['name']]}")
    for p in cl["proxies"]:
        wait_until(lambda: read_stream(p["address"], 80, "/api/stream", duration=3, until=lambda s: s.events).events,
                   20, f"streams again through {p['name']}")


# -- certificates -------------------------------------------------------------------------------------------

def served_certificate(address: str, name: str, roots: str) -> dict:
    """The certificate `address` serves for `name`, verified against `roots` as a browser would."""
    context = ssl.create_default_context(cafile=roots)
    with socket.create_connection((address, 443), timeout=10) as raw, context.wrap_socket(raw, server_hostname=name) as tls:
        return tls.getpeercert()


def test_both_proxies_get_a_certificate_for_the_name_they_share(cl):
    """The site's name points at the first proxy only (the sandbox's DNS); the second proxy's HTTP-01 token is
    fetched by the CA from the first, which asks its peers for a token it does not hold."""
    first = cl["proxies"][0]
    shared = first["acme_site"]
    ran = deploy(cl, per_host={cl["proxies"][1]["name"]: {"site": {"server_names": [shared]}}}, env=HTTPS_ON)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    for p in cl["proxies"]:
        issued = [o["name"] for o in ran.results.operations(p["name"]) if o["name"].startswith("nginx | ACME certificate from the CA")]
        assert issued and ran.results.of(p["name"], issued[0]) == "changed", issued
        cert = served_certificate(p["address"], shared, first["acme_roots"])
        assert ("DNS", shared) in cert["subjectAltName"], (p["name"], cert["subjectAltName"])
    serials = {served_certificate(p["address"], shared, first["acme_roots"])["serialNumber"] for p in cl["proxies"]}
    assert len(serials) == 2, "each proxy serves its own certificate"
    # The second proxy's token went out through the first: it answered the first's request for it.
    log = host_of(cl["proxies"][1]).check_output("sudo cat /var/log/nginx/access.log")
    assert f"GET {nginx.ACME_PEER_PATH}" in log and " 200 " in log.split(f"GET {nginx.ACME_PEER_PATH}", 1)[1].splitlines()[0], log[-2000:]
