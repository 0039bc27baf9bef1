"""The app's Node (issue 13). On Debian 12 and Ubuntu 24.04 sandbox hosts: the app runs an official build from
the sandbox's mirror; a tampered tarball and an app whose declared engines refuse the Node are both stopped
before the host changes. On Debian 12 (the same code path on both): a line that moves to its newest release,
an exact version that never moves, a rollback that brings its Node back, builds no kept release runs removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from roles import node as node_role
from ssedeploy.paths import NODE_LINK, STATE, node_root
from ssedeploy.sandbox import nodemirror
from ssedeploy.settings import parse

from .helpers import BIN, INSTANCE, deploy_with, live_unit, main_pid, run, write_inventory
from .polling import wait_until
from .releasing import assert_unnoticed, build, settled, watched

SETTINGS = {"nginx": {"worker_shutdown_timeout": 10}, "app": {"drain_seconds": 3, "stop_timeout": 5}}
DEFAULTS = parse(SETTINGS)
ROOT = node_root(DEFAULTS)
OLDER, NEWEST = sorted(nodemirror.VERSIONS, key=lambda v: tuple(map(int, v.split("."))))  # one line, two releases
LINE = NEWEST.split(".")[0]


def settings(**app) -> dict:
    return {**SETTINGS, "app": {**SETTINGS["app"], **app}}


@pytest.fixture(scope="module")
def rt(deployed, tmp_path_factory):
    """A deployed host of each distro, with the default settings."""
    instance, info, host = deployed
    return {"instance": instance, "info": info, "host": host, "tmp": tmp_path_factory.mktemp(f"node-{instance}")}


@pytest.fixture(scope="module")
def seq(target, host, tmp_path_factory):
    """The Debian 12 host with this module's short timeouts (releases settle fast); defaults put back after."""
    tmp = tmp_path_factory.mktemp("node-seq")
    deploy_with(settings(), tmp, instance=INSTANCE, check=True)
    yield {"instance": INSTANCE, "info": target, "host": host, "tmp": tmp}
    deploy_with({}, tmp, instance=INSTANCE, check=True)


def running_node(host) -> tuple[str, str]:
    """(the binary the live instance runs, the version it says)."""
    exe = host.check_output(f"readlink /proc/{main_pid(host, DEFAULTS)}/exe")
    return exe, host.check_output(f"{exe} --version").removeprefix("v")


def release(rt, **app):
    ran = deploy_with(settings(**app), rt["tmp"], instance=rt["instance"])
    if ran.returncode == 0:
        settled(rt["host"], DEFAULTS)
    return ran


def installed(host) -> list[str]:
    return sorted(host.check_output(f"ls -A {ROOT}").split())


def test_the_app_runs_the_newest_official_build_of_the_default_line_from_the_sandbox_mirror(rt):
    host = rt["host"]
    assert parse({}).app.node == LINE  # the default line; the sandbox mirror's newest of it is NEWEST
    assert running_node(host) == (f"{ROOT}/v{NEWEST}-linux-x64/bin/node", NEWEST)
    assert host.check_output("readlink /srv/sseapp/current").endswith(f"-node{NEWEST}")
    assert not host.package("nodejs").is_installed, "the distro's Node was installed too"


def test_an_exact_version_a_line_and_a_rollback_each_bring_their_node_and_no_stream_notices(seq):
    rt = seq
    host, name = rt["host"], rt["info"]["name"]
    # An exact version: a new release of the same build, on that Node, checked before it serves.
    r, ran = watched(rt["info"]["address"], lambda: release(rt, node=OLDER), count=100)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert ran.results.of(name, f"{node_role.ROLE} | {node_role.INSTALL} {OLDER} (x64)") == "changed"
    assert running_node(host) == (f"{ROOT}/v{OLDER}-linux-x64/bin/node", OLDER)
    assert_unnoticed(r)
    # It never moves: nothing newer is taken, nothing changes.
    again = deploy_with(settings(node=OLDER), rt["tmp"], instance=rt["instance"], check=True)
    assert again.results.changed() == [], "a re-run of an exact version changed something"
    # A line: its newest release (already installed: only the release it runs changes).
    assert release(rt, node=LINE).returncode == 0
    assert running_node(host)[1] == NEWEST
    assert deploy_with(settings(node=LINE), rt["tmp"], instance=rt["instance"], check=True).results.changed() == []
    # A rollback brings back the release and the Node it was checked with.
    inventory = write_inventory(settings(node=LINE), rt["tmp"], rt["instance"])
    back = run(str(BIN / "ssedeploy"), "rollback", str(inventory), instance=rt["instance"], check=False)
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
    settled(host, DEFAULTS)
    assert running_node(host) == (f"{ROOT}/v{OLDER}-linux-x64/bin/node", OLDER)


def test_a_node_build_no_kept_release_runs_is_removed(seq):
    rt = seq
    host = rt["host"]
    assert f"v{OLDER}-linux-x64" in installed(host)
    # Two new builds with keep_releases 2: the releases on the older Node are pruned, and then its build.
    for mark in ("node-gc-1", "node-gc-2"):
        assert release(rt, node=LINE, keep_releases=2, source=build(rt["tmp"], mark)).returncode == 0
    assert installed(host) == [f"v{NEWEST}-linux-x64"] and running_node(host)[1] == NEWEST
    kept = host.check_output(f"readlink -e /srv/sseapp/releases/*/{NODE_LINK} | sort -u").split()
    assert kept == [f"{ROOT}/v{NEWEST}-linux-x64"]


