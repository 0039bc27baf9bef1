"""Streams and deploys under faults, on three real sandbox hosts (playbook checks 5-7).

Timeouts are shortened so the suite fits `make test`: old workers get 5 s after a
reload, heartbeats come every 2 s and nginx cuts a stream silent for 8 s.
"""

from __future__ import annotations

import signal
import subprocess
import time
from contextlib import contextmanager

import pytest

from roles import app as app_role
from roles import nginx as nginx_role
from ssedeploy.deploy_lock import DEAD_AFTER
from ssedeploy.paths import NGINX_STATE, env_path
from ssedeploy.probe import probe
from ssedeploy.settings import Site, parse as _parse

from .helpers import (booted, deploy_with, host_of, instances, live_app_port, live_unit, main_pid, ssedeploy, start_deploy,
                      write_inventory)
from .polling import streaming, wait_until
from .releasing import build, release_op, settled, watched
from .streams import consecutive, crowd, follow

ENV = env_path(_parse({}))  # the default app's, as deployed here
FAULT = "e2e-fault"
SHUTDOWN = 5  # nginx.worker_shutdown_timeout
HEARTBEAT = 2  # app.heartbeat_seconds
READ_TIMEOUT = 4 * HEARTBEAT  # the derived proxy_read_timeout
# drain + stop timeout must stay below SHUTDOWN
SETTINGS = {"nginx": {"worker_shutdown_timeout": SHUTDOWN},
            "app": {"heartbeat_seconds": HEARTBEAT, "drain_seconds": 1, "stop_timeout": 3}}
DEFAULTS = _parse(SETTINGS)


