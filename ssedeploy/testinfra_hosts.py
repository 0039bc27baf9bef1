"""Inventory hosts as testinfra hosts: tests/host and the e2e tests reach the hosts a pyinfra inventory names
with the inventory's own connection data (no second host list), host keys always checked.

`ssedeploy.inventory.inventory_hosts` reads an inventory's `(name, data)` without connecting;
`testinfra_host(name, data)` turns one into a testinfra host.

testinfra's paramiko backend accepts unknown host keys with a warning and reads no known_hosts file; the
backend here is the same with the client built from known_hosts and paramiko's RejectPolicy, so a wrong or
unknown host key fails the connection.
"""

from __future__ import annotations

import functools
import os

import paramiko
import testinfra.host
from testinfra.backend.paramiko import ParamikoBackend


class KnownHostsParamikoBackend(ParamikoBackend):
    NAME = "paramiko+known_hosts"

    def __init__(self, hostspec: str, known_hosts: str, **kwargs):
        self.known_hosts = known_hosts
        super().__init__(hostspec, **kwargs)

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.host.name, port=int(self.host.port or 22), username=self.host.user,
            key_filename=self.ssh_identity_file, timeout=self.timeout,
            allow_agent=self.ssh_identity_file is None, look_for_keys=self.ssh_identity_file is None,
        )
        return client


def get_host(address: str, *, user: str, key: str | None, known_hosts: str, port: int = 22,
             sudo: bool = True) -> testinfra.host.Host:
    """A testinfra Host over SSH that checks the host key; `sudo` like the deploy's `_sudo`."""
    backend = KnownHostsParamikoBackend(
        f"{user}@{address}:{port}", known_hosts=known_hosts, ssh_identity_file=key, sudo=sudo,
    )
    return testinfra.host.Host(backend)


def testinfra_host(name: str, data: dict) -> testinfra.host.Host:
    """The testinfra Host of one inventory host, from pyinfra's connection data as pyinfra reads it
    (`ssh_hostname` or the name, `ssh_user`, `ssh_key`, `ssh_port`, `ssh_known_hosts_file`, `_sudo`).
    Connects on first use. Raises ValueError without a known_hosts file: host keys must be checked."""
    known_hosts = data.get("ssh_known_hosts_file")
    if not known_hosts:
        raise ValueError(f"{name}: ssh_known_hosts_file is not set: host keys must be checked")
    return get_host(
        data.get("ssh_hostname") or name, user=data.get("ssh_user") or os.environ.get("USER", "root"),
        key=os.path.expanduser(data["ssh_key"]) if data.get("ssh_key") else None,
        known_hosts=os.path.expanduser(known_hosts), port=int(data.get("ssh_port") or 22),
        sudo=bool(data.get("_sudo")),
    )
