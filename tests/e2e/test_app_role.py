"""The app role with the real Next.js 16 build (`make test` builds it first) on its own sandbox host."""

from __future__ import annotations

import re
import threading
import time

import pytest

from ssedeploy.paths import app_dir, env_path, node_root
from ssedeploy.settings import parse as _parse
from ssedeploy.sse import read_stream

from ..nextbuilds import built_project
from .helpers import BIN, REPO, booted, deploy_with, host_of, live_app_port, live_unit, main_pid, run
from .polling import streaming
from .releasing import release_op

APP, ENV = app_dir(_parse({})), env_path(_parse({}))  # the default app, as deployed here
NAME = "e2e-next"
NEXT = str(REPO / "examples" / "nextjs-sse")
SECRET = "s3cr3t-value-never-printed"
BROWSER = {"Accept-Encoding": "gzip, deflate, br"}

def settings(**app) -> dict:
    return {"app": {"source": NEXT, "env": {"GREETING": "hello"}, "secret_env": ["API_TOKEN"], **app}}


@pytest.fixture(scope="module")
def nxt(tmp_path_factory):
    assert (REPO / "examples/nextjs-sse/.next/standalone/server.js").exists(), "run `make nextjs` first"
    tmp = tmp_path_factory.mktemp("next")
    with booted(NAME) as (up, hosts):
        assert up.returncode == 0, up.stdout + up.stderr
        info = hosts[0]
        first = deploy_with(settings(), tmp, instance=NAME, check=True, env={"API_TOKEN": SECRET})
        yield {"info": info, "host": host_of(info), "tmp": tmp, "first": first}


def deploy(nxt, check=True, **app):
    return deploy_with(settings(**app), nxt["tmp"], instance=NAME, check=check, env={"API_TOKEN": SECRET})


def test_next_build_streams_through_nginx_like_a_browser(nxt):
    stream = read_stream(nxt["info"]["address"], 80, "/api/stream", duration=6.5, headers=BROWSER)
    assert stream.status == 200 and "content-encoding" not in stream.headers
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.first_block_ms < 1000 and stream.blocks[0].retry == "5000"
    assert len(stream.events) >= 5 and all(750 <= g <= 1250 for g in stream.gaps_ms), stream.gaps_ms
    assert "next-server" in nxt["host"].check_output("ps -o comm= -p %s", main_pid(nxt["host"]))


def test_the_next_build_runs_on_an_official_node_build_from_the_sandbox_mirror(nxt):
    host = nxt["host"]
    exe = host.check_output(f"readlink /proc/{main_pid(host)}/exe")
    assert exe.startswith(f"{node_root(_parse({}))}/v") and exe.endswith("-linux-x64/bin/node"), exe
    assert host.check_output(f"{exe} --version").startswith(f"v{_parse({}).app.node}.")


def test_app_headers_at_the_upstream_port(nxt):
    port = live_app_port(nxt["host"])
    out = nxt["host"].check_output(f"curl -s -m 2 -D - -o /dev/null http://127.0.0.1:{port}/api/stream || true")
    assert re.search(r"(?im)^x-accel-buffering: no", out)
    assert re.search(r"(?im)^cache-control: no-cache, no-transform", out)
    assert not re.search(r"(?im)^content-length:", out)


def test_app_listens_on_loopback_only(nxt):
    port = live_app_port(nxt["host"])
    sockets = [s for s in nxt["host"].socket.get_listening_sockets() if s.endswith(f":{port}")]
    assert sockets == [f"tcp://127.0.0.1:{port}"]