def settings(extra: list[str] | None = None) -> dict:
    """SETTINGS plus nginx extra_http_directives (a harmless config change when needed)."""
    return {**SETTINGS, "nginx": {**SETTINGS["nginx"], **({"extra_http_directives": extra} if extra else {})}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three deployed hosts: [(status entry, testinfra host)]."""
    with booted(FAULT, "--count", "3") as (up, hosts):
        assert up.returncode == 0, up.stdout + up.stderr
        first = deploy_with(SETTINGS, tmp_path_factory.mktemp("fault"), instance=FAULT)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        yield [(info, host_of(info)) for info in hosts]


@pytest.fixture
def one(fleet):
    return fleet[0]


def served_revision(host) -> str:
    return host.check_output(f"curl -s http://127.0.0.1:{Site().revision_port}/ssedeploy/revision")


def recorded_revision(host) -> str:
    return host.check_output(f"cat {NGINX_STATE}/revision")


def streams_through_nginx(info) -> None:
    verdict = probe(f"http://{info['address']}/api/stream", duration=8)
    assert verdict.verdict == "streaming", verdict


# -- streams ---------------------------------------------------------------------------------

def test_reload_with_200_streams_loses_no_event(one):
    info, host = one
    old_workers = set(host.check_output("pgrep -P $(cat /run/nginx.pid)").split())
    clients = crowd(200, info["address"], seconds=SHUTDOWN + 12)
    streaming(host, info["address"], 200)
    reloaded_at = time.time()
    host.run_expect([0], "systemctl reload nginx")

    def old_workers_gone():
        lingering = host.run("pgrep -f '[n]ginx: worker process is shutting down'").stdout.split()
        alive = host.run("ps -o pid= -p " + ",".join(old_workers)).stdout.split()
        return not lingering and not alive and time.time()

    gone_at = wait_until(old_workers_gone, SHUTDOWN + 10, "the old workers leave after the reload")
    results = clients.join()

    assert gone_at - reloaded_at <= SHUTDOWN + 2, f"old workers still there {gone_at - reloaded_at:.1f} s after the reload"
    for client in results:
        assert client.statuses == {200}
        assert consecutive(client.ids), f"ids lost or repeated: {client.ids}"
        assert len(client.connections) <= 2, "more than one reconnect"
        for cut, resumed in zip(client.connections, client.connections[1:]):
            assert reloaded_at <= cut.ended_at <= reloaded_at + SHUTDOWN + 2
            assert resumed.last_event_id == int(cut.result.ids[-1])
        assert max(client.event_times) > reloaded_at + SHUTDOWN + 2, "no event after the old workers left"


def test_app_killed_answers_retry_never_5xx_and_clients_resume(one):
    info, host = one
    unit = live_unit(host)
    before = dict(line.split("=", 1) for line in host.check_output(
        f"systemctl show -p NRestarts -p MainPID {unit}").splitlines())
    clients = crowd(20, info["address"], seconds=12)
    streaming(host, info["address"], 20)
    killed_at = time.time()
    host.run_expect([0], f"systemctl kill --signal=SIGKILL {unit}")
    results = clients.join()
    after = dict(line.split("=", 1) for line in host.check_output(
        f"systemctl show -p NRestarts -p MainPID {unit}").splitlines())

    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1 and after["MainPID"] != before["MainPID"]
    retries = [c for client in results for c in client.connections
               if c.result.status == 200 and not c.result.events and c.result.blocks
               and c.result.blocks[0].retry and c.ended_at > killed_at]
    assert retries, "no client saw the 200 + retry answer while the app was down"
    for client in results:
        assert client.statuses == {200}, f"a client got {client.statuses}"
        assert consecutive(client.ids), f"ids lost or repeated: {client.ids}"
        resumed = [t for t in client.event_times if t > killed_at]
        assert resumed and resumed[0] < killed_at + 5, "events did not resume within 5 s of the kill"


def quiet_app(host, *env: str) -> None:
    """Override the app's environment with a drop-in (none: back to the deployed unit)."""
    unit, port = live_unit(host), live_app_port(host)
    d = f"/etc/systemd/system/{unit}.d"
    body = "[Service]\n" + "".join(f"Environment={e}\n" for e in env)
    host.run_expect([0], f"mkdir -p {d} && printf '{body}' > {d}/zz-fault.conf" if env else f"rm -f {d}/zz-fault.conf")
    host.run_expect([0], f"systemctl daemon-reload && systemctl restart {unit}")
    host.run_expect([0], f"for i in $(seq 50); do curl -sf http://127.0.0.1:{port}/healthz && exit 0; sleep 0.1; done; exit 1")


def test_heartbeats_keep_a_quiet_stream_past_the_read_timeout_and_silence_is_cut(one):
    info, host = one
    try:
        quiet_app(host, "INTERVAL_MS=600000")  # no events: heartbeats only
        kept = follow(info["address"], seconds=1.5 * READ_TIMEOUT).connections
        quiet_app(host, "INTERVAL_MS=600000", "HEARTBEAT_MS=600000")  # negative control: silence
        started = time.time()
        cut = follow(info["address"], seconds=READ_TIMEOUT + 6).connections[0]
    finally:
        quiet_app(host)

    assert len(kept) == 1 and not kept[0].result.closed_by_server and kept[0].result.error is None
    assert kept[0].result.status == 200 and not kept[0].result.events
    assert sum("ping" in b.comments for b in kept[0].result.blocks) >= READ_TIMEOUT // HEARTBEAT
    assert cut.result.status == 200 and cut.result.closed_by_server
    assert READ_TIMEOUT - 1 <= cut.ended_at - started <= READ_TIMEOUT + 3
    assert "upstream timed out" in host.check_output("tail -n 20 /var/log/nginx/error.log")


# -- deploys ---------------------------------------------------------------------------------

def lock_log(host) -> list[str]:
    return host.check_output("journalctl -t ssedeploy -o cat --no-pager").splitlines()


def wait_for_lock(host, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("taken by root@" in line and f" pid {pid} " in line for line in lock_log(host)):
            return
        time.sleep(0.2)
    pytest.fail(f"deploy {pid} did not take the lock within {timeout} s")


@contextmanager
def paused(deploy: subprocess.Popen):
    """The lock's holder stopped (SIGSTOP) for a few seconds, well within the host's LEASE: however fast its run,
    it cannot end before the other deploy has asked for the lock."""
    deploy.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        deploy.send_signal(signal.SIGCONT)


def wait_for_waiter(host, timeout: float = 60) -> None:
    """Until a deploy waits for the lock on the host (deploy-lock.sh's `flock -w`)."""
    deadline = time.monotonic() + timeout
    while host.run("pgrep -f '^flock -w'").rc != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"no deploy waited for the lock within {timeout} s")
        time.sleep(0.2)


def test_two_deploys_at_once_never_interleave(one, tmp_path):
    info, host = one
    name = info["name"]
    first = start_deploy(settings(extra=["server_names_hash_bucket_size 128;"]), tmp_path, FAULT, limit=name)
    wait_for_lock(host, first.pid)
    with paused(first):
        second = start_deploy(settings(extra=["server_names_hash_bucket_size 256;"]), tmp_path, FAULT, limit=name)
        wait_for_waiter(host)
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)

    assert first.returncode == 0, out1[-3000:]
    assert second.returncode == 0, out2[-3000:]
    assert "waiting up to 300 s for the deploy lock, held by: root@" in out2 and f"pid {first.pid} " in out2
    events = [(kind, pid) for line in lock_log(host) for pid in (first.pid, second.pid)
              if f" pid {pid} " in line for kind in ("taken", "released") if f" {kind} by " in line]
    assert events == [("taken", first.pid), ("released", first.pid), ("taken", second.pid), ("released", second.pid)]
    assert "server_names_hash_bucket_size 256;" in host.check_output("nginx -T 2>/dev/null")


