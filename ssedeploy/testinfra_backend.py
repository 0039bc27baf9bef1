"""testinfra hosts whose SSH host keys are checked against a known_hosts file.

testinfra's paramiko backend accepts unknown host keys with a warning and reads no
known_hosts file; this backend is the same with the client built from known_hosts
and paramiko's RejectPolicy, so a wrong or unknown host key fails the connection.
"""

from __future__ import annotations

import functools

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


def get_host(address: str, *, user: str, key: str, known_hosts: str, port: int = 22, sudo: bool = True):
    """A testinfra Host over SSH that checks the host key; `sudo` like the deploy's `_sudo`."""
    backend = KnownHostsParamikoBackend(
        f"{user}@{address}:{port}", known_hosts=known_hosts, ssh_identity_file=key, sudo=sudo,
    )
    return testinfra.host.Host(backend)
