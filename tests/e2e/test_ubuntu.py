"""Ubuntu 24.04 targets: deployed and streaming where the Ubuntu archive is reachable.

Where it is not, `sandbox up` must say so with exit status 3, and only then is this
skipped (Debian 12, the walking skeleton, never skips). The nginx role's tests run on
this host too (tests/e2e/test_nginx_role.py).
"""

from __future__ import annotations

from ssedeploy.sse import read_stream

from .helpers import REPO, deploy_with, host_of, main_pid, pyinfra_deploy

NAME = "e2e-noble"


def test_ubuntu24_deploys_streams_and_converges(noble):
    assert noble["distro"] == "ubuntu24"
    first = noble["first_deploy"]
    assert first.results.changed(), "the first deploy changed nothing?"
    stream = read_stream(noble["address"], 80, "/api/stream", duration=4.5,
                         headers={"Accept-Encoding": "gzip, deflate, br"})
    assert stream.status == 200 and stream.headers.get("server") == "nginx"  # server_tokens off
    assert "content-encoding" not in stream.headers
    assert stream.first_block_ms is not None and stream.first_block_ms < 1000
    assert len(stream.events) >= 3 and all(750 <= g <= 1250 for g in stream.gaps_ms), stream.gaps_ms
    host = host_of(noble)
    assert host.system_info.distribution == "ubuntu" and host.system_info.release == "24.04"
    assert "nginx/1.24" in host.run("nginx -v").stderr
    assert host.run("nginx -t").rc == 0
    again = pyinfra_deploy(instance=NAME)
    assert again.results.changed() == [], again.stdout + again.stderr


def test_the_next_js_16_example_streams_through_nginx_on_ubuntu24(noble, tmp_path):
    assert (REPO / "examples/nextjs-sse/.next/standalone/server.js").exists(), "run `make nextjs` first"
    try:
        deploy_with({"app": {"source": str(REPO / "examples" / "nextjs-sse")}}, tmp_path, instance=NAME, check=True)
        stream = read_stream(noble["address"], 80, "/api/stream", duration=3.5,
                             headers={"Accept-Encoding": "gzip, deflate, br"})
        assert stream.status == 200 and "content-encoding" not in stream.headers
        assert len(stream.events) >= 2 and all(750 <= g <= 1250 for g in stream.gaps_ms), stream.gaps_ms
        host = host_of(noble)
        assert "next-server" in host.check_output("ps -o comm= -p %s", main_pid(host))
    finally:
        deploy_with({}, tmp_path, instance=NAME, check=True)
