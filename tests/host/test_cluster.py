"""A cluster (inventory groups `proxies` and `apps`, ssedeploy/topology.py): every proxy sends to every app
host at the instance that host recorded live, balanced by least_conn; the app hosts answer the proxies only."""

from __future__ import annotations

import socket

import pytest

from ssedeploy.nginx import address, parse_dump, upstream_name, walk


def clustered(target) -> None:
    if not target.layout.topology.clustered:
        pytest.skip(f"{target.name}: not a cluster (no inventory groups proxies and apps)")


def test_the_proxy_sends_to_every_app_host_at_its_live_instance_by_least_conn(target):
    clustered(target)
    target.needs_nginx()
    tree = parse_dump(target.host.check_output("nginx -T 2>/dev/null"))
    name = upstream_name(target.settings)
    blocks = [d for d, _ in walk(tree) if d["directive"] == "upstream" and d["args"] == [name]]
    assert len(blocks) == 1, f"{target.name}: expected one upstream {name}, found {len(blocks)}"
    found = {d["directive"]: [] for d in blocks[0]["block"]}
    for d in blocks[0]["block"]:
        found[d["directive"]].append(d["args"])
    assert "least_conn" in found, f"{target.name}: upstream {name} is not balanced by least_conn"
    want = []
    for app_host in target.layout.topology.apps:
        other = target.other(app_host)
        port = other.live_port()
        assert port is not None, f"{app_host}: no instance recorded live"
        want.append(address(other.settings.app.bind, port))
    servers = [args[0] for args in found.get("server", [])]
    assert sorted(servers) == sorted(want), f"{target.name}: upstream {name} sends to {servers}, the app hosts serve at {want}"


def reaches(host, addr: str, port: int) -> bool:
    return host.run(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}'").rc == 0


def test_the_app_answers_the_proxies_and_nobody_else(target):
    clustered(target)
    target.needs_app()
    bind, port = target.settings.app.bind, target.live_port()
    for proxy in target.layout.topology.proxies:
        if proxy != target.name:
            assert reaches(target.other(proxy).host, bind, port), f"{proxy} cannot reach {target.name}'s app at {bind}:{port}"
    if not target.settings.firewall.enabled:
        pytest.skip(f"{target.name}: firewall.enabled is false: anyone on its network reaches the app")
    for other in target.layout.topology.apps:
        if other != target.name and other not in target.layout.topology.proxies:
            assert not reaches(target.other(other).host, bind, port), \
                f"{other}, not a proxy, reaches {target.name}'s app at {bind}:{port}"
    try:  # this machine (the controller running the checks) is no proxy either
        socket.create_connection((bind, port), timeout=3).close()
    except OSError:
        return
    pytest.fail(f"{target.name}: the app at {bind}:{port} answers this machine, which is not a proxy")
