"""`ssedeploy verify` and `ssedeploy drift` against a deployed sandbox host, through its pyinfra inventory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ssedeploy.nginx import LIVE
from ssedeploy.paths import app_dir, env_path, unit_path
from ssedeploy.settings import parse as _parse

from .helpers import BIN, INSTANCE, live_app_port, live_unit, pyinfra_deploy, run

DEFAULTS = _parse({})  # the default app, as deployed here
APP, ENV = app_dir(DEFAULTS), env_path(DEFAULTS)
STATE = (f"find {LIVE} {unit_path(DEFAULTS)} {Path(ENV).parent} {APP} -xdev "
         "\\( -type f -o -type l \\) -not -name '*.log' -print0 | sort -z | xargs -0 sha256sum; "
         f"find {APP} -maxdepth 1 -printf '%p %l\\n' | sort")


def ssedeploy(command, *args, inventory: str = "inventories/sandbox.py", **kw):
    return run(str(BIN / "ssedeploy"), command, inventory, *args, check=False, **kw)


@pytest.fixture(scope="module")
def deployed(first_deploy, host):
    pyinfra_deploy()
    yield host
    pyinfra_deploy()  # whatever a test changed is put back


def test_verify_passes_and_reports_diagnostics(deployed, target, tmp_path):
    report = tmp_path / "junit.xml"
    result = ssedeploy("verify", "--junitxml", str(report))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"[{target['name']}]" in out and "passed" in out
    assert "ssedeploy diagnostics" in out and f"{target['name']}: error.log:" in out
    assert re.search(r'<testsuite [^>]*failures="0"', report.read_text())


def test_verify_fails_naming_host_and_check(deployed, target):
    unit = live_unit(deployed)
    deployed.check_output(f"systemctl stop {unit}")
    try:
        result = ssedeploy("verify")
    finally:
        deployed.check_output(f"systemctl start {unit}")
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert f"{target['name']}: {unit}, the one nginx sends to, is not running" in out


def test_verify_and_drift_name_an_old_instance_nothing_drains(deployed, target):
    """A run that died after the switch left the old instance running with no drain pending."""
    live = live_unit(deployed)
    port = live_app_port(deployed)
    other = next(p for p in DEFAULTS.app.instance_ports if p != port)
    stray = f"sseapp@{other}.service"
    deployed.check_output(f"ln -sfT $(readlink {APP}/current | sed 's|^|../|') {APP}/instances/{other} "
                          f"&& systemctl start {stray}")
    try:
        checks = ssedeploy("verify")
        assert checks.returncode == 1
        assert f"{target['name']}: {stray} still runs and nothing drains it" in checks.stdout + checks.stderr
        drift = ssedeploy("drift")
        assert drift.returncode == 1 and f"{stray} (running, nothing drains it)" in drift.stdout, drift.stdout
        pyinfra_deploy()  # the next run stops it
        assert not deployed.service(stray).is_running and deployed.service(live).is_running
    finally:
        deployed.run(f"systemctl stop {stray}")


def test_verify_without_inventory_hosts_is_an_error(deployed, tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("hosts = []\n")
    assert ssedeploy("verify", inventory=str(empty)).returncode == 3


def test_drift_is_read_only_and_finds_none_after_a_deploy(deployed):
    before = deployed.check_output(STATE)
    result = ssedeploy("drift")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "a deploy would change nothing" in out
    assert deployed.check_output(STATE) == before


def test_drift_names_a_hand_edited_file(deployed, target):
    site = "/etc/nginx/sites-available/ssedeploy.conf"
    deployed.check_output(f"echo '# edited by hand' >> {site}")
    result = ssedeploy("drift")
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert f"[{target['name']}] differs: {site}" in out
    assert "nginx config (staged, tested, swapped)" in out


def test_drift_works_without_secrets_or_a_built_app(deployed, target, tmp_path):
    inventory = tmp_path / "ci.py"
    inventory.write_text(
        "from ssedeploy.inventory import sandbox_hosts\n"
        f"hosts = [(n, dict(d, app={{'source': '/nowhere/build', 'secret_env': ['NOT_IN_CI']}}))"
        f" for n, d in sandbox_hosts({INSTANCE!r})]\n"
    )
    pyinfra_deploy()
    result = ssedeploy("drift", inventory=str(inventory))
    out = result.stdout + result.stderr
    assert f"skipped in drift mode: {ENV} (secrets are not available here)" in out
    assert "skipped in drift mode: the release (no built app at /nowhere/build)" in out
    assert result.returncode == 0, out


def test_verify_limit_selects_hosts_like_pyinfra(deployed, target):
    assert ssedeploy("verify", "--limit", target["name"], "--", "-k", "nginx_config_is_valid").returncode == 0
    result = ssedeploy("verify", "--limit", "no-such-host")
    assert result.returncode == 3 and "matching --limit no-such-host" in result.stdout + result.stderr
