"""What a run knows of its cluster (ssedeploy/topology.py): every host's settings, which hosts are proxies
and app hosts, and the port each app host serves at. That port is read from the app host itself (the one
its release recorded live) once per run, and updated as the rolling release moves each host
(roles/cluster.py), so every proxy's upstream follows the app hosts, never the other way round.
Controller-side: one pyinfra run is one process.
"""

from __future__ import annotations

from pyinfra import host, inventory

from .facts import AppInstances
from .instances import HostInstances, live_port
from .nginx import address
from .paths import app_dir
from .settings import Settings, SettingsError, for_host
from .inventory import inventory_layout
from .topology import Topology, app_peers, limit_refusal, private_address, settings_refusals

_settings: dict[str, Settings] = {}
_live: dict[str, int] = {}  # app host -> the port every proxy sends to (as this run has moved it)
_loaded: list[Topology] = []  # once per run (deploy.py runs once per host)


def load(offline: bool = False) -> Topology:
    """Every host's settings and the topology, checked once per run before any host is touched: a bad
    value or a layout that cannot work stops the run naming the host, field and value."""
    if _loaded:
        return _loaded[0]
    for other in inventory:
        _settings[other.name] = for_host(other, offline=offline)
    try:
        topo = inventory_layout(inventory)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    problems = settings_refusals(topo, _settings, {n: proxy_address(n) for n in topo.proxies})
    limit = host.state.limit_hosts
    limited = limit_refusal(topo, {h.name for h in limit} if isinstance(limit, list) else None)
    if problems or limited:
        raise SettingsError("\n".join([*problems, *([limited] if limited else [])]))
    _loaded[:] = [topo]
    return topo


def current() -> Topology:
    """The run's topology (an operation used outside ssedeploy's deploys: one whole host)."""
    return _loaded[0] if _loaded else Topology()


def settings_of(name: str) -> Settings:
    return _settings[name] if name in _settings else for_host(inventory.get_host(name))


def proxy_address(name: str) -> str | None:
    """The address a proxy's connections to the app hosts come from."""
    return private_address(settings_of(name).nginx.private_address,
                           inventory.get_host(name).data.get("ssh_hostname"))


def instances(target, settings: Settings) -> HostInstances:
    """An app host's instances; on a cluster's app host the live one is the port it recorded."""
    app = settings.app
    return target.get_fact(AppInstances, app=app.name, app_dir=app_dir(settings), ports=app.instance_ports,
                           revision_port=settings.site.revision_port, cluster=current().clustered)


def _read(name: str) -> int:
    target, settings = inventory.get_host(name), settings_of(name)
    ports = settings.app.instance_ports
    return live_port(instances(target, settings), ports) or ports[0]


def served_port(name: str) -> int:
    """The port of app host `name` every proxy sends to (before its first release: its first instance's)."""
    if name not in _live:
        _live[name] = _read(name)
    return _live[name]


def learn(settings: Settings) -> None:
    """On an app host once its batch's release is live there (at run time, ssedeploy/operations/rendezvous.py):
    the proxies' next switch sends to the port it recorded."""
    _live[host.name] = _read(host.name)


def upstream_servers() -> list[str] | None:
    """A cluster proxy's upstream: every app host's ADDRESS:PORT, as this run has moved them (None: not a
    cluster; the upstream is the host's own app)."""
    topo = current()
    if not topo.clustered:
        return None
    return [address(settings_of(n).app.bind, served_port(n)) for n in topo.apps]


def app_allow(name: str) -> list[tuple[int, str]]:
    """What app host `name`'s firewall admits besides SSH: its instance ports from each proxy."""
    topo = current()
    return app_peers(topo, name, settings_of(name).app.instance_ports,
                     {p: proxy_address(p) for p in topo.proxies} if topo.clustered else {})


def acme_peers(name: str) -> list[str]:
    """A cluster's proxy: the other proxies' addresses, which it asks for HTTP-01 tokens it does not hold."""
    topo = current()
    if not topo.clustered or name not in topo.proxies:
        return []
    return [a for p in topo.proxies if p != name and (a := proxy_address(p))]
