"""Helpers for pyinfra inventory files, and reading one without connecting."""

from __future__ import annotations

import sys

from . import sandbox
from .settings import host_data


def inventory_hosts(inventory_path: str, limit: list[str] | None = None) -> list[tuple[str, dict]]:
    """(name, all data: pyinfra's connection data and ssedeploy's settings, merged per field) of each host,
    offline.

    `limit` takes host or group names, like pyinfra's --limit.
    """
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    state = State()
    with ctx_state.use(state):
        inventory = make_inventory(inventory_path)
    state.init(inventory, Config())
    hosts = []
    with ctx_state.use(state):
        for host in inventory:
            if limit and host.name not in limit and not set(host.groups) & set(limit):
                continue
            hosts.append((host.name, host_data(host)))
    return hosts


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
