"""`ssedeploy check` offline: settings, rendering, gixy-next, local nginx -t."""

import hashlib
import shutil

import pytest

from ssedeploy import nginx
from ssedeploy.check import OFFLINE_CPUS, lint
from ssedeploy.cli import main
from ssedeploy.settings import OLDEST_NGINX, parse

from ..nextbuilds import built_project

NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")


def run_check(tmp_path, capsys, source: str, *extra: str) -> tuple[int, str]:
    inventory = tmp_path / "inv.py"
    inventory.write_text(source)
    status = main(["check", str(inventory), *extra])
    return status, capsys.readouterr().out


def test_example_prod_inventory_passes(capsys):
    assert main(["check", "inventories/prod.py"]) == 0
    out = capsys.readouterr().out
    assert "host web-1: ok: nginx 1.18.0" in out and "host web-2: ok" in out
    if NGINX:
        assert "nginx -t ok" in out


def test_sse_over_plain_http_only_is_warned_about_naming_the_six_connection_limit(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, 'h = [("web-1", {}), ("web-2", {"site": {"tls": {}}})]\n')
    assert status == 0  # a warning, not a failure
    warned = [line for line in out.splitlines() if "plain HTTP only" in line]
    assert len(warned) == 1 and warned[0].startswith("host web-1: warning: the SSE paths (/api/stream)")
    assert "6 HTTP/1.1 connections per origin" in warned[0] and "site.tls" in warned[0]


def test_hosts_asking_the_ca_for_the_same_name_are_warned_about(tmp_path, capsys):
    tls = '{"mode": "acme", "email": "ops@example.org"}'
    status, out = run_check(tmp_path, capsys, (
        f'h = [("web-1", {{"site": {{"server_names": ["example.org", "web-1.example.org"], "tls": {tls}}}}}),\n'
        f'     ("web-2", {{"site": {{"server_names": ["Example.org", "web-2.example.org"], "tls": {tls}}}}})]\n'))
    warned = [line for line in out.splitlines() if "each ask the ACME CA" in line]
    assert warned == [warned[0]] and warned[0].startswith("warning: hosts web-1, web-2 each ask the ACME CA for "
                                                          "example.org: HTTP-01 reaches only the host")


def test_bad_setting_fails_naming_host_field_and_value(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, 'h = [("web-9", {"site": {"sse_paths": ["/a;b"]}})]\n')
    assert status == 1
    assert "host web-9: site.sse_paths.0 = '/a;b'" in out


def test_buffering_off_outside_an_sse_location_is_a_lint_failure(tmp_path, capsys):
    src = 'h = [("web-1", {"site": {"extra_directives": ["proxy_buffering off;"]}})]\n'
    status, out = run_check(tmp_path, capsys, src)
    assert status == 1
    assert "gixy proxy_buffering_off" in out and "FAILED" in out


@pytest.mark.skipif(not NGINX, reason="make deps installs nginx for this")
def test_unknown_directive_fails_local_nginx_t(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, 'h = [("web-1", {"site": {"extra_directives": ["bogus_x on;"]}})]\n')
    assert status == 1
    assert 'unknown directive "bogus_x"' in out


def test_tls_tree_checks_and_limit_selects_hosts(tmp_path, capsys):
    src = ('a = [("tls-1", {"site": {"tls": {}}})]\n'
           'b = [("bad-1", {"app": {"port": 0}})]\n')
    status, out = run_check(tmp_path, capsys, src, "--limit", "tls-1")
    assert status == 0 and "host tls-1: ok" in out and "bad-1" not in out


def test_newer_version_than_local_nginx_is_skipped_with_a_message(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, 'h = [("w", {"nginx": {"version": "9.0.0"}})]\n')
    assert status == 0
    assert "nginx -t skipped" in out


def test_lint_reads_an_nginx_T_dump_and_flags_buffering_off_outside_sse_locations(tmp_path):
    settings = parse({})
    files, _ = nginx.render_tree(settings, OLDEST_NGINX, nginx.limits(settings, 2, None))
    paths = {nginx.SITE: nginx.SITE_LINK}  # nginx -T names a file by the path it was included as
    dump = "".join(f"# configuration file /etc/nginx/{paths.get(rel, rel)}:\n{text}\n" for rel, text in files.items())
    path = tmp_path / "nginx-T.conf"
    path.write_text(dump)
    assert lint(path, settings, dump=True) == []
    path.write_text(dump.replace("    location / {\n", "    location / {\n        proxy_buffering off;\n"))
    assert [p for p in lint(path, settings, dump=True) if "proxy_buffering_off" in p]
    path.write_text(dump.split("# configuration file /etc/nginx/sites-enabled")[0])  # the site is missing
    assert lint(path, settings, dump=True) == ["gixy saw 0 of 1 SSE locations: it did not read the whole config"]


