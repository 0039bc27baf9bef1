"""The sandbox's apt cache (`sandbox up --apt-cache`, ssedeploy/sandbox/aptcache.py), end to end on Debian 12: two
hosts' apt goes through the cache on the bridge, the second host's download is served from it without a second
fetch from the archive, and `down` ends the cache and removes its files. About 20 s."""

from __future__ import annotations

import json
import os
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
            assert f'"http://{gateway}:3142";' in conf, conf
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