# -- refused before any host changes --------------------------------------------------------------------

def snapshot(host) -> dict:
    """What the host serves and keeps: refused runs must leave all of it as it was."""
    return {"unit": live_unit(host, DEFAULTS), "pid": main_pid(host, DEFAULTS),
            "revision": host.check_output(f"cat {STATE}/nginx/revision"),
            "releases": host.check_output("ls -A /srv/sseapp/releases"), "node": installed(host),
            "current": host.check_output("readlink /srv/sseapp/current"),
            "unit file": host.file("/etc/systemd/system/sseapp@.service").sha256sum}


@pytest.fixture
def tampered_mirror(rt, tmp_path):
    with tampered(rt["info"], rt["host"], tmp_path) as served:
        yield served


@contextmanager
def tampered(info, host, tmp_path):
    """A copy of the sandbox's mirror that also lists a newer 24.x whose tarball is not the one its
    SHASUMS256.txt names (one byte changed), served on the instance's bridge address. Yields (its URL, that
    version)."""
    site = tmp_path / "mirror"
    shutil.copytree(nodemirror.CACHE, site, ignore=shutil.ignore_patterns(".*"))
    fake = f"{LINE}.99.0"
    real = site / f"v{NEWEST}" / f"node-v{NEWEST}-linux-x64.tar.xz"
    (site / f"v{fake}").mkdir()
    tarball = site / f"v{fake}" / f"node-v{fake}-linux-x64.tar.xz"
    data = bytearray(real.read_bytes())
    (site / f"v{fake}" / "SHASUMS256.txt").write_text(f"{hashlib.sha256(data).hexdigest()}  {tarball.name}\n")
    data[len(data) // 2] ^= 1
    tarball.write_bytes(bytes(data))
    index = json.loads((site / "index.json").read_text())
    (site / "index.json").write_text(json.dumps([{**index[0], "version": f"v{fake}"}, *index]))
    address = urlsplit(info["node_mirror"]).hostname
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", address, "--directory", str(site),
                               "8790"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{address}:8790"
    try:
        wait_until(lambda: host.run(f"curl -fsS -o /dev/null {url}/index.json").rc == 0, 10,
                   "the tampered mirror answers")
        yield url, fake
    finally:
        server.terminate()
        server.wait(10)


def test_a_tampered_tarball_is_refused_and_the_host_keeps_what_it_served(rt, tampered_mirror):
    host, name = rt["host"], rt["info"]["name"]
    url, fake = tampered_mirror
    before = snapshot(host)
    ran = deploy_with({"app": {"node": LINE, "node_mirror": url, "source": build(rt["tmp"], "after-tamper")}},
                      rt["tmp"], instance=rt["instance"])
    out = ran.stdout + ran.stderr
    install = f"{node_role.ROLE} | {node_role.INSTALL} {fake} (x64)"
    assert ran.returncode != 0 and ran.results.failed_at(name) == install, out[-3000:]
    assert "SHASUMS256.txt says" in out and "nothing was installed" in out, out[-3000:]
    # The node role runs first: nothing after it ran (no nginx change, no release).
    ops = [o["name"] for o in ran.results.operations(name) if o["result"] not in ("not run",)]
    assert ops[-1] == install and not [o for o in ops if not o.startswith(f"{node_role.ROLE} | ")], ops
    assert snapshot(host) == before
    assert host.run(f"ls -d {ROOT}/.install-* {ROOT}/v{fake}-*").rc != 0, "the refused download was left behind"


@pytest.mark.parametrize("node, engines, would_get", [
    (LINE, f">={int(LINE) + 2}", NEWEST),   # a line whose newest does not satisfy the app
    ("distro", ">=20.9.0", "18."),          # Next.js 16's range, and the distro's Node 18 on both hosts
])
def test_an_app_whose_engines_refuse_the_node_is_refused_before_any_host_changes(rt, node, engines, would_get):
    host, name = rt["host"], rt["info"]["name"]
    before = snapshot(host)
    ran = deploy_with({"app": {"node": node, "source": engines_app(rt, engines)}}, rt["tmp"], instance=rt["instance"])
    out = ran.stdout + ran.stderr
    assert ran.returncode != 0 and ran.results.ran() == [], out[-3000:]
    assert f"host {name}: app sseapp declares engines.node {engines!r}" in out, out[-3000:]
    assert f"would run on Node.js {would_get}" in out and f"app.node = {node!r}" in out and "set app.node" in out
    assert snapshot(host) == before and not host.package("nodejs").is_installed


def test_check_reports_both_offline(seq, tmp_path):
    rt = seq
    with tampered(rt["info"], rt["host"], tmp_path) as (url, _):
        inventory = write_inventory({"app": {"node_mirror": url, "source": engines_app(rt, ">=99")}}, tmp_path,
                                    rt["instance"])
        done = run(str(BIN / "ssedeploy"), "check", str(inventory), instance=rt["instance"], check=False)
    assert done.returncode == 1
    assert "declares engines.node '>=99'" in done.stdout and "SHASUMS256.txt says" in done.stdout, done.stdout


def engines_app(rt, wanted: str) -> str:
    """The example app with a package.json that declares engines.node WANTED."""
    source = Path(build(rt["tmp"], f"engines-{wanted}"))
    (source / "package.json").write_text(json.dumps({"name": "shop", "engines": {"node": wanted}}))
    return str(source)
