"""`ssedeploy check` offline: settings, rendering, gixy-next, local nginx -t."""

import shutil

import pytest

from ssedeploy import nginx
from ssedeploy.check import lint
from ssedeploy.cli import main
from ssedeploy.settings import OLDEST_NGINX, parse

NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")


def run_check(tmp_path, capsys, source: str, *extra: str) -> tuple[int, str]:
    inventory = tmp_path / "inv.py"
    inventory.write_text(source)
    status = main(["check", str(inventory), *extra])
    return status, capsys.readouterr().out


def test_example_prod_inventory_passes(capsys):
    assert main(["check", "inventories/prod.py"]) == 0
    out = capsys.readouterr().out
    assert "host web-1: ok: nginx 1.22.1" in out and "host web-2: ok" in out
    if NGINX:
        assert "nginx -t ok" in out


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
