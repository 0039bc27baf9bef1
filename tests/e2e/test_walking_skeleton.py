"""The walking skeleton on a real sandbox host: deploy, check state over SSH, stream through nginx."""

from __future__ import annotations

import json
import subprocess

import paramiko
import pytest

from roles import app as app_role
from roles import nginx as nginx_role
from ssedeploy.paths import unit_path
from ssedeploy.settings import parse
from ssedeploy.sse import read_stream
from ssedeploy.testinfra_hosts import get_host

from .helpers import BIN, INSTANCE, live_app_port, live_unit, pyinfra, pyinfra_deploy, run

BROWSER = {"Accept-Encoding": "gzip, deflate, br"}


def target_settings():
    return parse({})  # inventories/sandbox.py sets no settings: the defaults


def test_first_deploy_put_nginx_and_the_app_live(first_deploy, target):
    # (the fixture already failed the session if pyinfra exited non-zero: check what the run did)
    results, name = first_deploy.results, target["name"]
    assert results.failed_at(name) is None
    assert results.of(name, nginx_role.reported(nginx_role.TREE)) == "changed"
    assert results.of(name, nginx_role.reported(nginx_role.RESTART)) == "changed"  # a fresh nginx package
    assert results.of(name, nginx_role.reported(nginx_role.REVISION_CHECK)) == "changed"
    assert results.of(name, app_role.reported(f"{app_role.UNIT} {unit_path(target_settings())}")) == "changed"


def test_nginx_and_app_are_running_and_enabled(host):
    for name in ("nginx", live_unit(host)):
        service = host.service(name)
        assert service.is_running, f"{name} is not running"
        assert service.is_enabled, f"{name} is not enabled"


def test_nginx_config_is_valid(host):
    result = host.run("nginx -t")
    assert result.rc == 0, result.stderr


def test_only_ssedeploy_site_is_enabled(host):
    assert host.file("/etc/nginx/sites-enabled/ssedeploy.conf").is_symlink
    assert not host.file("/etc/nginx/sites-enabled/default").exists


def test_app_listens_on_loopback_only(host):
    port = live_app_port(host)
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    app_sockets = [s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")]
    assert app_sockets == [f"tcp://127.0.0.1:{port}"]


def test_app_runs_as_its_own_user_on_an_official_node_build(host):
    assert host.user("sseapp").exists
    # (by its command line: Node 24 names its main thread, so its comm, MainThread)
    assert [p for p in host.process.filter(user="sseapp") if "/bin/node " in p.args], "no node process runs as sseapp"
    assert not host.package("nodejs").is_installed, "the default is an official build, not the distro's Node"


@pytest.mark.parametrize("port", target_settings().app.instance_ports)
def test_app_is_not_reachable_from_outside(target, port):
    stream = read_stream(target["address"], port, duration=2, connect_timeout=2)
    assert stream.status == 0 and stream.error, f"the app port {port} answered from outside the host"


def test_events_stream_through_nginx_like_a_browser(target):
    stream = read_stream(target["address"], 80, "/api/stream", duration=6.5, headers=BROWSER)
    assert stream.error is None
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in stream.headers, "nginx compressed the stream"
    assert stream.headers.get("transfer-encoding") == "chunked"
    assert stream.first_block_ms is not None and stream.first_block_ms < 1000
    first = stream.blocks[0]
    assert first.retry is not None and "connected" in first.comments
    events = stream.events
    assert len(events) >= 5, f"only {len(events)} events in 6.5 s"
    assert all(750 <= gap <= 1250 for gap in stream.gaps_ms), f"gaps not ~1 s apart: {stream.gaps_ms}"
    data = [json.loads(e.data) for e in events]
    assert [d["n"] for d in data] == [int(e.event_id) for e in events]


def test_resume_with_last_event_id_through_nginx(target):
    stream = read_stream(target["address"], 80, "/api/stream", duration=2.5, headers=BROWSER,
                         last_event_id="41")
    assert stream.status == 200
    assert stream.ids[:2] == ["42", "43"]


def test_default_location_is_buffered_normally(target):
    page = read_stream(target["address"], 80, "/", duration=2, headers={"Accept": "text/html"})
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")


def test_second_deploy_changes_nothing(first_deploy):
    assert first_deploy.results.changed(), "the first deploy changed nothing?"
    again = pyinfra_deploy().results
    assert again.hosts and all(again.operations(name) for name in again.hosts), "the second run ran no operation"
    results = {(name, op["name"]): again.of(name, op["name"]) for name in again.hosts for op in again.operations(name)}
    changed = {key: result for key, result in results.items() if result != "no change"}
    assert changed == {}, f"the second run changed something or failed: {changed}"


def test_wrong_host_key_is_rejected(target, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    keyline = (tmp_path / "k.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{target['address']} {' '.join(keyline)}\n")
    impostor = get_host(target["address"], user=target["ssh_user"], key=target["ssh_key"], known_hosts=str(known))
    with pytest.raises(paramiko.BadHostKeyException):
        impostor.run("true")


BAD = [
    ({"site": {"sse_paths": ["/api/stream;evil"]}}, "site.sse_paths.0 = '/api/stream;evil'"),
    ({"sitee": {"sse_paths": ["/x"]}}, "sitee = {'sse_paths': ['/x']}: not a key ssedeploy reads; did you mean `site`?"),
    ({"app": {"port": 80}}, "app.port = 80: nginx listens on 80 (site.listen_port)"),
    ({"app": {"user": "root"}}, "app.user = 'root': the app must not run as root"),
    ({"site": {"sse_paths": ["/api/stream", "/api/stream"]}}, "site.sse_paths.1 = '/api/stream': is listed twice"),
    ({"site": {"sse_paths": ["/"]}}, "site.sse_paths.0 = '/': cannot be the whole site"),
]


@pytest.mark.parametrize("bad,said", BAD, ids=[said.split(":")[0] for _, said in BAD])
def test_bad_settings_stop_the_run_before_any_operation(target, tmp_path, bad, said):
    inventory = tmp_path / "bad.py"
    inventory.write_text(
        "from ssedeploy.inventory import sandbox_hosts\n"
        f"name, data = sandbox_hosts({INSTANCE!r})[0]\n"
        f"bad = [(name, dict(data, **{bad!r}))]\n"
    )
    result = pyinfra("-y", str(inventory), "deploy.py", check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 1
    assert f"host {target['name']}: {said}" in log, log[-2000:]
    assert result.results.ran() == []
    assert read_stream(target["address"], 80, "/api/stream", duration=1.5).status == 200


def test_probe_says_streaming_through_nginx_and_resume_continues(target):
    result = run(str(BIN / "ssedeploy"), "probe", f"http://{target['address']}/api/stream",
                 "--expect-interval", "1", "--resume", "--json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0, report
    assert report["verdict"] == "streaming" and report["first_block_ms"] < 1000
    assert report["resume"]["ok"] is True
