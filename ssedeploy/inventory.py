"""Helpers for pyinfra inventory files."""

from __future__ import annotations

import sys

from . import sandbox


def sandbox_hosts(name: str | None = None) -> list[tuple[str, dict]]:
    """pyinfra host entries for the running hosts of a sandbox instance (host keys checked)."""
    name = name or sandbox.current_name()
    hosts = sandbox.status(name)
    if not hosts:
        sys.exit(
            f"ssedeploy: sandbox {name!r} has no running host: start it with "
            f"`ssedeploy sandbox up --name {name}` (or `make demo`)"
        )
    return [
        (h["name"], {
            "ssh_hostname": h["address"],
            "ssh_port": h["port"],
            "ssh_user": h["ssh_user"],
            "ssh_key": h["ssh_key"],
            "ssh_known_hosts_file": h["known_hosts"],
            "ssh_strict_host_key_checking": "yes",  # pyinfra's default is accept-new
            "_sudo": True,
        })
        for h in hosts
    ]
