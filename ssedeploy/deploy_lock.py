"""One deploy at a time per host, and a dead SSH connection noticed in seconds.

The lock is `flock` held on the host by a shell on its own SSH channel of this run's
connection. The controller feeds it a newline every KEEPALIVE seconds; the shell
exits, and the kernel drops the lock, when its channel closes (the run ended or the
controller died) or when nothing arrives for LEASE seconds (the network dropped the
connection without closing it). So a dropped deploy never leaves a host locked.

The SSH transport itself gets keepalives and TCP_USER_TIMEOUT: unacknowledged bytes
for DEAD_AFTER seconds end the connection, so a run blocked on a dead host fails
with that host named instead of waiting for TCP's ~15 minutes. DEAD_AFTER is below
LEASE: the controller gives up before the host lets another run in.

Runs wait up to $SSEDEPLOY_LOCK_WAIT seconds (default 300) for the lock, then fail
naming the holder. Drift checks (SSEDEPLOY_DRIFT) take it shared: they wait for a
deploy but not for each other. Each take and release is logged on the host
(`journalctl -t ssedeploy`).
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import threading
import time
from pathlib import Path

from pyinfra import logger
from pyinfra.api.exceptions import PyinfraError
from pyinfra.connectors.ssh import SSHConnector

LOCK = "/run/lock/ssedeploy-deploy.lock"
OWNER = "/run/lock/ssedeploy-deploy.owner"
KEEPALIVE = 5
DEAD_AFTER = 20
LEASE = 30
BUSY = 75  # EX_TEMPFAIL

# Run with `bash -c` on its own channel (it needs bash's `read -t`); every value is an argument.
HOLDER = Path(__file__).with_name("scripts") / "deploy-lock.sh"


class DeployLocked(PyinfraError):
    """Another run holds the host's deploy lock for longer than we wait."""


def owner() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"


def holder_command(shared: bool, wait: float, lock: str = LOCK, owner_file: str = OWNER, lease: int = LEASE) -> str:
    """The shell command that takes the lock and holds it while its stdin is fed (deploy-lock.sh)."""
    args = [lock, owner_file, "-s" if shared else "-x", str(wait), str(BUSY), owner(), str(lease)]
    return shlex.join(["bash", "-c", HOLDER.read_text(), "deploy-lock", *args])


def hold(host, shared: bool = False, wait: float | None = None) -> None:
    """Take HOST's deploy lock for the rest of this process (blocks until taken or fails)."""
    if not isinstance(host.connector, SSHConnector) or host.connector.client is None:
        logger.warning(f"[{host.name}] no deploy lock: it needs pyinfra's SSH connector")
        return
    transport = host.connector.client.get_transport()
    transport.set_keepalive(KEEPALIVE)
    if hasattr(transport.sock, "setsockopt"):  # not through a ProxyJump: that hop's own keepalives apply
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_AFTER * 1000)

    if wait is None:
        value = os.environ.get("SSEDEPLOY_LOCK_WAIT", "300")
        if not value.isdigit():
            raise DeployLocked(f"SSEDEPLOY_LOCK_WAIT = {value!r}: must be whole seconds (0 or more)")
        wait = int(value)
    command = holder_command(shared, wait)
    if host.data.get("_sudo") and host.data.get("ssh_user") != "root":
        command = f"sudo -n {command}"
    channel = transport.open_session()
    channel.exec_command(command)
    line = ""
    for line in channel.makefile("r"):
        if line.startswith("waiting"):
            logger.info(f"[{host.name}] waiting up to {wait} s for the deploy lock, held by: {line[8:].strip()}")
        elif line.strip() == "locked":
            threading.Thread(target=_feed, args=(channel,), daemon=True).start()
            host.ssedeploy_lock = channel  # keep the channel referenced for the whole run
            return
    status = channel.recv_exit_status()
    stderr = channel.makefile_stderr("r").read().strip()
    if status == BUSY:
        raise DeployLocked(f"{host.name}: another deploy holds the lock after {wait} s of waiting: "
                           f"{line[5:].strip() or 'unknown holder'} (set SSEDEPLOY_LOCK_WAIT to wait longer)")
    raise DeployLocked(f"{host.name}: could not take the deploy lock {LOCK} (exit {status}): {stderr}")


def _feed(channel) -> None:
    """Renew the lease until the channel goes away."""
    while not channel.closed:
        try:
            channel.send(b"\n")
        except Exception:  # closed or broken: the holder on the host is gone too
            return
        time.sleep(KEEPALIVE)
