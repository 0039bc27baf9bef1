"""Helpers for pyinfra inventory files, and reading one without connecting (testinfra hosts from an
inventory: ssedeploy/testinfra_hosts.py)."""

from __future__ import annotations

import sys

from . import node, sandbox
from .settings import host_data

# Host data: the Node.js download site of the host's sandbox instance (`sandbox status --json`'s node_mirror),
# the default Node mirror for sandbox hosts, so inventories that set their own `app` data still use it.
NODE_MIRROR_KEY = "sandbox_node_mirror"
# Host data: the host's sandbox instance's ACME CA (ssedeploy/sandbox/acme.py), from `sandbox status --json`'s
# field of the same name without `sandbox_`: its directory URL, the CA file (on this machine) its HTTPS listener's
# certificate chains to, the host's own DNS name there and the instance's site name (its first host's).
ACME_DIRECTORY_KEY = "sandbox_acme_directory"
ACME_CA_KEY = "sandbox_acme_ca"
ACME_NAME_KEY = "sandbox_acme_name"
ACME_SITE_KEY = "sandbox_acme_site"
ACME_KEYS = {key.removeprefix("sandbox_"): key for key in (ACME_DIRECTORY_KEY, ACME_CA_KEY, ACME_NAME_KEY, ACME_SITE_KEY)}


def node_mirror(settings, data) -> str:
    """Where a host's official Node builds come from: app.node_mirror, else its sandbox instance's mirror,
    else the Node.js project's site. `data`: the host's data (pyinfra's host.data or an inventory's dict)."""
    return settings.app.node_mirror or data.get(NODE_MIRROR_KEY) or node.OFFICIAL_MIRROR


def inventory_hosts(inventory_path: str, limit: list[str] | None = None) -> list[tuple[str, dict]]:
    """(name, all data: pyinfra's connection data and ssedeploy's settings, merged per field) of each host,
    offline.

    `limit` takes host or group names, like pyinfra's --limit.
    """
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_state

    make_inventory = _make_inventory()

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


def _make_inventory():
    """pyinfra's own inventory loader, imported without the gevent monkey-patching that importing
    pyinfra_cli does to the whole process (for pyinfra's CLI): reading an inventory needs none of it, and
    the process importing it here (`ssedeploy check`, tests) keeps real threads and sockets."""
    if "pyinfra_cli" in sys.modules:
        from pyinfra_cli.inventory import make_inventory
        return make_inventory
    from gevent import monkey

    patch_all = monkey.patch_all
    monkey.patch_all = lambda *args, **kwargs: None
    try:
        from pyinfra_cli.inventory import make_inventory
    finally:
        monkey.patch_all = patch_all
    return make_inventory


def sandbox_hosts(name: str | None = None) -> list[tuple[str, dict]]:
    """pyinfra host entries for the running hosts of a sandbox instance (host keys checked)."""
    name = name or sandbox.current_name()
    hosts = sandbox.status(name)
    if not hosts:
        sys.exit(
            f"ssedeploy: sandbox {name!r} has no running host: start it with "
            f"`ssedeploy sandbox up --name {name}` (or `make demo`)"
        )
    return [sandbox_host(h) for h in hosts]


def sandbox_host(info: dict) -> tuple[str, dict]:
    """The pyinfra host entry of one host of `sandbox status --json`."""
    return (info["name"], {
        "ssh_hostname": info["address"],
        "ssh_port": info["port"],
        "ssh_user": info["ssh_user"],
        "ssh_key": info["ssh_key"],
        "ssh_known_hosts_file": info["known_hosts"],
        "ssh_strict_host_key_checking": "yes",  # pyinfra's default is accept-new
        "_sudo": True,
        **({NODE_MIRROR_KEY: info["node_mirror"]} if info.get("node_mirror") else {}),
        **{key: info[field] for field, key in ACME_KEYS.items() if info.get(field)},
    })
