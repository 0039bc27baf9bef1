"""The sandbox's apt cache (ssedeploy/sandbox/aptcache.py): the apt-cacher-ng config and the hosts' apt proxy lines
made from a given sources list, the transfer log's figures, and the `--apt-cache` flag. No root, no server."""

import re
from pathlib import Path

import pytest

from ssedeploy import cli
from ssedeploy.sandbox import aptcache, aptsources

# Made-up archive names (the real ones are read from the machine at run time).
SOURCES = """\
Types: deb
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://archive.example/debian-security/
Suites: bookworm-security
Components: main

Types: deb
URIs: https://tls-only.example/apt
Suites: stable
Components: main
"""
BASE = Path("/var/lib/ssedeploy/sandbox/x/apt-cache")


def uris():
    return [s.uri for s in aptsources.parse_deb822(SOURCES)]


def conf_lines(text):
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_remaps_map_each_http_archive_to_itself_and_leave_https_out():
    assert aptcache.remaps(uris()) == [
        aptcache.Remap("debian", "archive.example/debian", "http://archive.example/debian/"),
        aptcache.Remap("debiansecurity", "archive.example/debian-security", "http://archive.example/debian-security/"),
    ]


def test_remaps_deduplicate_uris_and_keep_names_distinct():
    got = aptcache.remaps(["http://a.example/debian/", "http://a.example/debian", "http://b.example/debian",
                           "http://c.example:8080/", "ftp://d.example/debian"])
    assert [(r.name, r.match) for r in got] == [
        ("debian", "a.example/debian"), ("debian2", "b.example/debian"), ("cexample", "c.example:8080")]


def test_config_serves_on_the_bridge_from_its_own_dirs_with_the_machines_archives_only():
    text = aptcache.config("198.18.7.1", BASE, uris())
    assert conf_lines(text) == [
        f"CacheDir: {BASE}/cache",
        f"LogDir: {BASE}/log",
        "SupportDir: /usr/lib/apt-cacher-ng",
        "Port: 8781",
        "BindAddress: 198.18.7.1",
        "ForeGround: 1",
        f"PidFile: {BASE}/pid",
        f"SocketPath: {BASE}/socket",
        "VerboseLog: 1",
        "UnbufferLogs: 1",
        "ExThreshold: 4",
        "ReportPage: acng-report.html",
        "PassThroughPattern: ^$",
        "SPfilePatternEx: /(InRelease|Release|Release\\.gpg)$",
        "Remap-debian: archive.example/debian ; http://archive.example/debian/",
        "Remap-debiansecurity: archive.example/debian-security ; http://archive.example/debian-security/",
    ]
    # The package's remap files (public mirror lists and its default backend) are never named.
    assert "file:" not in text and "backends_" not in text


@pytest.mark.parametrize("path, static", [
    ("debian/dists/bookworm/InRelease", True),
    ("debian/dists/bookworm-updates/Release", True),
    ("debian/dists/bookworm/Release.gpg", True),
    ("ubuntu/dists/noble-security/InRelease", True),
    ("debian/dists/bookworm/main/binary-amd64/Packages.xz", False),  # by-hash or volatile: the package decides
    ("debian/dists/bookworm/main/i18n/Translation-en.xz", False),
    ("debian/pool/main/n/nginx/nginx_1.22.1-9_amd64.deb", False),
    ("debian/dists/bookworm/InRelease.html", False),
    ("debian/dists/bookworm/NotARelease", False),
])
def test_only_the_archives_release_files_are_made_static(path, static):
    assert bool(re.search(aptcache.RELEASE_FILES, path)) is static


def test_config_from_a_one_line_sources_list():
    sources = aptsources.parse_one_line("deb [arch=amd64] http://m.example/ubuntu noble main universe\n"
                                        "deb http://m.example/ubuntu noble-security main\n")
    text = aptcache.config("198.18.0.1", BASE, [s.uri for s in sources])
    assert [line for line in conf_lines(text) if line.startswith("Remap-")] == \
        ["Remap-ubuntu: m.example/ubuntu ; http://m.example/ubuntu/"]
    assert "BindAddress: 198.18.0.1" in text


def test_host_conf_proxies_only_the_cached_archives_hosts():
    assert aptcache.host_conf("198.18.7.1", uris()).splitlines()[1:] == [
        'Acquire::http::Proxy::archive.example "http://198.18.7.1:8781";']
    assert aptcache.host_conf("198.18.7.1", ["https://tls-only.example/apt"]).splitlines()[1:] == []


def test_write_host_conf_puts_the_snippet_in_apt_conf_d(tmp_path):
    aptcache.write_host_conf(tmp_path, "198.18.7.1", uris())
    path = tmp_path / "etc/apt/apt.conf.d/01ssedeploy-apt-cache"
    assert path.read_text() == aptcache.host_conf("198.18.7.1", uris())


def test_transfer_log_sums_fetched_and_served():
    log = "\n".join([
        "1796190183|I|1000|198.18.7.2|debian/pool/main/n/nginx/nginx.deb",
        "1796190183|O|1000|198.18.7.2|debian/pool/main/n/nginx/nginx.deb",
        "1796190190|O|1000|198.18.7.3|debian/pool/main/n/nginx/nginx.deb",
        "1796190190|O|1000|198.18.7.4|debian/pool/main/n/nginx/nginx.deb",
        "garbage line",
        "1796190190|E|0|198.18.7.4|debian/missing",
    ]) + "\n"
    assert aptcache.parse_transfer_log(log) == {"fetched_bytes": 1000, "fetched_files": 1, "served_bytes": 3000,
                                                "served_files": 3, "hit_files": 2}
    assert aptcache.parse_transfer_log("")["served_bytes"] == 0


def test_stats_of_an_instance_without_a_cache_is_none(monkeypatch, tmp_path):
    monkeypatch.setattr(aptcache.hosts, "HOSTS_DIR", tmp_path)
    assert aptcache.stats("nocache") is None


def test_alive_needs_the_recorded_process():
    assert not aptcache.alive(None)
    assert not aptcache.alive({"pid": 0})
    assert not aptcache.alive({"pid": 2 ** 22 + 1, "start_time": 1, "cmdline": [aptcache.BINARY]})


def test_up_flag_is_opt_in():
    args = cli.parser().parse_args(["sandbox", "up", "--name", "x"])
    assert args.apt_cache is False
    assert cli.parser().parse_args(["sandbox", "up", "--name", "x", "--apt-cache"]).apt_cache is True


def test_inotify_limit_leaves_room_for_twenty_hosts_and_never_lowers():
    from ssedeploy.sandbox import hosts
    assert hosts.inotify_limit_for(128, 20) >= 128 + 10 * 20  # ~10 inotify instances per booted host
    assert hosts.inotify_limit_for(128, 100) == 128 + hosts.INOTIFY_PER_HOST * 100
    assert hosts.inotify_limit_for(65536, 20) == 65536


def test_raise_and_restore_inotify_limit(monkeypatch, tmp_path):
    from ssedeploy.sandbox import hosts
    knob, saved = tmp_path / "max_user_instances", tmp_path / "run" / "inotify.orig"
    knob.write_text("128\n")
    monkeypatch.setattr(hosts, "INOTIFY_INSTANCES", knob)
    hosts.raise_inotify_limit(20, saved)
    assert int(knob.read_text()) >= hosts.INOTIFY_FLOOR and saved.read_text() == "128\n"
    hosts.raise_inotify_limit(200, saved)  # a second instance: the machine's own value stays saved
    assert saved.read_text() == "128\n"
    hosts.restore_inotify_limit(saved)
    assert knob.read_text() == "128\n" and not saved.exists()
