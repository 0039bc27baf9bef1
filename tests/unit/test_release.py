"""Releases built on the controller: assembly, stable hashes, env files, secrets."""

import os
import tarfile

import pytest

from roles.app import environment
from ssedeploy import release
from ssedeploy.settings import SettingsError, parse


def make_next_project(root):
    (root / ".next/standalone/node_modules/next").mkdir(parents=True)
    (root / ".next/standalone/server.js").write_text("// server\n")
    (root / ".next/standalone/node_modules/next/index.js").write_text("x\n")
    (root / ".next/static/chunks").mkdir(parents=True)
    (root / ".next/static/chunks/a.js").write_text("a\n")
    (root / ".next/cache").mkdir()
    (root / ".next/cache/big").write_text("not released\n")
    (root / "public").mkdir()
    (root / "public/logo.svg").write_text("<svg/>\n")
    (root / "src").mkdir()
    (root / "src/page.js").write_text("source, not released\n")


def test_next_standalone_is_assembled_with_static_and_public(tmp_path):
    make_next_project(tmp_path)
    names = [rel for rel, _ in release.release_files(str(tmp_path))]
    assert names == [".next/static/chunks/a.js", "node_modules/next/index.js", "public/logo.svg", "server.js"]


def test_plain_directory_is_released_as_is(tmp_path):
    (tmp_path / "server.js").write_text("x\n")
    assert [rel for rel, _ in release.release_files(str(tmp_path))] == ["server.js"]


def test_hash_is_stable_and_follows_content_and_mode(tmp_path):
    (tmp_path / "server.js").write_text("x\n")
    first = release.content_hash(release.release_files(str(tmp_path)))
    os.utime(tmp_path / "server.js", (0, 0))
    assert release.content_hash(release.release_files(str(tmp_path))) == first  # mtimes do not count
    (tmp_path / "server.js").chmod(0o755)
    assert release.content_hash(release.release_files(str(tmp_path))) != first
    (tmp_path / "server.js").write_text("y\n")
    assert release.content_hash(release.release_files(str(tmp_path))) != first


def test_archive_holds_the_release_owned_by_root(tmp_path):
    make_next_project(tmp_path)
    archive, rel = release.build(str(tmp_path))
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    assert sorted(m.name for m in members) == [r for r, _ in release.release_files(str(tmp_path))]
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 0)}
    assert len(rel) == 16


def test_env_file_quotes_and_escapes():
    text = release.env_file({"B": 'say "hi" \\ bye', "A": "1"})
    assert text == 'A="1"\nB="say \\"hi\\" \\\\ bye"\n'


def test_secrets_come_from_the_environment_or_the_secrets_file(tmp_path, monkeypatch):
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# kept out of git\nexport FROM_FILE='file value'\nBOTH=file\n")
    settings = parse({"app": {"env": {"PLAIN": "p"}, "secret_env": ["FROM_ENV", "FROM_FILE", "BOTH"],
                              "secrets_file": str(secrets)}})
    monkeypatch.setenv("FROM_ENV", "env value")
    monkeypatch.setenv("BOTH", "env wins")
    assert environment(settings, "web-1") == {
        "PLAIN": "p", "FROM_ENV": "env value", "FROM_FILE": "file value", "BOTH": "env wins"}
    monkeypatch.delenv("FROM_ENV")
    with pytest.raises(SettingsError, match="host web-1: app.secret_env: FROM_ENV has no value"):
        environment(settings, "web-1")


@pytest.mark.parametrize("app,field", [
    ({"env": {"PORT": "1"}}, "app.env"),
    ({"env": {"1BAD": "x"}}, "app.env.1BAD"),
    ({"env": {"A": "two\nlines"}}, "app.env.A"),
    ({"start": "command"}, "app.command"),
    ({"source": "/does/not/exist"}, "app.source"),
    ({"node": "nodesource"}, "app.node"),
    ({"keep_releases": 1}, "app.keep_releases"),
    ({"secret_env": ["A"], "env": {"A": "x"}}, "app.secret_env"),
])
def test_bad_app_settings_name_the_field(app, field):
    with pytest.raises(SettingsError, match=f"host h: {field}"):
        parse({"app": app}, "h")
