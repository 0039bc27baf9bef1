"""The nginx role on a real sandbox host: scoped SSE config, rollback, one proven reload, TLS + HTTP/2."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.request

import pytest

from roles import nginx as nginx_role
from ssedeploy.facts import open_files_limit
from ssedeploy.nginx import parse_dump, walk
from ssedeploy.paths import NGINX_STATE
from ssedeploy.probe import probe
from ssedeploy.settings import Site
from ssedeploy.sse import read_stream

from .helpers import BIN, REPO, deploy_with, instances, pyinfra_deploy, run
from .polling import first_event, streaming, wait_until
from .streams import consecutive, crowd

RELOAD = nginx_role.reported(nginx_role.RELOAD)
RESTART = nginx_role.reported(nginx_role.RESTART)
DEFAULT_CHECK = nginx_role.reported(nginx_role.DEFAULT_CHECK)
REVISION_PORT = Site().revision_port  # the tests deploy the default
COMPRESSING_APP = REPO / "tests/e2e/apps/compressing-sse"


@pytest.fixture(scope="module")
def role(deployed):
    """The deployed host of one distro; put back to the default settings afterwards."""
    instance, target, host = deployed
    yield instance, target, host
    pyinfra_deploy(instance=instance)  # the other tests expect the default settings


def live_tree(host) -> list[dict]:
    return parse_dump(host.check_output("nginx -T 2>/dev/null"))


def locations(tree) -> dict[str, dict[str, list[str]]]:
    return {" ".join(d["args"]): {c["directive"]: c["args"] for c in d["block"]}
            for d, _ in walk(tree) if d["directive"] == "location"}


def etc_nginx_snapshot(host) -> str:
    return host.check_output(
        "cd /etc/nginx && find . -printf '%p %y %m %l\\n' | sort && "
        "find . -type f -print0 | sort -z | xargs -0 sha256sum"
    )


def workers(host) -> set[str]:
    return set(host.check_output("pgrep -P $(cat /run/nginx.pid)").split())


def master(host) -> str:
    return host.check_output("cat /run/nginx.pid")


def served_revision(host) -> str:
    return host.check_output(f"curl -s http://127.0.0.1:{REVISION_PORT}/ssedeploy/revision")


def test_sse_directives_are_scoped_in_the_live_config(role):
    instance, target, host = role
    tree = live_tree(host)
    locs = locations(tree)
    sse = locs["^~ /api/stream"]
    assert sse["proxy_buffering"] == ["off"] and sse["proxy_cache"] == ["off"] and sse["gzip"] == ["off"]
    assert sse["proxy_read_timeout"] == ["60s"] and sse["proxy_http_version"] == ["1.1"]
    buffering_off = [loc for loc, d in locs.items() if d.get("proxy_buffering") == ["off"]]
    assert buffering_off == ["^~ /api/stream"], "buffering is off outside the SSE location"
    assert not [d for d, _ in walk(tree) if d["directive"] == "proxy_ignore_headers"]
    conns = [d["args"] for d, _ in walk(tree) if d["directive"] == "worker_connections"]
    rlimit = [d["args"] for d, _ in walk(tree) if d["directive"] == "worker_rlimit_nofile"]
    hard = int(host.check_output(open_files_limit(1, "hard")))
    assert int(rlimit[0][0]) <= hard and int(conns[0][0]) * 2 <= int(rlimit[0][0])


def test_workers_really_got_the_file_limit(role):
    instance, target, host = role
    want = host.check_output("nginx -T 2>/dev/null | awk '/^worker_rlimit_nofile/ {print $2}'").rstrip(";")
    for pid in workers(host):
        soft = host.check_output(open_files_limit(pid, "soft"))
        assert soft == want, f"worker {pid} has {soft} open files, not {want}"


def test_a_broken_directive_is_rolled_back_and_the_stream_keeps_streaming(role, tmp_path):
    instance, target, host = role
    before, pid = etc_nginx_snapshot(host), master(host)
    result = deploy_with({"site": {"extra_directives": ["ssedeploy_bogus_directive on;"]}}, tmp_path, instance=instance)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert 'unknown directive "ssedeploy_bogus_directive"' in log  # nginx's own text
    assert "restored as it was" in log
    assert etc_nginx_snapshot(host) == before, "/etc/nginx changed after a failed deploy"
    assert master(host) == pid
    assert result.results.failed_at(target["name"]) == nginx_role.reported(nginx_role.TREE)
    assert result.results.planned(target["name"], RELOAD) == "not run"
    stream = read_stream(target["address"], 80, "/api/stream", duration=2.5)
    assert stream.status == 200 and len(stream.events) >= 2
    assert host.file(f"{NGINX_STATE}/failed/sites-available/ssedeploy.conf").contains(
        "ssedeploy_bogus_directive")


def test_a_settings_change_reloads_once_with_new_workers_and_revision(role, tmp_path):
    instance, target, host = role
    old_workers, old_master, old_rev = workers(host), master(host), served_revision(host)
    result = deploy_with({"nginx": {"worker_shutdown_timeout": 61}}, tmp_path, instance=instance, check=True)
    ops = result.results
    assert ops.of(target["name"], RELOAD) == "changed" and ops.of(target["name"], RESTART) == "no change"
    assert master(host) == old_master, "nginx was restarted, not reloaded"
    assert workers(host) - old_workers, "no new worker after the reload"
    new_rev = served_revision(host)
    assert new_rev != old_rev and new_rev == host.file(f"{NGINX_STATE}/revision").content_string.strip()
    assert "worker_shutdown_timeout 61s;" in host.check_output("nginx -T 2>/dev/null")

    again = deploy_with({"nginx": {"worker_shutdown_timeout": 61}}, tmp_path, instance=instance, check=True)
    assert again.results.of(target["name"], RELOAD) == "no change"
    assert served_revision(host) == new_rev


def test_a_changed_file_limit_restarts_nginx_instead_of_reloading(role, tmp_path):
    instance, target, host = role
    old_master = master(host)
    result = deploy_with({"nginx": {"expected_streams": 300}}, tmp_path, instance=instance, check=True)
    ops = result.results
    assert ops.of(target["name"], RESTART) == "changed" and ops.of(target["name"], RELOAD) == "no change"
    assert master(host) != old_master
    assert host.check_output("systemctl show -p LimitNOFILE --value nginx") == "2048"
    assert read_stream(target["address"], 80, "/api/stream", duration=1.5).status == 200


def test_backups_are_bounded_and_outside_any_include(role):
    instance, target, host = role
    backups = host.check_output(f"ls -1 {NGINX_STATE}/backups").split()
    assert 1 <= len(backups) <= 5
    assert not host.check_output("ls -A /etc/nginx | grep -i -E 'bak|backup|ssedeploy-new' || true")


def test_removing_an_sse_path_removes_its_location(role, tmp_path):
    instance, target, host = role
    # (a release checks every SSE path: the example app streams on /api/stream/<topic> too)
    deploy_with({"site": {"sse_paths": ["/api/stream", "/api/stream/news"]}}, tmp_path, instance=instance, check=True)
    assert "^~ /api/stream/news" in locations(live_tree(host))
    deploy_with({"site": {"sse_paths": ["/api/stream"]}}, tmp_path, instance=instance, check=True)
    assert "^~ /api/stream/news" not in locations(live_tree(host))


def test_nginx_killed_comes_back_by_itself_and_streams_resume(role):
    instance, target, host = role
    restarts = lambda: int(host.check_output("systemctl show -p NRestarts --value nginx"))  # noqa: E731
    before, old_master = restarts(), master(host)
    clients = crowd(10, target["address"], seconds=14)
    streaming(host, target["address"], 10)
    host.run_expect([0], "systemctl kill --signal=SIGKILL nginx")  # master and workers, as the OOM killer would
    killed_at = time.time()
    back = wait_until(lambda: first_event(target["address"]), 10, "nginx serving again after SIGKILL")
    results = clients.join()

    assert restarts() == before + 1 and master(host) != old_master, "systemd did not restart nginx"
    assert back.started_at - killed_at <= 5, f"serving again only {back.started_at - killed_at:.1f} s after the kill"
    for client in results:
        answered = [c for c in client.connections if c.result.status]
        assert {c.result.status for c in answered} == {200}, f"a client got {client.statuses}"
        assert consecutive(client.ids), f"ids lost or repeated: {client.ids}"
        cut = [c for c in answered if c.result.started_at < killed_at]
        resumed = [c for c in answered if c.result.started_at > killed_at and c.result.events]
        assert cut and cut[-1].result.ids, "a client had no event before the kill"
        assert resumed and resumed[0].last_event_id == int(cut[-1].result.ids[-1]), \
            "the client did not resume from its last id after the kill"


def test_an_app_that_compresses_when_asked_streams_through_nginx(role, tmp_path):
    """The app gzips for browsers (no flush per event); group data picks the app, host data turns its
    compression on: both apply only if the layers merge per field."""
    instance, target, host = role
    inventory = tmp_path / "compressing.py"
    inventory.write_text(
        "from ssedeploy.inventory import sandbox_hosts\n"
        f"hosts = ([(n, {{**d, 'app': {{'env': {{'COMPRESS': 'gzip'}}}}}}) for n, d in sandbox_hosts({instance!r})],\n"
        f"         {{'app': {{'source': {str(COMPRESSING_APP)!r}}}}})\n"
    )
    try:
        run(str(BIN / "pyinfra"), "-y", str(inventory), "deploy.py", instance=instance)
        port = instances(host).served_port
        direct = host.check_output("curl -s -o /dev/null -D - --max-time 2 -H 'Accept-Encoding: gzip, deflate, br' "
                                   f"http://127.0.0.1:{port}/api/stream || true")
        assert "content-encoding: gzip" in direct.lower(), f"the app did not compress when asked:\n{direct}"
        report = probe(f"http://{target['address']}/api/stream", duration=6, expect_interval=1)
        assert report.verdict == "streaming" and not report.content_encoding, report.reason
    finally:
        pyinfra_deploy(instance=instance)


OTHER_SITE = 'server {{ listen 80{flag}; server_name other.test; location / {{ return 200 "other\\n"; }} }}'


def put_other_site(host, default: bool) -> None:
    """A hand-made site that sorts before ssedeploy's in sites-enabled."""
    text = OTHER_SITE.format(flag=" default_server" if default else "")
    host.run_expect([0], f"printf '%s\\n' '{text}' > /etc/nginx/sites-available/aaa-other && "
                         "ln -sfn ../sites-available/aaa-other /etc/nginx/sites-enabled/aaa-other")