def test_a_deploy_that_cannot_get_the_lock_fails_naming_the_holder(one, tmp_path):
    info, host = one
    holder = start_deploy(settings(extra=["server_names_hash_bucket_size 512;"]), tmp_path, FAULT, limit=info["name"])
    try:
        wait_for_lock(host, holder.pid)
        with paused(holder):
            started = time.monotonic()
            refused = deploy_with(settings(), tmp_path, FAULT, env={"SSEDEPLOY_LOCK_WAIT": "1"},
                                  limit=info["name"])
            waited = time.monotonic() - started
    finally:
        out, _ = holder.communicate(timeout=300)
    assert holder.returncode == 0, out[-3000:]
    log = refused.stdout + refused.stderr
    assert refused.returncode != 0 and waited < 30
    assert "another deploy holds the lock after 1 s of waiting" in log and f"pid {holder.pid} " in log
    assert refused.results.ran() == [], "the refused run touched the host"


def test_the_lock_dies_with_its_holder(one, tmp_path):
    info, host = one
    doomed = start_deploy(settings(extra=["server_names_hash_bucket_size 64;"]), tmp_path, FAULT, limit=info["name"])
    wait_for_lock(host, doomed.pid)
    doomed.kill()  # the controller dies mid-run: its connection closes, the host's holder exits
    doomed.communicate(timeout=30)
    started = time.monotonic()
    after = deploy_with(settings(), tmp_path, FAULT, env={"SSEDEPLOY_LOCK_WAIT": "10"}, limit=info["name"])
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert served_revision(host) == recorded_revision(host)
    streams_through_nginx(info)


def ssh_blackhole(address: str, on: bool) -> None:
    """Drop every packet of the SSH connections to `address` (the network fails; nothing closes)."""
    if on:
        rules = (
            "table inet ssdtest_sshdrop {\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {address} tcp dport 22 drop; }}\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {address} tcp sport 22 drop; }}\n"
            "}\n"
        )
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    else:
        subprocess.run(["nft", "delete", "table", "inet", "ssdtest_sshdrop"], capture_output=True)


