"""The facts ssedeploy reads from hosts: their commands run by /bin/sh here, their parsing."""

import hashlib
import resource
import subprocess

import pytest

from ssedeploy.facts import NginxRevisions, NginxVersion, NofileHardLimit, PathStates, open_files_limit


def sh(command: str) -> list[str]:
    """Output lines of `command` under /bin/sh (dash on Debian, as on the hosts), as pyinfra hands them to a fact."""
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()


def test_nginx_revisions_are_revisions_or_none():
    fact = NginxRevisions()
    assert fact.process(["live 0123456789abcdef", "served fedcba9876543210"]) == {
        "live": "0123456789abcdef", "served": "fedcba9876543210"}
    # Nothing answers on the revision port, or ssedeploy never put a config live.
    assert fact.process(["live ", "served "]) == {"live": None, "served": None}
    assert fact.process(["live 0123456789abcdef", "served <html>502</html>"])["served"] is None
    assert "/var/lib/x/revision" in fact.command(port=8573, state_dir="/var/lib/x")
    assert NginxRevisions.default() == {"live": None, "served": None}  # no bash: both unknown


def test_nginx_version_is_read_only_where_nginx_is_installed():
    fact = NginxVersion()
    assert fact.process(["nginx version: nginx/1.22.1"]) == "1.22.1"
    assert fact.requires_command() == "/usr/sbin/nginx" and NginxVersion.default() is None


@pytest.fixture
def tree(tmp_path):
    """A file, a link, a directory and an absent path, all with spaces in their paths."""
    base = tmp_path / "with space"
    base.mkdir()
    (base / "a file").write_text("content\n")
    (base / "a link").symlink_to("../target with space")
    (base / "a dir").mkdir()
    return base


def test_path_states_handle_spaces_in_paths_and_link_targets(tree):
    paths = [str(tree / name) for name in ("a file", "a link", "a dir", "not there")]
    states = PathStates().process(sh(PathStates().command(paths=paths)))
    assert states == {
        paths[0]: ("F", hashlib.sha256(b"content\n").hexdigest()),
        paths[1]: ("L", "../target with space"),
        paths[2]: ("D", ""),
        paths[3]: None,
    }


@pytest.mark.parametrize("path", ["/tmp/a\tb", "/tmp/a\nb"])
def test_path_states_refuse_a_path_their_output_cannot_carry(path):
    with pytest.raises(ValueError, match="tab or newline"):
        PathStates().command(paths=[path])


def test_the_open_files_read_is_the_kernels_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # /proc/self is awk itself, which inherits this process's limits.
    assert sh(open_files_limit("self", "soft")) == [str(soft) if soft != resource.RLIM_INFINITY else "unlimited"]
    assert sh(open_files_limit("self", "hard")) == [str(hard) if hard != resource.RLIM_INFINITY else "unlimited"]
    assert NofileHardLimit().command() == open_files_limit(1, "hard")
    assert NofileHardLimit().process(["524288"]) == 524288 and NofileHardLimit().process(["unlimited"]) is None