def test_env_file_is_private_and_secrets_stay_out_of_sight(nxt):
    host = nxt["host"]
    env = host.file(ENV)
    assert (env.user, env.group, env.mode) == ("root", "sseapp", 0o640)
    assert f'API_TOKEN="{SECRET}"' in env.content_string and 'GREETING="hello"' in env.content_string
    unit = host.file("/etc/systemd/system/sseapp@.service").content_string
    assert SECRET not in unit and f"EnvironmentFile={ENV}" in unit
    assert SECRET not in nxt["first"].stdout + nxt["first"].stderr
    proc = host.check_output("cat /proc/%s/environ | tr '\\0' '\\n'", main_pid(host))
    assert f"API_TOKEN={SECRET}" in proc


@pytest.mark.parametrize("sse_path, says", [
    ("/api/frozen", "app/api/frozen/route.js was prerendered at build time (/api/frozen)"),
    ("/api/edge", "app/api/edge/route.js runs on the Edge runtime"),
    ("/api/strem", "no route handler of the build serves it"),
])
def test_a_next_build_that_would_not_stream_is_refused_before_any_host_changes(nxt, tmp_path, sse_path, says):
    """Builds of tests/fixtures/nextbuild (Next.js 16: one route per case), each on an SSE path."""
    host, name = nxt["host"], nxt["info"]["name"]
    project = built_project(tmp_path)
    before = (live_unit(host), main_pid(host), host.check_output(f"readlink {APP}/current"))
    ran = deploy_with({**settings(source=str(project)), "site": {"sse_paths": [sse_path]}}, nxt["tmp"],
                      instance=NAME, env={"API_TOKEN": SECRET})
    log = ran.stdout + ran.stderr
    assert ran.returncode == 1 and ran.results.ran() == [], log[-3000:]
    assert f"host {name}: site.sse_paths.0 = '{sse_path}': {says}" in log, log[-3000:]
    fix = {"/api/frozen": "export const dynamic = 'force-dynamic'", "/api/edge": "export const runtime = 'nodejs'",
           "/api/strem": "a typo in site.sse_paths, or a missing route"}[sse_path]
    assert fix in log
    assert (live_unit(host), main_pid(host), host.check_output(f"readlink {APP}/current")) == before


def test_missing_secret_fails_before_any_operation(nxt):
    result = deploy_with(settings(secret_env=["API_TOKEN", "NOT_SET_ANYWHERE"]), nxt["tmp"], instance=NAME,
                         env={"API_TOKEN": SECRET})
    log = result.stdout + result.stderr
    assert result.returncode == 1 and "app.secret_env: NOT_SET_ANYWHERE has no value" in log
    assert result.results.ran() == []


def test_unit_verifies_clean_and_is_hardened(nxt):
    host = nxt["host"]
    unit = live_unit(host)
    verify = host.run(f"systemd-analyze verify {unit}")  # an instance: its ExecStart is its release's Node
    assert verify.rc == 0 and verify.stdout + verify.stderr == ""
    security = host.check_output(f"systemd-analyze security {unit} --no-pager")
    exposure = float(re.search(rf"Overall exposure level for {unit}: ([\d.]+)", security).group(1))
    assert exposure <= 2.0, security
    nofile = host.check_output(f"systemctl show -p LimitNOFILE --value {unit}")
    assert nofile == host.check_output("systemctl show -p LimitNOFILE --value nginx")


def test_changing_an_env_var_releases_on_the_other_instance_and_a_rerun_changes_nothing(nxt):
    host, name = nxt["host"], nxt["info"]["name"]
    before_unit, before_pid = live_unit(host), main_pid(host)
    changed = deploy(nxt, env={"GREETING": "hi again"})
    assert changed.results.of(name, release_op(changed, name)) == "changed"
    after_unit = live_unit(host)
    assert after_unit != before_unit and main_pid(host) != before_pid
    assert 'GREETING=hi again' in host.check_output("tr '\\0' '\\n' < /proc/%s/environ", main_pid(host))
    again = deploy(nxt, env={"GREETING": "hi again"})
    log = again.stdout + again.stderr
    assert again.results.changed() == [], log
    assert live_unit(host) == after_unit
    deploy(nxt)  # back to the module's settings