def app_with_engines(tmp_path, wanted: str) -> str:
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "shop", "engines": {"node": "%s"}}' % wanted)
    (app / "server.js").write_text("")
    return str(app)


@pytest.mark.parametrize("node, ok, says", [
    ("24", True, "Node 24.0.0 (app.node = '24', its lowest release); engines.node '>=20.9.0' ok"),
    ("24.22.3", True, "Node 24.22.3 (app.node = '24.22.3'); engines.node '>=20.9.0' ok"),
    ("18", False, "declares engines.node '>=20.9.0'"),
    ("20.1.0", False, "but it would run on Node.js 20.1.0 (app.node = '20.1.0')"),
    ("distro", True, "Node: the distro's (the host decides at deploy time); engines.node '>=20.9.0'"),
])
def test_check_judges_the_declared_engines_offline(tmp_path, capsys, node, ok, says):
    src = f'h = [("web-1", {{"app": {{"node": "{node}", "source": "{app_with_engines(tmp_path, ">=20.9.0")}"}}}})]\n'
    status, out = run_check(tmp_path, capsys, src)
    assert status == (0 if ok else 1) and says in out
    if not ok:
        assert "host web-1: app sseapp declares" in out and "set app.node" in out and "FAILED" in out


def test_check_says_when_an_app_declares_no_engines(capsys):
    assert main(["check", "inventories/prod.py"]) == 0
    assert "no package.json in" in capsys.readouterr().out  # the zero-dependency example has none


def fake_mirror(root, tamper: bool = False) -> str:
    """A download site laid out like the Node.js project's, with one build of 24.22.3."""
    (root / "v24.22.3").mkdir(parents=True)
    tarball = root / "v24.22.3" / "node-v24.22.3-linux-x64.tar.xz"
    tarball.write_bytes(b"not really a node build")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    (root / "v24.22.3" / "SHASUMS256.txt").write_text(f"{digest}  {tarball.name}\n")
    (root / "index.json").write_text('[{"version": "v24.22.3", "files": ["linux-x64"]}]')
    if tamper:
        tarball.write_bytes(b"not really a node build, and changed")
    return root.as_uri()


@pytest.mark.parametrize("tamper", [False, True])
def test_check_resolves_the_build_on_its_mirror_and_checks_its_sha256(tmp_path, capsys, tamper):
    mirror = fake_mirror(tmp_path / "mirror", tamper)
    status, out = run_check(tmp_path, capsys, f'h = [("web-1", {{"app": {{"node_mirror": "{mirror}"}}}})]\n')
    if tamper:
        assert status == 1 and "host web-1: app.node = '24': " in out and "SHASUMS256.txt says" in out, out
        assert "refused" in out and "FAILED" in out
    else:
        assert status == 0 and f"Node build 24.22.3 on {mirror}: SHA-256 matches SHASUMS256.txt" in out, out


def test_check_says_when_the_mirror_cannot_be_reached_and_goes_on(tmp_path, capsys):
    mirror = (tmp_path / "nowhere").as_uri()
    status, out = run_check(tmp_path, capsys, f'h = [("web-1", {{"app": {{"node_mirror": "{mirror}"}}}})]\n')
    assert status == 0 and "Node build not checked (cannot fetch" in out


@pytest.mark.parametrize("sse_path, says", [("/api/frozen", "was prerendered at build time"),
                                            ("/api/edge", "runs on the Edge runtime"),
                                            ("/api/nowhere", "no route handler of the build serves it")])
def test_check_refuses_a_next_build_that_would_not_stream(tmp_path, capsys, sse_path, says):
    project = built_project(tmp_path)
    src = f'h = [("web-1", {{"site": {{"sse_paths": ["{sse_path}"]}}, "app": {{"source": "{project}"}}}})]\n'
    status, out = run_check(tmp_path, capsys, src)
    assert status == 1 and f"host web-1: site.sse_paths.0 = '{sse_path}': " in out and says in out, out


