"""Ubuntu 24.04 targets: deployed and streaming where the Ubuntu archive is reachable.

Where it is not, `sandbox up` must say so with exit status 3, and only then is this
skipped (Debian 12, the walking skeleton, never skips).
"""

from __future__ import annotations

import json
import re

import pytest

from ssedeploy.sse import read_stream
from ssedeploy.testinfra_backend import get_host

from .helpers import pyinfra_deploy, ssedeploy

NAME = "e2e-noble"


@pytest.fixture(scope="module")
def noble():
    try:
        up = ssedeploy("sandbox", "up", "--name", NAME, "--distro", "ubuntu24", check=False)
        if up.returncode == 3:
            assert "not reachable" in up.stderr or "could not download" in up.stderr, up.stderr
            pytest.skip(f"Ubuntu archive unreachable here: {up.stderr.strip()[:300]}")
        assert up.returncode == 0, up.stdout + up.stderr
        yield json.loads(ssedeploy("sandbox", "status", "--name", NAME, "--json").stdout)[0]
    finally:
        ssedeploy("sandbox", "down", "--name", NAME, check=False)


def test_ubuntu24_deploys_streams_and_converges(noble):
    assert noble["distro"] == "ubuntu24"
    first = pyinfra_deploy(instance=NAME)
    assert re.search(r"^\s+\[\S+\] Success", first.stderr, re.M)
    stream = read_stream(noble["address"], 80, "/api/stream", duration=4.5,
                         headers={"Accept-Encoding": "gzip, deflate, br"})
    assert stream.status == 200 and stream.headers.get("server") == "nginx"  # server_tokens off
    assert "content-encoding" not in stream.headers
    assert stream.first_block_ms is not None and stream.first_block_ms < 1000
    assert len(stream.events) >= 3 and all(750 <= g <= 1250 for g in stream.gaps_ms), stream.gaps_ms
    host = get_host(noble["address"], user=noble["ssh_user"], key=noble["ssh_key"], known_hosts=noble["known_hosts"])
    assert host.system_info.distribution == "ubuntu" and host.system_info.release == "24.04"
    assert "nginx/1.24" in host.run("nginx -v").stderr
    assert host.run("nginx -t").rc == 0
    again = pyinfra_deploy(instance=NAME)
    assert not re.search(r"^\s+\[\S+\] Success", again.stdout + again.stderr, re.M)