def test_ssh_dropped_mid_deploy_leaves_a_valid_config_and_the_next_run_converges(one, tmp_path):
    info, host = one
    change = settings(extra=["server_names_hash_bucket_size 1024;"])
    before = served_revision(host)
    cut = start_deploy(change, tmp_path, FAULT, limit=info["name"])
    try:
        for line in cut.stdout:
            if line.startswith(f"--> Starting operation: {nginx_role.reported(nginx_role.TREE)}"):
                ssh_blackhole(info["address"], True)
                dropped = time.monotonic()
                break
        else:
            pytest.fail("the deploy ended before its nginx config step")
        out, _ = cut.communicate(timeout=DEAD_AFTER + 60)
        noticed = time.monotonic() - dropped
    finally:
        ssh_blackhole(info["address"], False)
        if cut.poll() is None:
            cut.kill()
    assert cut.returncode != 0 and noticed < DEAD_AFTER + 30, f"exit {cut.returncode} after {noticed:.0f} s"

    # The host kept a whole config, old or new, and serves it.
    host.run_expect([0], "nginx -t")
    assert served_revision(host) in (before, recorded_revision(host))
    streams_through_nginx(info)

    # No manual step: the next run waits out the dead run's lock lease and converges.
    again = deploy_with(change, tmp_path, FAULT, limit=info["name"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "server_names_hash_bucket_size 1024;" in host.check_output("nginx -T 2>/dev/null")
    assert served_revision(host) == recorded_revision(host) != before


def test_nginx_t_failing_on_one_host_of_three_leaves_it_on_its_previous_config(fleet, tmp_path):
    before = {info["name"]: (served_revision(host), host.check_output(
        "find /etc/nginx -type f | sort | xargs sha256sum")) for info, host in fleet}
    bad = fleet[1][0]["name"]
    change = settings(extra=["server_names_hash_bucket_size 128;"])
    result = deploy_with(change, tmp_path, FAULT, per_host={bad: {**change, "site": {
        "extra_directives": ["no_such_directive on;"]}}})
    log = result.stdout + result.stderr

    assert result.returncode != 0
    assert 'unknown directive "no_such_directive"' in log and "nginx -t failed" in log
    failed = [line.split("--> ", 1)[1] for line in log.splitlines() if " FAILED at: " in line]
    assert len(failed) == 1 and failed[0].startswith(f"{bad} FAILED at: ") and "nginx config" in failed[0], failed
    for info, host in fleet:
        name = info["name"]
        if name == bad:
            assert (served_revision(host), host.check_output(
                "find /etc/nginx -type f | sort | xargs sha256sum")) == before[name]
        else:
            assert served_revision(host) == recorded_revision(host) != before[name][0]
            assert "server_names_hash_bucket_size 128;" in host.check_output("nginx -T 2>/dev/null")
        streams_through_nginx(info)


# -- a run that dies between changing a file and acting on it --------------------------------

def killed_at(run: subprocess.Popen, prefix: str) -> None:
    """Kill the run (the controller dies) as soon as its log shows `prefix`."""
    for line in run.stdout:
        if line.startswith(prefix):
            run.kill()
            run.communicate(timeout=30)
            return
    pytest.fail(f"the run ended before {prefix!r}")


def test_a_run_killed_between_config_swap_and_reload_is_finished_by_the_next(fleet, tmp_path):
    info, host = fleet[2]
    change = settings(extra=["server_names_hash_bucket_size 2048;"])
    before = served_revision(host)
    killed_at(start_deploy(change, tmp_path, FAULT, limit=info["name"]),
              f"--> Starting operation: {nginx_role.reported(nginx_role.RUNNING)}")
    assert served_revision(host) == before != recorded_revision(host), "not the state a dead run leaves"
    drift = ssedeploy("drift", str(write_inventory(change, tmp_path, FAULT)), "--limit", info["name"],
                      instance=FAULT, check=False)
    assert drift.returncode == 1 and nginx_role.RELOAD in drift.stdout, drift.stdout + drift.stderr

    again = deploy_with(change, tmp_path, FAULT, limit=info["name"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.results.of(info["name"], nginx_role.reported(nginx_role.RELOAD)) == "changed"
    assert served_revision(host) == recorded_revision(host) != before


def app_environment(host) -> str:
    return host.check_output("tr '\\0' '\\n' < /proc/%s/environ", main_pid(host))


def test_a_run_killed_between_environment_change_and_release_releases_next_time(fleet, tmp_path):
    info, host = fleet[2]
    change = {**SETTINGS, "app": {**SETTINGS["app"], "env": {"FAULT_MARK": "1"}}}
    killed_at(start_deploy(change, tmp_path, FAULT, limit=info["name"]),
              f"--> Starting operation: {app_role.reported(app_role.UNIT)}")
    assert 'FAULT_MARK="1"' in host.check_output(f"cat {ENV}")
    assert "FAULT_MARK=1" not in app_environment(host), "not the state a dead run leaves"

    again = deploy_with(change, tmp_path, FAULT, limit=info["name"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "FAULT_MARK=1" in app_environment(host).splitlines()
    third = deploy_with(change, tmp_path, FAULT, limit=info["name"])
    assert third.results.changed() == [], third.stdout[-3000:]


# -- a release cut short: the host serves throughout, and the next run converges ------------------------

def converged(info, host, tmp_path, data: dict) -> None:
    """The next run finishes what the cut one left; then a run changes nothing."""
    again = deploy_with(data, tmp_path, FAULT, limit=info["name"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    settled(host, DEFAULTS)
    third = deploy_with(data, tmp_path, FAULT, limit=info["name"])
    assert third.returncode == 0 and third.results.changed() == [], third.results.changed()


def served_throughout(r) -> None:
    assert r.non_200 == 0 and r.fallback_answers == 0 and r.gave_up == 0, r
    assert r.lost_ids == 0 and r.repeated_ids == 0 and r.clients_unrecovered == 0, r


# The host-side release step killed (as a power cut would) after the new instance is checked (5: before the
# switch) and after nginx serves it (8: before anything is recorded or drained). Every point is in
# tests/unit/test_scripts.py, with stubs.
@pytest.mark.parametrize("point", [5, 8])
def test_a_release_step_killed_after_start_or_switch_leaves_the_host_serving_and_the_next_run_converges(
        fleet, tmp_path, point):
    info, host = fleet[1]
    data = {**SETTINGS, "app": {**SETTINGS["app"], "source": build(tmp_path, f"killed-{point}")}}
    before = live_unit(host)
    fault = {"SSEDEPLOY_TEST_FAULT": f"ssedeploy-sseapp-release={point}"}
    r, cut = watched(info["address"], lambda: deploy_with(data, tmp_path, FAULT, env=fault, limit=info["name"]),
                     count=50)
    assert cut.returncode != 0 and cut.results.failed_at(info["name"]) == release_op(cut, info["name"])
    # the state a step killed there leaves: both instances run; nginx sends to the old one (5) or the new (8)
    found = instances(host)
    assert all(i.running and not i.draining for i in found.instances.values()), found
    assert (live_unit(host) == before) == (point == 5), found
    served_throughout(r)
    r, _ = watched(info["address"], lambda: converged(info, host, tmp_path, data), count=50)
    served_throughout(r)


def test_the_controller_killed_mid_release_cannot_cut_the_host_step(fleet, tmp_path):
    """The release step runs as a transient unit on the host: the controller's death leaves it to finish."""
    info, host = fleet[1]
    data = {**SETTINGS, "app": {**SETTINGS["app"], "source": build(tmp_path, "controller-killed")}}

    def step_running() -> bool:
        return bool(host.run("systemctl list-units --no-legend --state=active,activating "
                             "'ssedeploy-sseapp-release-*'").stdout.strip())

    def kill_mid_release():
        proc = start_deploy(data, tmp_path, FAULT, limit=info["name"])
        try:
            wait_until(step_running, 60, "the host-side release step running")
        finally:
            proc.kill()
            proc.communicate(timeout=30)
    r, _ = watched(info["address"], kill_mid_release, count=50)
    wait_until(lambda: not step_running(), 60, "the release step ends by itself")
    served_throughout(r)
    r, _ = watched(info["address"], lambda: converged(info, host, tmp_path, data), count=50)
    served_throughout(r)
