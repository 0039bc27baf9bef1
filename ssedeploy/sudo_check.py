"""Can this run drive the host's sudo? Asked once, before any fact or operation, with pyinfra's own flags.

pyinfra 3.10 runs every privileged command as `sudo -H -n sh -c ...` (pyinfra/connectors/util.py) and only
asks for a password after a failure line it knows. sudo-rs, Ubuntu 26.04's sudo, accepts `-H` (a no-op there)
and `-n`, so a login user with passwordless sudo works as on any other distro; but sudo-rs 0.2.11 and later
word the password case `sudo: interactive authentication is required`, a line pyinfra 3.10 does not know
(pyinfra#1499), and sudo-rs before 0.2.11 (Ubuntu 25.10) has no `-A` for pyinfra's password retry (#1502).
Without this check such a host fails at its first fact with a bare sudo line; with it the run stops before
anything changes and says what to do.
"""

from __future__ import annotations

from pyinfra.api.exceptions import PyinfraError
from pyinfra.connectors.ssh import SSHConnector

PROBE = "sudo -H -n true"  # the flags pyinfra 3.10 passes when no sudo password is set


class SudoUnusable(PyinfraError):
    """The host's sudo cannot be driven unattended."""


def advice(host: str, user: str, status: int, output: str) -> str | None:
    """What to do about a failed probe; None when sudo works."""
    if status == 0:
        return None
    said = " ".join(output.split()) or "(nothing)"
    if "password is required" in said or "interactive authentication is required" in said:
        return (f"{host}: sudo asks {user} for a password, and ssedeploy runs unattended: give {user} passwordless "
                f"sudo (as root on the host: echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{user} && "
                f"chmod 440 /etc/sudoers.d/{user}). sudo said: {said}")
    if "invalid option" in said or "unrecognized option" in said:
        return (f"{host}: this host's sudo refuses `{PROBE}`, the flags pyinfra uses for every command (sudo-rs "
                f"before 0.2.11?): update sudo-rs (Ubuntu 26.04's works), or switch the host to the classic sudo "
                f"(as root: update-alternatives --set sudo /usr/bin/sudo.ws). sudo said: {said}")
    if status == 127:
        return (f"{host}: there is no sudo on the host for {user}: install it and give {user} passwordless sudo, "
                f"or connect as root (ssh_user root, no _sudo). The shell said: {said}")
    return f"{host}: `{PROBE}` failed for {user} (exit {status}); passwordless sudo is needed. sudo said: {said}"


def check(host) -> None:
    """Probe HOST's sudo on its own SSH channel; raise SudoUnusable with what to do."""
    user = host.data.get("ssh_user")
    if not host.data.get("_sudo") or user == "root" or host.data.get("_sudo_password"):
        return
    if not isinstance(host.connector, SSHConnector) or host.connector.client is None:
        return
    channel = host.connector.client.get_transport().open_session()
    channel.set_combine_stderr(True)
    channel.exec_command(PROBE)
    output = channel.makefile("rb").read().decode("utf-8", "replace")  # paramiko reads bytes
    message = advice(host.name, user or "the login user", channel.recv_exit_status(), output)
    if message:
        raise SudoUnusable(message)