def test_check_says_an_app_that_is_not_a_next_build_is_not_inspected(capsys):
    assert main(["check", "inventories/prod.py"]) == 0
    assert "is not a Next.js build (no .next/BUILD_ID): its routes were not inspected" in capsys.readouterr().out


# -- a cluster: inventory groups `proxies` and `apps` ----------------------------------------------------

def cluster_inventory(bind: bool = True, proxy_hostname: str = "10.0.0.2", groups=("proxies", "apps")) -> str:
    """Two proxies and two app hosts (the distro's Node: nothing downloaded); `bind`: the app hosts listen on
    their private addresses (else the default, loopback)."""
    def app(n: int) -> dict:
        return {"ssh_hostname": f"10.0.0.1{n}", "app": {"node": "distro", **({"bind": f"10.0.0.1{n}"} if bind else {})}}

    lists = {"proxies": [("proxy-1", {"ssh_hostname": "10.0.0.1"}), ("proxy-2", {"ssh_hostname": proxy_hostname})],
             "apps": [("app-1", app(1)), ("app-2", app(2))]}
    return "".join(f"{group} = {lists[group]!r}\n" for group in groups)


def cluster_revision(*servers: str) -> str:
    settings = parse({})
    return nginx.render_tree(settings, OLDEST_NGINX, nginx.limits(settings, OFFLINE_CPUS, None), servers=list(servers))[1]


def test_a_sound_cluster_passes_each_host_checked_for_what_it_runs(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, cluster_inventory())
    assert status == 0, out
    for app in ("app-1", "app-2"):
        assert f"host {app}: ok: app host of the cluster (nginx runs on proxy-1, proxy-2)" in out
        assert not [line for line in out.splitlines() if line.startswith(f"host {app}:") and "nginx 1." in line]
    # Each proxy's tree is rendered with every app host in its upstream (each at its first instance's port).
    revision = cluster_revision("10.0.0.11:3000", "10.0.0.12:3000")
    assert revision != nginx.render_tree(parse({}), OLDEST_NGINX, nginx.limits(parse({}), OFFLINE_CPUS, None))[1]
    for proxy in ("proxy-1", "proxy-2"):
        assert f"host {proxy}: ok: nginx {OLDEST_NGINX}, revision {revision}" in out, out
        # the app's own checks are an app host's, not a proxy's
        assert not [line for line in out.splitlines() if line.startswith(f"host {proxy}: Node")]


def test_a_cluster_app_host_on_loopback_fails_naming_host_and_app_bind(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, cluster_inventory(bind=False))
    assert status == 1
    for app in ("app-1", "app-2"):
        assert f"host {app}: app.bind = '127.0.0.1': an app host of a cluster must listen on the private address" in out


def test_a_cluster_proxy_without_a_private_address_fails_naming_the_setting(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, cluster_inventory(proxy_hostname="proxy-2.example.org"))
    assert status == 1
    assert "host proxy-2: nginx.private_address is not set and ssh_hostname is not an IP address" in out
    assert "host proxy-1: nginx.private_address" not in out


@pytest.mark.parametrize("groups,missing,present", [(("apps",), "proxies", "apps"), (("proxies",), "apps", "proxies")])
def test_a_cluster_group_without_the_other_fails_naming_the_missing_one(tmp_path, capsys, groups, missing, present):
    status, out = run_check(tmp_path, capsys, cluster_inventory(groups=groups))
    assert status == 1
    assert f"the inventory has a group `{present}` but no `{missing}`" in out
    assert ": ok:" not in out  # nothing is checked on a layout that is none


def test_a_host_in_neither_group_of_a_cluster_fails_naming_it(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, cluster_inventory() + 'other = [("stray-1", {})]\n')
    assert status == 1 and "host stray-1: in neither `proxies` nor `apps`" in out


def test_a_cluster_checked_with_limit_to_one_proxy_renders_it_as_the_whole_check_does(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, cluster_inventory(), "--limit", "proxy-1")
    assert status == 0, out
    assert f"host proxy-1: ok: nginx {OLDEST_NGINX}, revision {cluster_revision('10.0.0.11:3000', '10.0.0.12:3000')}" in out
    assert "app-1" not in out and "proxy-2" not in out


def test_a_cluster_checked_with_limit_to_the_app_hosts_passes(tmp_path, capsys):
    status, out = run_check(tmp_path, capsys, cluster_inventory(), "--limit", "apps")
    assert "nginx.private_address" not in out
    assert status == 0, out
    assert "host app-1: ok: app host of the cluster" in out and "host app-2: ok" in out
