"""Debian 13, Ubuntu 22.04 and Ubuntu 26.04 hosts, one at a time: boot, deploy, stream over HTTP/1.1 and over
TLS with HTTP/2, `ssedeploy verify` passes, and a second run changes nothing. (The full suite runs on Debian 12
and Ubuntu 24.04.) Each rootfs is built once and cached; an archive that cannot be reached makes `sandbox up`
exit 3, and that is a failure here too: every one of these archives is reachable from the CI machine.

Instances are `e2e-d13`, `e2e-u22`, `e2e-u26`; $SSEDEPLOY_TEST_DISTRO_PREFIX replaces `e2e-` (two checkouts
testing at once each need their own).
"""

from __future__ import annotations

import os
import ssl
import socket

import pytest

from ssedeploy.probe import probe
from ssedeploy.sse import read_stream

from .helpers import BIN, booted, deploy_with, host_of, pyinfra_deploy, run

PREFIX = os.environ.get("SSEDEPLOY_TEST_DISTRO_PREFIX", "e2e-")
# distro: (instance suffix, os-release VERSION_ID, the nginx version line the distro ships, its sudo)
DISTROS = {
    "debian13": ("d13", "13", "nginx/1.26.", "sudo"),
    "ubuntu22": ("u22", "22.04", "nginx/1.18.", "sudo"),
    "ubuntu26": ("u26", "26.04", "nginx/1.28.", "sudo-rs"),
}


@pytest.fixture(scope="module", params=list(DISTROS))
def distro_host(request):
    """(distro, instance, status entry, first deploy) of a freshly booted and deployed host."""
    distro = request.param
    name = PREFIX + DISTROS[distro][0]
    with booted(name, "--distro", distro) as (up, hosts):
        assert up.returncode == 0, f"sandbox up --distro {distro} exited {up.returncode}:\n{up.stdout}\n{up.stderr}"
        first = pyinfra_deploy(instance=name)
        yield distro, name, hosts[0], first


def test_is_the_distro_it_says_with_the_sudo_it_ships(distro_host):
    distro, _, info, _ = distro_host
    _, version_id, _, sudo = DISTROS[distro]
    host = host_of(info)
    assert host.system_info.release == version_id
    assert host.check_output("systemctl is-system-running") == "running"
    assert host.run("sudo --version").stdout.startswith("sudo-rs " if sudo == "sudo-rs" else "Sudo version ")


def test_deploys_and_streams_over_http_1_1(distro_host):
    distro, _, info, first = distro_host
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.results.changed(), "the first deploy changed nothing?"
    host = host_of(info)
    assert DISTROS[distro][2] in host.run("nginx -v").stderr
    stream = read_stream(info["address"], 80, "/api/stream", duration=3.5, headers={"Accept-Encoding": "gzip"})
    assert stream.status == 200 and "content-encoding" not in stream.headers
    assert stream.first_block_ms is not None and stream.first_block_ms < 1000
    assert len(stream.events) >= 2 and all(750 <= g <= 1250 for g in stream.gaps_ms), stream.gaps_ms


def test_verify_passes(distro_host):
    _, name, info, _ = distro_host
    result = run(str(BIN / "ssedeploy"), "verify", "inventories/sandbox.py", check=False, instance=name)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"[{info['name']}]" in result.stdout + result.stderr


def test_a_second_run_changes_nothing(distro_host):
    _, name, _, _ = distro_host
    again = pyinfra_deploy(instance=name)
    assert again.results.changed() == [], again.stdout[-3000:] + again.stderr[-3000:]


def test_streams_over_tls_with_http2(distro_host, tmp_path):
    _, name, info, _ = distro_host
    address = info["address"]
    try:
        deploy_with({"site": {"tls": {}}}, tmp_path, instance=name, check=True)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection((address, 443), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=address) as tls:
                assert tls.selected_alpn_protocol() == "h2"
        h2 = probe(f"https://{address}/api/stream", duration=4, http2=True, insecure=True, expect_interval=1)
        assert (h2.verdict, h2.http_version) == ("streaming", "2"), h2.reason
        h1 = read_stream(address, 443, "/api/stream", duration=2.5, tls=True, insecure=True)
        assert h1.status == 200 and len(h1.events) >= 2
        assert read_stream(address, 80, "/api/stream", duration=1).status == 301
    finally:
        deploy_with({}, tmp_path, instance=name, check=True)
