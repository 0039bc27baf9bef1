"""Which hosts run nginx and which run the app, from the inventory's groups (pure; tables in
tests/unit/test_topology.py).

Without the groups `proxies` and `apps` (or with every host in both) each host is one whole site: nginx
and the app side by side, nginx's upstream on loopback, as before. With them, the inventory is a cluster:
proxies run nginx with an upstream of every app host (least_conn: streams are long-lived, so they are
spread by count), app hosts run the app on `app.bind`, their private address, reachable by the proxies
only, and a release rolls over the app hosts `app.rolling_batch` at a time (roles/cluster.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

PROXIES = "proxies"
APPS = "apps"


@dataclass(frozen=True)
class Topology:
    proxies: tuple[str, ...] = ()  # in inventory order
    apps: tuple[str, ...] = ()
    clustered: bool = False

    def is_proxy(self, name: str) -> bool:
        return not self.clustered or name in self.proxies

    def is_app(self, name: str) -> bool:
        return not self.clustered or name in self.apps


def topology(hosts: Sequence[str], groups: Mapping[str, Sequence[str]]) -> Topology:
    """The layout of `hosts` (inventory order) given `groups` (group name -> host names). Raises ValueError
    naming the host when the groups do not make one: one group without the other, a host in neither."""
    proxies = tuple(h for h in hosts if h in set(groups.get(PROXIES, ())))
    apps = tuple(h for h in hosts if h in set(groups.get(APPS, ())))
    if not proxies and not apps:
        return Topology()
    if set(proxies) == set(apps) == set(hosts):  # every host whole: today's single-host layout, once per host
        return Topology(proxies, apps, clustered=False)
    for group, members in ((PROXIES, proxies), (APPS, apps)):
        if not members:
            other = APPS if group == PROXIES else PROXIES
            raise ValueError(f"the inventory has a group `{other}` but no `{group}`: a cluster needs both "
                             f"(proxies run nginx, apps run the app), or neither for one whole host each")
    for name in hosts:
        if name not in proxies and name not in apps:
            raise ValueError(f"host {name}: in neither `{PROXIES}` nor `{APPS}`: in a cluster every host is a "
                             "proxy (nginx), an app host, or both")
    return Topology(proxies, apps, clustered=True)


def batches(apps: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """The app hosts in the order a release rolls over them: `size` at a time, inventory order."""
    return [tuple(apps[i:i + size]) for i in range(0, len(apps), size)]


def refusals(topo: Topology, binds: Mapping[str, str], rolling: Mapping[str, int],
             addresses: Mapping[str, str | None], overlap: Mapping[str, tuple[int, int]] | None = None,
             shutdown: Mapping[str, int] | None = None) -> list[str]:
    """What stops a cluster before any host is touched: an app host bound to loopback (no proxy could reach
    it), app hosts that disagree on app.rolling_batch, a proxy whose private address is unknown (the app
    hosts' firewall admits the proxies by it), an app host whose drain outlasts a proxy's old workers.
    `binds`/`rolling`: each app host's app.bind and app.rolling_batch; `addresses`: each proxy's private
    address (None: unknown); `overlap`: each app host's (app.drain_seconds, app.stop_timeout); `shutdown`: each
    proxy's nginx.worker_shutdown_timeout."""
    if not topo.clustered:
        return []
    out = []
    for name in topo.apps:
        if ipaddress.ip_address(binds[name]).is_loopback:
            out.append(f"host {name}: app.bind = {binds[name]!r}: an app host of a cluster must listen on the "
                       "private address its proxies reach it at (the app stays unreachable from elsewhere: the "
                       "firewall admits the proxies only)")
    first = topo.apps[0]
    for name in topo.apps[1:]:
        if rolling[name] != rolling[first]:
            out.append(f"host {name}: app.rolling_batch = {rolling[name]!r}: differs from host {first}'s "
                       f"{rolling[first]!r}: one release rolls over all app hosts, set it once for the group")
    for name in topo.apps if overlap and shutdown else ():
        drain, stop = overlap[name]
        for proxy in topo.proxies:
            if drain + stop >= shutdown[proxy]:
                out.append(f"host {name}: app.drain_seconds = {drain!r}: app.drain_seconds + app.stop_timeout "
                           f"({drain + stop} s) must stay below host {proxy}'s nginx.worker_shutdown_timeout "
                           f"({shutdown[proxy]} s): the old instance must end its streams (with a short retry:) "
                           "before the proxy's old workers cut them")
                break
    for name in topo.proxies:
        if not addresses.get(name):
            out.append(f"host {name}: nginx.private_address is not set and ssh_hostname is not an IP address: "
                       "the app hosts' firewall admits the proxies by the address their connections come from")
    return out


def settings_refusals(topo: Topology, settings: Mapping, addresses: Mapping[str, str | None]) -> list[str]:
    """`refusals` read from every host's Settings (`settings`: host name -> Settings)."""
    return refusals(topo, {n: settings[n].app.bind for n in topo.apps},
                    {n: settings[n].app.rolling_batch for n in topo.apps}, addresses,
                    {n: (settings[n].app.drain_seconds, settings[n].app.stop_timeout) for n in topo.apps},
                    {n: settings[n].nginx.worker_shutdown_timeout for n in topo.proxies})


def private_address(setting: str | None, ssh_hostname: str | None) -> str | None:
    """A proxy's address as app hosts see it: nginx.private_address, else ssh_hostname if it is an IP."""
    if setting:
        return setting
    try:
        return str(ipaddress.ip_address(ssh_hostname or ""))
    except ValueError:
        return None


def app_peers(topo: Topology, name: str, ports: Sequence[int], addresses: Mapping[str, str | None]) -> list[tuple[int, str]]:
    """(port, source) for each of app host `name`'s instance `ports` and each other proxy's address: what its
    firewall admits besides SSH (nothing unless `name` is an app host of a cluster)."""
    if not topo.clustered or name not in topo.apps:
        return []
    return [(port, addresses[p]) for p in topo.proxies if p != name and addresses.get(p) for port in ports]


def limit_refusal(topo: Topology, limited: Collection[str] | None) -> str | None:
    """Why a run limited to `limited` hosts (pyinfra's --limit; None: not limited) cannot run: app hosts
    without every proxy, whose switch to their release would never happen while their old instance drains."""
    if not topo.clustered or limited is None:
        return None
    apps = [a for a in topo.apps if a in limited]
    missing = [p for p in topo.proxies if p not in limited]
    if not apps or not missing:
        return None
    return (f"host {apps[0]}: this run is limited to app hosts ({', '.join(apps)}) without the proxies "
            f"{', '.join(missing)}: every proxy switches to an app host's release before its old instance drains; "
            f"include them (--limit {PROXIES},{','.join(apps)}) or run without --limit")
