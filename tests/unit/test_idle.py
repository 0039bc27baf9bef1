"""What nginx allocates per stream (nginx.sse_proxy_buffer_size, nginx.request_pool_size), the load client's
heartbeat mode (bench/sse-load.js --heartbeat) and bench/idle.py's own arithmetic."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ssedeploy import nginx
from ssedeploy.settings import SettingsError, parse
from tests.unit.test_example_app import NODE, needs_node, start_app, stop_app
from tests.unit.test_render import CLUSTER_SERVERS, LIMITS, args_of, parsed, public_server

CLIENT = Path(__file__).resolve().parents[2] / "bench" / "sse-load.js"


def location_blocks(tree):
    """(args, block) of each location of the server that proxies to the app."""
    return [(d["args"], d["block"]) for d in public_server(tree) if d["directive"] == "location"]


def sse_locations(tree):
    return [block for args, block in location_blocks(tree) if args[0] == "^~"]


def test_defaults_name_the_stream_buffer_and_a_small_request_pool(tmp_path):
    tree = parsed(tmp_path, {"site": {"sse_paths": ["/api/stream", "/events"]}})
    assert args_of(public_server(tree), "request_pool_size") == [["1k"]]
    assert len(sse_locations(tree)) == 2
    for block in sse_locations(tree):
        assert args_of(block, "proxy_buffer_size") == [["4k"]]
    # `location /` (pages, assets) keeps nginx's own buffers.
    plain = [block for args, block in location_blocks(tree) if args == ["/"]]
    assert plain and args_of(plain[0], "proxy_buffer_size") == []


def test_none_leaves_nginx_its_own_defaults(tmp_path):
    tree = parsed(tmp_path, {"nginx": {"sse_proxy_buffer_size": None, "request_pool_size": None}})
    assert args_of(public_server(tree), "request_pool_size") == []
    assert all(args_of(block, "proxy_buffer_size") == [] for block in sse_locations(tree))


def test_sizes_follow_settings(tmp_path):
    tree = parsed(tmp_path, {"nginx": {"sse_proxy_buffer_size": "2k", "request_pool_size": "512"}})
    assert args_of(public_server(tree), "request_pool_size") == [["512"]]
    assert [args_of(block, "proxy_buffer_size") for block in sse_locations(tree)] == [[["2k"]]]


@pytest.mark.parametrize("field, value", [
    ("sse_proxy_buffer_size", "256"), ("sse_proxy_buffer_size", "2m"), ("sse_proxy_buffer_size", "2 k"),
    ("sse_proxy_buffer_size", "4k;"), ("request_pool_size", "100"), ("request_pool_size", "1000"),
    ("request_pool_size", "128k"), ("request_pool_size", "0"),
])
def test_bad_sizes_are_refused(field, value):
    with pytest.raises(SettingsError, match=f"nginx.{field}"):
        parse({"nginx": {field: value}})


@pytest.mark.parametrize("data", [{}, {"nginx": {"sse_proxy_buffer_size": "1k", "request_pool_size": "256"}},
                                  {"nginx": {"sse_proxy_buffer_size": None, "request_pool_size": None}}])
def test_nginx_and_gixy_accept_the_sizes(tmp_path, data):
    from ssedeploy.check import lint, local_nginx_test, write_prefix

    settings = parse(data)
    files, _ = nginx.render_tree(settings, "1.22.1", LIMITS, servers=CLUSTER_SERVERS)
    conf = write_prefix(tmp_path, settings, files)
    problems, skipped = local_nginx_test(conf, "1.22.1")
    assert problems == [] and skipped is None
    assert lint(conf, settings) == []


def load(port: int, *args) -> dict:
    done = subprocess.run([NODE, str(CLIENT), "--url", f"http://127.0.0.1:{port}/api/stream", *map(str, args)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_node
def test_heartbeat_mode_counts_streams_on_time_from_their_pings():
    proc, port = start_app(INTERVAL_MS="3600000", HEARTBEAT_MS="300")
    try:
        # Pings every 0.3 s, judged against a 1 s interval (+ 1 s): a busy machine's late ping is not a failure.
        out = load(port, "--streams", 6, "--rate", 100, "--hold", 3, "--heartbeat", 1,
                   "--local-address", "127.0.0.2,127.0.0.3")
    finally:
        stop_app(proc)
    assert out["healthy"] == out["heartbeat"]["on_time"] == 6 and out["errors"] == {}
    assert out["local_addresses"] == ["127.0.0.2", "127.0.0.3"]
    assert out["heartbeat"]["on_time_limit_s"] == 2 and 250 <= out["heartbeat"]["max_gap_ms"] <= 2000
    assert all(s["on_time"] and s["pings"] >= 5 and s["events"] == 0 for s in out["per_stream"])
    assert sum(out["heartbeat"]["gap_hist_ms"].values()) >= 6 * 5
    assert out["client"]["cpu_pct_hold"] is not None and out["client"]["max_rss_bytes"] > 0


@needs_node
def test_heartbeat_mode_flags_a_stream_whose_pings_come_late():
    proc, port = start_app(INTERVAL_MS="3600000", HEARTBEAT_MS="1700")
    try:
        out = load(port, "--streams", 2, "--rate", 100, "--hold", 2, "--heartbeat", 0.5)
    finally:
        stop_app(proc)
    assert out["heartbeat"]["on_time"] == 0 and out["healthy"] == 0
    assert out["errors"] == {"heartbeat gap over 1.5 s": 2}
    assert all(not s["on_time"] and s["max_ping_gap_ms"] > 1500 for s in out["per_stream"])


@needs_node
def test_without_heartbeat_the_capacity_output_is_unchanged():
    proc, port = start_app(INTERVAL_MS="200", HEARTBEAT_MS="15000")
    try:
        out = load(port, "--streams", 3, "--rate", 100, "--hold", 1)
    finally:
        stop_app(proc)
    assert "heartbeat" not in out and out["healthy"] == 3
    for key in ("url", "streams", "rate", "hold_s", "ramp_s", "held_s", "open_at_end", "events", "latency_ms",
                "errors", "units", "client", "per_stream"):
        assert key in out
    assert set(out["per_stream"][0]) == {"ok", "status", "events", "max_gap_ms", "error"}
    assert out["client"]["cpu_pct"] is not None


def test_idle_layout_and_inventory():
    from bench import idle

    proxies, apps = idle.layout(50_000)
    assert apps * idle.APP_HOST_STREAMS >= 50_000
    assert proxies >= 1 and idle.layout(2000) == (1, 1)
    text = idle.inventory_text(2, idle.CONFIGS["before"][1])
    assert "proxies = " in text and "apps = " in text and "'sse_proxy_buffer_size': None" in text
    assert "'expected_streams': 50000" in text and "'INTERVAL_MS': '3600000'" in text
    single = idle.inventory_text(1, {}, single=True)
    assert "hosts = " in single and "proxies" not in single
    compile(text, "inventory", "exec")
    compile(single, "inventory", "exec")


def test_idle_report_prints_targets():
    from bench import idle

    def row(config, on_time, nginx_kib):
        return {"config": config, "label": idle.CONFIGS[config][0], "streams": 1000, "on_time": on_time,
                "on_time_pct": on_time / 10, "max_gap_s": 5.1, "errors": {}, "nginx_rss_kib": nginx_kib,
                "nginx_anon_kib": nginx_kib, "nginx_cgroup_kib": None, "app_rss_kib": 20.0, "app_cgroup_kib": None,
                "nginx_rss_before_mib": 50.0, "nginx_rss_held_mib": 60.0, "hold_s": 20, "clients": 1,
                "app_hosts": [{"streams": 1000, "rss_before_mib": 50.0, "rss_held_mib": 70.0}],
                "client_cpu_pct_hold": [3.0], "client_max_rss_mib": 100.0, "loadavg_max": 1.0, "gap_hist_ms": {}}
    shape = {"single": True, "proxies": 1, "apps": 1, "workers": 8, "worker_connections": 10000,
             "port_range_old": "32768 60999", "port_range_restored": True}
    markdown, data = idle.report([row("before", 1000, 17.5), row("after", 999, 7.9)], {"date": "now"}, shape)
    assert "**PASS (lowest 99.900 %, ssedeploy defaults (after))**" in markdown
    assert "ssedeploy defaults (after): **PASS (7.9 KiB)**" in markdown
    assert "nginx defaults (before): **" not in markdown  # before is the baseline, not judged
    assert "not exposed" in markdown and "restored" in markdown
