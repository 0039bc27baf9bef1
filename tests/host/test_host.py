"""Is every host as declared? Packages, services, nginx's parsed config, the app unit, sockets, the live stream."""

from __future__ import annotations

import re

import pytest

from ssedeploy.check import lint
from ssedeploy.facts import open_files_limit
from ssedeploy.nginx import (LIVE, RESTART_SECONDS, SITE_LINK, SSE_UPSTREAM_HEADERS, default_listens,
                             foreign_default_servers, parse_dump)
from ssedeploy.instances import unit_name
from ssedeploy.node import DISTRO, is_line
from ssedeploy.paths import DISTRO_NODE_HOME, NODE_LINK, STATE, app_dir, env_path, node_root
from ssedeploy.probe import probe

from .conftest import sse_locations


def live_config(target) -> list[dict]:
    return parse_dump(target.host.check_output("nginx -T 2>/dev/null"))


def directive(tree, name):
    return [d["args"] for d in tree if d["directive"] == name]


def test_packages_and_services(target):
    h = target.host
    wanted = [*(["nginx"] if target.runs_nginx else []),
              *(["nodejs"] if target.runs_app and target.settings.app.node == DISTRO else [])]
    for package in wanted:
        assert h.package(package).is_installed, f"{target.name}: package {package} is not installed"
    if target.runs_nginx:
        assert h.service("nginx").is_running and h.service("nginx").is_enabled, f"{target.name}: nginx is not running"


def test_the_live_instance_runs_the_node_its_release_was_checked_with_as_app_node_says(target):
    target.needs_app()
    app, port = target.settings.app, target.live_port()
    unit = unit_name(app.name, port)
    release_node = target.host.file(f"{app_dir(target.settings)}/instances/{port}/{NODE_LINK}")
    assert release_node.is_symlink, f"{target.name}: the live release has no {NODE_LINK} (the Node it runs)"
    home = release_node.linked_to
    pid = target.host.check_output(f"systemctl show -p MainPID --value {unit}")
    running = target.host.check_output(f"readlink /proc/{pid}/exe")
    assert running == f"{home}/bin/node", f"{target.name}: {unit} runs {running}, its release links {home}"
    version = target.host.check_output(f"{home}/bin/node --version").removeprefix("v")
    if app.node == DISTRO:
        assert home == DISTRO_NODE_HOME, f"{target.name}: app.node is 'distro' but {unit} runs {home}"
    else:
        assert home.startswith(f"{node_root(target.settings)}/v"), f"{target.name}: {unit} runs Node {home}"
        want = app.node if not is_line(app.node) else f"{app.node}.x"
        assert version == app.node or (is_line(app.node) and version.split(".")[0] == app.node), \
            f"{target.name}: {unit} runs Node.js {version}, app.node asks for {want}"


def test_exactly_one_instance_receives_new_connections_and_passes_its_check(target):
    target.needs_app()
    app, found = target.settings.app, target.instances()
    port = target.live_port()
    if target.layout.topology.clustered:  # the proxies' side: tests/host/test_cluster.py
        assert port is not None and found.recorded_port == port, \
            f"{target.name}: no live instance recorded, expected one of {app.instance_ports}"
    else:
        assert port is not None and found.served_port == port, \
            f"{target.name}: nginx serves upstream port {found.served_port}, expected one of {app.instance_ports}"
        assert found.files_port == port, \
            f"{target.name}: nginx serves port {port} but its live files name {found.files_port} (a reload is owed)"
    unit = unit_name(app.name, port)
    assert target.host.service(unit).is_running, f"{target.name}: {unit}, the one nginx sends to, is not running"
    assert target.host.service(unit).is_enabled, f"{target.name}: {unit} would not start at boot"
    check = target.host.run(f"{app_dir(target.settings)}/instances/{port}/{NODE_LINK}/bin/node {STATE}/app-check.js {app.bind} {port} {app.health_path} 10 "
                            + " ".join(target.settings.site.sse_paths))
    assert check.rc == 0, f"{target.name}: {unit}: {check.stderr.strip()}"
    # The other instance (and ssedeploy's single unit of old, whose file the next deploy removes): stopped and
    # not started at boot; it may still run while its drain is pending, app.drain_seconds after a release.
    others = {unit_name(app.name, p): i for p, i in found.instances.items() if p != port}
    if found.legacy is not None:
        others[unit_name(app.name, None)] = found.legacy
    for other, inst in others.items():
        assert not inst.enabled, f"{target.name}: {other} would start at boot beside {unit}"
        assert not inst.running or inst.draining, \
            f"{target.name}: {other} still runs and nothing drains it (its drain is over)"


def test_nginx_config_is_valid(target):
    target.needs_nginx()
    result = target.host.run("nginx -t")
    assert result.rc == 0, f"{target.name}: nginx -t failed: {result.stderr}"


def test_sse_locations_stream_and_nothing_else_is_unbuffered(target):
    target.needs_nginx()
    tree, s = live_config(target), target.settings
    locations = sse_locations(tree)
    for path in s.site.sse_paths:
        loc = locations.get(f"^~ {path}")
        assert loc, f"{target.name}: no SSE location for {path}"
        want = {"proxy_buffering": [["off"]], "proxy_cache": [["off"]], "gzip": [["off"]],
                "proxy_read_timeout": [[f"{s.proxy_read_timeout}s"]], "proxy_http_version": [["1.1"]]}
        for name, value in want.items():
            assert loc.get(name) == value, f"{target.name}: {path}: {name} expected {value}, found {loc.get(name)}"
        headers = {a[0]: a[1] for a in loc.get("proxy_set_header", [])}
        assert headers == SSE_UPSTREAM_HEADERS, \
            f"{target.name}: {path}: proxy_set_header expected {SSE_UPSTREAM_HEADERS}, found {headers}"
    sse = {f"^~ {p}" for p in s.site.sse_paths}
    unbuffered = sorted(k for k, v in locations.items() if v.get("proxy_buffering") == [["off"]] and k not in sse)
    assert not unbuffered, f"{target.name}: buffering is off outside the SSE paths: {unbuffered}"


