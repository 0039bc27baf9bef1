"""Helpers for pyinfra inventory files, and reading one without connecting (testinfra hosts from an
inventory: ssedeploy/testinfra_hosts.py)."""

from __future__ import annotations

import os
import sys

from . import node
from .settings import BASE_SITE_KEY, host_data
from .topology import APPS, PROXIES, Topology, topology

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
# Sandbox hosts serve HTTPS from their instance's CA unless this is "0" (plain HTTP, e.g. the e2e suite's
# hosts that test the HTTP/1.1 path on port 80).
HTTPS_ENV = "SSEDEPLOY_SANDBOX_HTTPS"
SANDBOX_EMAIL = "sandbox@example.org"  # the CA account's contact; pebble sends no mail


def node_mirror(settings, data) -> str:
    """Where a host's official Node builds come from: app.node_mirror, else its sandbox instance's mirror,
    else the Node.js project's site. `data`: the host's data (pyinfra's host.data or an inventory's dict)."""
    return settings.app.node_mirror or data.get(NODE_MIRROR_KEY) or node.OFFICIAL_MIRROR


def _load(inventory_path: str):
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_state

    state = State()
    with ctx_state.use(state):
        inventory = _make_inventory()(inventory_path)
    state.init(inventory, Config())
    return state, inventory


def inventory_topology(inventory_path: str) -> Topology:
    """The inventory's layout (ssedeploy/topology.py), offline; ValueError when its groups make none."""
    return inventory_layout(_load(inventory_path)[1])


def inventory_layout(inventory) -> Topology:
    """The layout of a pyinfra inventory's hosts by their groups; ValueError when they make none."""
    return topology([h.name for h in inventory],
                    {group: [h.name for h in inventory if group in h.groups] for group in (PROXIES, APPS)})


def inventory_hosts(inventory_path: str, limit: list[str] | None = None) -> list[tuple[str, dict]]:
    """(name, all data: pyinfra's connection data and ssedeploy's settings, merged per field) of each host,
    offline.

    `limit` takes host or group names, like pyinfra's --limit.
    """
    from pyinfra.context import ctx_state

    state, inventory = _load(inventory_path)
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


def sandbox_hosts(name: str | None = None, https: bool | None = None) -> list[tuple[str, dict]]:
    """pyinfra host entries for the running hosts of a sandbox instance (host keys checked). With `https`
    (default: unless $SSEDEPLOY_SANDBOX_HTTPS is 0) each host's base site is HTTPS with a certificate from the
    instance's ACME CA for its sandbox names (the first host's: the instance's site name first)."""
    from . import sandbox  # only here: every deploy imports this module, and a real inventory needs no sandbox

    name = name or sandbox.current_name()
    if https is None:
        https = os.environ.get(HTTPS_ENV, "1") != "0"
    hosts = sandbox.status(name)
    if not hosts:
        sys.exit(
            f"ssedeploy: sandbox {name!r} has no running host: start it with "
            f"`ssedeploy sandbox up --name {name}` (or `make demo`)"
        )
    return [sandbox_host(h, https) for h in hosts]


def sandbox_site(info: dict) -> dict | None:
    """The site a sandbox host serves by default: HTTPS from its instance's ACME CA (None: no CA recorded)."""
    if not (info.get("acme_directory") and info.get("acme_roots")):
        return None
    names = ([info["acme_site"]] if info.get("acme_first") else []) + [info["acme_name"]]
    return {"server_names": names, "tls": {"mode": "acme", "email": SANDBOX_EMAIL, "directory": info["acme_directory"],
                                           "directory_ca": info["acme_ca"], "roots": info["acme_roots"]}}


def sandbox_host(info: dict, https: bool = True) -> tuple[str, dict]:
    """The pyinfra host entry of one host of `sandbox status --json`."""
    site = sandbox_site(info) if https else None
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
        **({BASE_SITE_KEY: site} if site else {}),
    })