def get(url: str, host_header: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Host": host_header} if host_header else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def test_another_default_server_is_named_before_the_swap_and_the_site_stays_the_default(role, tmp_path):
    instance, target, host = role
    address = target["address"]
    try:
        put_other_site(host, default=True)
        before = etc_nginx_snapshot(host)
        backups = host.check_output(f"ls -1 {NGINX_STATE}/backups")
        refused = deploy_with({"nginx": {"worker_shutdown_timeout": 62}}, tmp_path, instance=instance)
        log = refused.stdout + refused.stderr
        assert refused.returncode != 0 and refused.results.of(target["name"], DEFAULT_CHECK) == "failed", log[-3000:]
        assert "/etc/nginx/sites-enabled/aaa-other: listen 80 default_server" in log
        assert "Remove default_server from that listen line" in log
        assert host.check_output(f"ls -1 {NGINX_STATE}/backups") == backups, \
            "the swap ran (it backs up /etc/nginx first) although another site claims the default server"
        assert etc_nginx_snapshot(host) == before
        assert read_stream(address, 80, "/api/stream", duration=1.5).events, "the site stopped streaming"

        put_other_site(host, default=False)
        deploy_with({"nginx": {"worker_shutdown_timeout": 62}}, tmp_path, instance=instance, check=True)
        assert get(f"http://{address}/other-page", "other.test") == "other\n"  # the other site still works
        assert "Server-Sent Events" in get(f"http://{address}/"), "the bare address is not ssedeploy's site"
        assert "Server-Sent Events" in get(f"http://{address}/", "unknown.test")
    finally:
        host.run_expect([0], "rm -f /etc/nginx/sites-enabled/aaa-other /etc/nginx/sites-available/aaa-other "
                             "&& systemctl reload nginx")


def test_tls_with_http2_and_redirects(role, tmp_path):
    instance, target, host = role
    deploy_with({"site": {"tls": {}}}, tmp_path, instance=instance, check=True)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((target["address"], 443), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=target["address"]) as tls:
            assert tls.selected_alpn_protocol() == "h2"
    redirect = read_stream(target["address"], 80, "/api/stream", duration=1)
    assert redirect.status == 301
    assert redirect.headers["location"] == f"https://{target['address']}/api/stream"
    stream = read_stream(target["address"], 443, "/api/stream", duration=2.5, tls=True, insecure=True)
    assert stream.status == 200 and len(stream.events) >= 2
    assert stream.first_block_ms < 1000
    h2 = probe(f"https://{target['address']}/api/stream", duration=4, http2=True, insecure=True, expect_interval=1)
    assert (h2.verdict, h2.http_version) == ("streaming", "2"), h2.reason
    followed = probe(f"http://{target['address']}/api/stream", duration=4, insecure=True)
    assert followed.verdict == "streaming" and followed.url.startswith("https://")
