"""The facts ssedeploy reads from hosts: their commands run by /bin/sh here, their parsing."""

import hashlib
import os
import resource
import subprocess

import pytest

from ssedeploy.facts import (AppInstances, NginxRevisions, NginxVersion, NofileHardLimit, PathStates, open_files_limit,
                             parse_instances)
from ssedeploy.instances import Instance, live_port


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


# -- AppInstances on a cluster's app host: the port it recorded, not nginx's ---------------------------

STUB_SYSTEMCTL = r"""#!/bin/sh
# is-active/is-enabled UNIT...: web@4001 runs and starts at boot, nothing else does.
verb=$1; shift
case "$verb $*" in
    "is-active web@4001.service") echo active ;;
    "is-enabled web@4001.service") echo enabled ;;
    is-enabled*) echo disabled; exit 1 ;;
    *) echo inactive; exit 3 ;;
esac
"""


def app_host(tmp_path, live: str | None):
    """An app directory as app-release.sh leaves it (LIVE: the `live` file's text, None: absent), and an
    environment whose systemctl is a stub."""
    app = tmp_path / "web"
    (app / "instances").mkdir(parents=True)
    (app / "instances" / "4000").symlink_to("../releases/R1")
    (app / "instances" / "4001").symlink_to("../releases/R2")
    (app / "current").symlink_to("releases/R2")
    (app / "previous").symlink_to("releases/R1")
    if live is not None:
        (app / "live").write_text(live)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(STUB_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    return app, {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def cluster_fact(app, env) -> list[str]:
    command = AppInstances().command(app="web", app_dir=str(app), ports=(4000, 4001), revision_port=8573, cluster=True)
    return subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_the_cluster_fact_reads_the_recorded_port_and_never_asks_nginx(tmp_path):
    app, env = app_host(tmp_path, "4001\n")
    command = AppInstances().command(app="web", app_dir=str(app), ports=(4000, 4001), revision_port=8573, cluster=True)
    assert "8573" not in command and "/ssedeploy/upstream" not in command and "/etc/nginx" not in command
    lines = cluster_fact(app, env)
    assert lines[0] == "recorded 4001"
    assert not [line for line in lines if line.startswith(("served", "files"))]
    found = parse_instances(lines)
    assert (found.recorded_port, found.served_port, found.files_port) == (4001, None, None)
    assert live_port(found, (4000, 4001)) == 4001
    assert (found.current, found.previous) == ("R2", "R1")
    assert found.instances[4001] == Instance("active", True, "R2", False)
    assert found.instances[4000] == Instance("inactive", False, "R1", False)


@pytest.mark.parametrize("live", [None, "", "garbage\n"])
def test_the_cluster_fact_without_a_recorded_port_knows_none(tmp_path, live):
    app, env = app_host(tmp_path, live)
    lines = cluster_fact(app, env)
    assert lines[0].startswith("recorded")
    assert parse_instances(lines).recorded_port is None


def test_the_single_host_fact_reads_nginx_not_the_recorded_port():
    command = AppInstances().command(app="web", app_dir="/srv/web", ports=(4000, 4001), revision_port=8573)
    assert 'printf "served' in command and 'printf "files' in command
    assert "recorded" not in command and "/srv/web/live" not in command


def test_acme_certs_reads_the_lineage_with_one_openssl(tmp_path):
    """serial, expiry and names from one `openssl x509`, in the lines acme.read_state reads."""
    import shutil

    from ssedeploy.acme import read_state
    from ssedeploy.facts import AcmeCerts

    if not shutil.which("openssl"):
        pytest.skip("no openssl here")
    lineage = tmp_path / "live"
    lineage.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=a.test",
                    "-addext", "subjectAltName=DNS:a.test,DNS:b.test", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(lineage / "cert.pem")], check=True, capture_output=True)
    (tmp_path / "renewal.conf").write_text("server = https://ca.test/dir\n")
    serial = sh(f"openssl x509 -in {lineage}/cert.pem -noout -serial")[0].split("=", 1)[1]
    end = sh(f"openssl x509 -in {lineage}/cert.pem -noout -enddate")[0].split("=", 1)[1]
    lines = sh(AcmeCerts().command(lineage=str(lineage), renewal=str(tmp_path / "renewal.conf"), live_dir=str(tmp_path),
                                   port=1, server_name="a.test"))
    assert lines[:4] == [f"serial {serial}", f"enddate {end}", "san     DNS:a.test, DNS:b.test",
                         "server https://ca.test/dir"]
    certs = read_state(lines)
    assert certs.lineage.names == ("a.test", "b.test") and certs.lineage.serial == serial
    assert certs.lineage.server == "https://ca.test/dir" and certs.served is None
