"""The sandbox's apt cache (`sandbox up --apt-cache`, ssedeploy/sandbox/aptcache.py), end to end on Debian 12: two
hosts' apt goes through the cache on the bridge, the second host's download is served from it without a second
fetch from the archive, and `down` ends the cache and removes its files (about 20 s); and hosts asking for the
archive's release files at once each get the whole file, fetched once (a real cache before a stand-in archive on
loopback, no hosts; a few seconds)."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from ssedeploy.sandbox import aptcache, hosts as sandbox_hosts

from .helpers import booted, host_of

NAME = "e2e-apt"
PACKAGE = "hello"  # small, in Debian 12's main, not in the rootfs


def transfer_log() -> list[list[str]]:
    path = aptcache.base_dir(NAME) / "log" / aptcache.TRANSFER_LOG
    return [line.split("|") for line in path.read_text().splitlines() if line.count("|") >= 4]


def test_two_hosts_fetch_a_package_once_through_the_cache():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests boot sandbox hosts and need root (run `make test` as root)")
    with booted(NAME, "-n", "2", "--apt-cache") as (up, status):
        assert up.returncode == 0, up.stdout + up.stderr
        assert len(status) == 2
        gateway = status[0]["apt_cache"].split("//", 1)[1].rsplit(":", 1)[0]
        record = json.loads((sandbox_hosts.instance_dir(NAME) / "apt-cache.json").read_text())
        assert aptcache.alive(record) and record["address"] == gateway
        for info in status:
            host = host_of(info)
            conf = host.file(f"/{aptcache.HOST_CONF}").content_string
            assert f'"http://{gateway}:{aptcache.PORT}";' in conf, conf
            result = host.run(f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                              f"apt-get install -y -qq --download-only {PACKAGE}")
            assert result.rc == 0, result.stdout + result.stderr
        debs = [f for f in transfer_log() if f"/{PACKAGE}_" in f[4] and f[4].endswith(".deb")]
        fetched = [f for f in debs if f[1] == "I"]
        served_to = sorted(f[3] for f in debs if f[1] == "O")
        assert len(fetched) == 1, debs  # once from the archive ...
        assert served_to == sorted(h["address"] for h in status), debs  # ... served to both hosts
        figures = aptcache.stats(NAME)
        assert figures["served_bytes"] > figures["fetched_bytes"] > 0, figures
    assert not aptcache.alive(record)
    assert not aptcache.base_dir(NAME).exists() and not Path(sandbox_hosts.instance_dir(NAME)).exists()


ARCHIVE = "127.77.0.1"  # a stand-in archive on loopback, on port 80 like the real ones (the cache allows no other)
# The stand-in's link: a 16 KiB chunk per 20 ms (~0.8 MB/s, a 150 KB file in ~0.2 s), a pace so the cache's
# forwarded requests overlap as at a remote archive; nothing waits on it for a state.
CHUNK, CHUNK_EVERY_S = 16384, 0.02
RELEASE_PATHS = ["/debian/dists/bookworm/InRelease", "/debian/dists/bookworm-updates/InRelease",
                 "/debian/dists/bookworm/Release.gpg"]


@contextmanager
def stand_in_archive():
    """An HTTP archive on loopback that counts the files it sent whole, per path, over a slow link (CHUNK)."""
    sent: Counter = Counter()

    class Archive(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = release_body(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Last-Modified", "Tue, 01 Dec 2026 00:00:00 GMT")
            self.end_headers()
            for at in range(0, len(body), CHUNK):
                try:
                    self.wfile.write(body[at:at + CHUNK])
                except OSError:  # the cache gave up a fetch it had started twice
                    return
                time.sleep(CHUNK_EVERY_S)
            sent[self.path] += 1

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((ARCHIVE, 80), Archive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        server.shutdown()
        server.server_close()


def release_body(path: str) -> bytes:
    return (path.encode() + b"\n") * 4000  # ~150 KB, like Debian 12's InRelease


def test_hosts_asking_for_release_files_at_once_each_get_the_whole_file_fetched_once(tmp_path):
    """What hung a 20-host fleet deploy: apt asks for InRelease with `Cache-Control: max-age=0`; apt-cacher-ng
    re-fetched it for every such request and, when they overlapped, served some a 503 or a cut file. Now every
    request gets the whole file and the archive is asked once per file. 16 requests at once per file, twice."""
    if os.geteuid() != 0:
        pytest.fail("this test binds port 80 on loopback and needs root (run `make test` as root)")
    instance = "e2e-apt-race"
    with stand_in_archive() as sent:
        server = aptcache.start(instance, "127.0.0.1", [f"http://{ARCHIVE}/debian"], tmp_path / "cache.log")
        try:
            aptcache.wait_answering(server, tmp_path / "cache.log")
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({"http": aptcache.url(server["address"])}))

            def fetch(path: str) -> tuple[str, int, bytes | str]:
                request = urllib.request.Request(f"http://{ARCHIVE}{path}", headers={"Cache-Control": "max-age=0"})
                try:
                    with opener.open(request, timeout=30) as response:
                        return path, response.status, response.read()
                except (OSError, http.client.HTTPException) as exc:
                    return path, 0, repr(exc)

            for _ in range(2):
                with ThreadPoolExecutor(max_workers=16 * len(RELEASE_PATHS)) as pool:
                    answers = list(pool.map(fetch, [p for p in RELEASE_PATHS for _ in range(16)]))
                assert len(answers) == 16 * len(RELEASE_PATHS)
                bad = [(p, status, body if isinstance(body, str) else len(body)) for p, status, body in answers
                       if status != 200 or body != release_body(p)]
                assert not bad, bad
            assert dict(sent) == {p: 1 for p in RELEASE_PATHS}, sent
        finally:
            aptcache.stop(server)
            shutil.rmtree(sandbox_hosts.instance_dir(instance), ignore_errors=True)
    assert not aptcache.alive(server)