def resuming_client(address: str, seconds: float, out: dict) -> None:
    """An EventSource-like client: reconnects with Last-Event-ID whenever the stream ends."""
    last, deadline = None, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        r = read_stream(address, 80, "/api/stream", duration=left, headers=BROWSER, last_event_id=last)
        out["statuses"].append(r.status)
        out["ids"] += [int(i) for i in r.ids]
        if r.status == 200 and not r.events and r.blocks and r.blocks[0].retry and r.closed_by_server:
            out["fallbacks"] += 1  # nginx's @sse_retry answer while the app was down
        last = r.ids[-1] if r.ids else last
        time.sleep(0.2)


def test_a_crash_restart_while_streaming_is_fast_never_5xx_and_loses_no_event(nxt):
    """The live instance restarted in place (a crash, an operator): nginx's `retry:` answer bridges it."""
    out = {"statuses": [], "ids": [], "fallbacks": 0}
    client = threading.Thread(target=resuming_client, args=(nxt["info"]["address"], 10, out))
    client.start()
    streaming(nxt["host"], nxt["info"]["address"], 1)
    started = time.monotonic()
    nxt["host"].check_output(f"systemctl restart {live_unit(nxt['host'])}")
    took = time.monotonic() - started
    client.join()
    assert took < 5, f"systemctl restart took {took:.1f} s with a client streaming (stop timeout 15 s)"
    assert out["statuses"] and set(out["statuses"]) == {200}, out["statuses"]
    assert len(out["statuses"]) >= 2, "the stream was never cut by the restart"
    assert out["fallbacks"] >= 1, "no 200 `retry:` answer while the app was down"
    ids = out["ids"]
    assert ids == list(range(ids[0], ids[0] + len(ids))), f"gap or repeat in event ids: {ids}"


def test_a_release_that_fails_its_check_never_goes_live(nxt, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "server.js").write_text("process.exit(1)\n")
    host = nxt["host"]
    live, unit, pid = host.check_output(f"readlink {APP}/current"), live_unit(host), main_pid(host)
    result = deploy_with({"app": {"source": str(broken)}}, nxt["tmp"], instance=NAME, env={"API_TOKEN": SECRET})
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"[{nxt['info']['name']}]" in log and "failed its check on port" in log and "it got no traffic" in log
    assert host.check_output(f"readlink {APP}/current") == live
    assert (live_unit(host), main_pid(host)) == (unit, pid), "the live instance was touched"
    stream = read_stream(nxt["info"]["address"], 80, "/api/stream", duration=2.5)
    assert stream.status == 200 and stream.events


def test_rollback_command_goes_through_the_idle_instance(nxt):
    host = nxt["host"]
    simple = deploy(nxt, source=str(REPO / "examples" / "sse-app"))
    assert simple.returncode == 0
    # The zero-dependency app keeps node's command line (Next.js's server retitles itself next-server).
    assert host.check_output("ps -o args= -p %s", main_pid(host)).endswith("/bin/node server.js")
    unit = live_unit(host)
    live, previous = host.check_output(f"readlink {APP}/current"), host.check_output(f"readlink {APP}/previous")
    inventory = nxt["tmp"] / "rollback_inv.py"
    inventory.write_text(
        "from ssedeploy.inventory import sandbox_hosts\n"
        f"hosts = [(n, dict(d, app={{'source': {NEXT!r}}})) for n, d in sandbox_hosts({NAME!r})]\n"
    )
    result = run(str(BIN / "ssedeploy"), "rollback", str(inventory), instance=NAME)
    assert result.returncode == 0
    assert host.check_output(f"readlink {APP}/current") == previous
    assert host.check_output(f"readlink {APP}/previous") == live
    assert live_unit(host) != unit, "the rollback restarted the live instance in place"
    assert "next-server" in host.check_output("ps -o comm= -p %s", main_pid(host))
    assert read_stream(nxt["info"]["address"], 80, "/api/stream", duration=2.5).events
