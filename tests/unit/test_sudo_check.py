"""The sudo probe a deploy runs first (ssedeploy/sudo_check.py): what each failure tells the user to do."""

import io

import pytest
from pyinfra.connectors.ssh import SSHConnector

from ssedeploy import sudo_check


def test_a_working_sudo_says_nothing():
    assert sudo_check.advice("web-1", "admin", 0, "") is None


@pytest.mark.parametrize("output", [
    "sudo: a password is required\n",                         # classic sudo
    "sudo: interactive authentication is required\n",         # sudo-rs >= 0.2.11 (Ubuntu 26.04)
    "sudo-rs: interactive authentication is required\n",      # sudo-rs before 0.2.11
])
def test_a_password_prompt_asks_for_passwordless_sudo(output):
    message = sudo_check.advice("web-1", "admin", 1, output)
    assert message.startswith("web-1: sudo asks admin for a password")
    assert "echo 'admin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/admin" in message
    assert output.strip() in message


def test_a_sudo_that_refuses_pyinfras_flags_is_named_with_both_ways_out():
    message = sudo_check.advice("web-1", "admin", 1, "invalid option provided\nusage: sudo -h | -K | -k | -V\n")
    assert "refuses `sudo -H -n true`" in message
    assert "update-alternatives --set sudo /usr/bin/sudo.ws" in message and "update sudo-rs" in message


def test_no_sudo_at_all_and_anything_else():
    assert "there is no sudo on the host" in sudo_check.advice("h", "deploy", 127, "sh: 1: sudo: not found")
    assert "failed for deploy (exit 1)" in sudo_check.advice("h", "deploy", 1, "")


class _Channel:
    def __init__(self, status, output):
        self.status, self.output, self.ran = status, output, None

    def set_combine_stderr(self, combine):
        assert combine

    def exec_command(self, command):
        self.ran = command

    def makefile(self, mode):
        return io.BytesIO(self.output.encode())

    def recv_exit_status(self):
        return self.status


class _Host:
    def __init__(self, channel, **data):
        self.name, self.data = "web-1", {"ssh_user": "admin", "_sudo": True, **data}
        self.connector = SSHConnector.__new__(SSHConnector)  # no connection: only its client is used
        transport = type("T", (), {"open_session": lambda _: channel})()
        self.connector.client = type("C", (), {"get_transport": lambda _: transport})()


def test_check_runs_pyinfras_sudo_flags_and_raises_what_to_do():
    channel = _Channel(1, "sudo: interactive authentication is required\n")
    with pytest.raises(sudo_check.SudoUnusable, match="web-1: sudo asks admin for a password"):
        sudo_check.check(_Host(channel))
    assert channel.ran == "sudo -H -n true"
    ok = _Channel(0, "")
    sudo_check.check(_Host(ok))
    assert ok.ran == "sudo -H -n true"


@pytest.mark.parametrize("data", [{"_sudo": False}, {"ssh_user": "root"}, {"_sudo_password": "x"}])
def test_check_is_skipped_where_pyinfra_uses_no_sudo_or_has_a_password(data):
    channel = _Channel(1, "sudo: a password is required")
    sudo_check.check(_Host(channel, **data))
    assert channel.ran is None