def test_nginx_comes_back_by_itself_after_a_crash(target):
    target.needs_nginx()
    show = dict(line.split("=", 1) for line in target.host.check_output(
        "systemctl show nginx -p Restart -p RestartUSec").splitlines())
    want = {"Restart": "on-failure", "RestartUSec": f"{RESTART_SECONDS}s"}
    assert show == want, f"{target.name}: nginx.service expected {want}, found {show}"


def test_site_is_the_default_server_when_it_answers_any_name(target):
    target.needs_nginx()
    s, dump = target.settings, target.host.check_output("nginx -T 2>/dev/null")
    if not s.site.default_server:
        pytest.skip(f"{target.name}: site.server_names has no '_': other sites may be the default")
    ports = {s.site.listen_port, *([s.site.tls.port] if s.site.tls else [])}
    claimed = {port for path, port, _ in default_listens(dump) if path == f"{LIVE}/{SITE_LINK}"}
    assert claimed == ports, f"{target.name}: server_name _: default_server expected on {ports}, found on {claimed}"
    others = foreign_default_servers(default_listens(dump), s)
    assert not others, f"{target.name}: another site is the default server: {others}"


def test_gixy_finds_nothing_in_the_live_config_but_unbuffered_sse_locations(target, tmp_path):
    target.needs_nginx()
    dump = tmp_path / "nginx-T.conf"
    dump.write_text(target.host.check_output("nginx -T 2>/dev/null") + "\n")
    problems = lint(dump, target.settings, dump=True)
    assert not problems, f"{target.name}: " + "; ".join(problems)


def test_x_accel_buffering_is_never_ignored(target):
    target.needs_nginx()
    dump = target.host.check_output("nginx -T 2>/dev/null")
    ignored = [line.strip() for line in dump.splitlines()
               if line.strip().startswith("proxy_ignore_headers") and "X-Accel-Buffering" in line]
    assert not ignored, f"{target.name}: the app's X-Accel-Buffering is ignored: {ignored}"


def test_sizes_and_timeouts_are_as_derived(target):
    target.needs_nginx()
    tree, lim = live_config(target), target.limits
    events = next(d["block"] for d in tree if d["directive"] == "events")
    found = {
        "worker_connections": directive(events, "worker_connections"),
        "worker_rlimit_nofile": directive(tree, "worker_rlimit_nofile"),
        "worker_shutdown_timeout": directive(tree, "worker_shutdown_timeout"),
    }
    want = {
        "worker_connections": [[str(lim.worker_connections)]],
        "worker_rlimit_nofile": [[str(lim.worker_rlimit_nofile)]],
        "worker_shutdown_timeout": [[f"{target.settings.nginx.worker_shutdown_timeout}s"]],
    }
    assert found == want, f"{target.name}: expected {want}, found {found}"


def test_workers_have_the_file_limit(target):
    target.needs_nginx()
    want = str(target.limits.worker_rlimit_nofile)
    workers = target.host.check_output("pgrep -P $(cat /run/nginx.pid)").split()
    for pid in workers:
        soft = target.host.check_output(open_files_limit(pid, "soft"))
        assert soft == want, f"{target.name}: nginx worker {pid} may open {soft} files, expected {want}"


def test_app_unit_is_verified_and_hardened(target):
    target.needs_app()
    name = unit_name(target.settings.app.name, target.live_port())
    # The live instance, not the bare template: its ExecStart is the Node its release links, which only an
    # instance with a release has.
    verify = target.host.run(f"systemd-analyze verify {name}")
    assert verify.rc == 0 and not (verify.stdout + verify.stderr).strip(), \
        f"{target.name}: systemd-analyze verify {name}: {verify.stdout}{verify.stderr}"
    security = target.host.check_output(f"systemd-analyze security {name} --no-pager")
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security).group(1))
    assert exposure <= 2.0, f"{target.name}: {name} exposure expected <= 2.0, found {exposure}"


def test_app_listens_on_its_bind_address_only(target):
    target.needs_app()
    port, bind = target.live_port(), target.settings.app.bind
    want = [f"tcp://{bind}:{port}"]
    found = sorted(s for s in target.host.socket.get_listening_sockets() if s.endswith(f":{port}"))
    assert found == want, f"{target.name}: app port {port}: expected {want} only, found {found}"


def test_env_file_is_private(target):
    target.needs_app()
    app = target.settings.app
    env = target.host.file(env_path(target.settings))
    found = (env.user, env.group, oct(env.mode))
    want = ("root", app.system_user, oct(0o640))
    assert env.exists and found[:2] == want[:2] and env.mode & 0o037 == 0, \
        f"{target.name}: {env_path(target.settings)} expected {want} or stricter, found {found}"


def test_every_sse_path_streams_through_nginx(target):
    target.needs_nginx()
    s = target.settings
    scheme, port = ("https", s.site.tls.port) if s.site.tls else ("http", s.site.listen_port)
    name = next((n for n in s.site.server_names if n not in ("_", "*") and "*" not in n), target.address)
    for path in s.site.sse_paths:
        url = f"{scheme}://{name}:{port}{path}"
        report = probe(url, duration=8, resolve={name: target.address}, insecure=True)
        assert report.verdict == "streaming", f"{target.name}: probe {url}: {report.verdict}: {report.reason}"
