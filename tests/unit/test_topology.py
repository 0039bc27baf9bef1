"""Which hosts run nginx and which run the app (ssedeploy/topology.py): pure, as tables."""

import pytest

from ssedeploy.topology import APPS, PROXIES, Topology, batches, limit_refusal, private_address, refusals, topology

HOSTS = ["a", "b", "c", "d"]


@pytest.mark.parametrize("hosts,groups,want", [
    # no groups: one whole host each, as before clusters
    (HOSTS, {}, Topology()),
    (HOSTS, {"web": ["a", "b"]}, Topology()),                  # other groups do not matter
    (HOSTS, {PROXIES: [], APPS: []}, Topology()),
    # every host in both: one whole host each, not a cluster
    (["a", "b"], {PROXIES: ["a", "b"], APPS: ["b", "a"]}, Topology(("a", "b"), ("a", "b"), clustered=False)),
    # proxies and apps: a cluster, in inventory order (not the groups' order)
    (HOSTS, {PROXIES: ["b", "a"], APPS: ["d", "c"]}, Topology(("a", "b"), ("c", "d"), clustered=True)),
    (HOSTS, {PROXIES: ["d"], APPS: ["c", "a", "b"]}, Topology(("d",), ("a", "b", "c"), clustered=True)),
    # a host in both groups of a cluster is a proxy and an app host
    (["p", "pa", "x"], {PROXIES: ["p", "pa"], APPS: ["pa", "x"]}, Topology(("p", "pa"), ("pa", "x"), clustered=True)),
    # a group member that is not one of the hosts (not in this run) is not in the layout
    (["a", "b"], {PROXIES: ["a", "zz"], APPS: ["b"]}, Topology(("a",), ("b",), clustered=True)),
])
def test_topology(hosts, groups, want):
    assert topology(hosts, groups) == want


@pytest.mark.parametrize("groups,missing,present", [
    ({APPS: ["a", "b"]}, PROXIES, APPS),
    ({PROXIES: ["a", "b"]}, APPS, PROXIES),
    ({PROXIES: [], APPS: ["a"]}, PROXIES, APPS),
])
def test_one_group_without_the_other_is_refused_naming_the_missing_group(groups, missing, present):
    with pytest.raises(ValueError, match=rf"has a group `{present}` but no `{missing}`"):
        topology(["a", "b"], groups)


def test_a_host_in_neither_group_of_a_cluster_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"^host stray: in neither `proxies` nor `apps`"):
        topology(["p", "stray", "x"], {PROXIES: ["p"], APPS: ["x"]})


@pytest.mark.parametrize("name,proxy,app", [("p", True, False), ("x", False, True), ("px", True, True),
                                            ("nobody", False, False)])
def test_a_cluster_says_who_runs_what(name, proxy, app):
    topo = topology(["p", "px", "x"], {PROXIES: ["p", "px"], APPS: ["px", "x"]})
    assert (topo.is_proxy(name), topo.is_app(name)) == (proxy, app)


def test_without_a_cluster_every_host_runs_both():
    for topo in (Topology(), topology(["a"], {PROXIES: ["a"], APPS: ["a"]})):
        assert topo.is_proxy("anyone") and topo.is_app("anyone")


@pytest.mark.parametrize("apps,size,want", [
    (["a", "b", "c"], 1, [("a",), ("b",), ("c",)]),
    (["a", "b", "c"], 2, [("a", "b"), ("c",)]),
    (["a", "b", "c"], 3, [("a", "b", "c")]),
    (["a", "b", "c", "d", "e"], 1, [("a",), ("b",), ("c",), ("d",), ("e",)]),
    (["a", "b", "c", "d", "e"], 2, [("a", "b"), ("c", "d"), ("e",)]),
    (["a", "b", "c", "d", "e"], 3, [("a", "b", "c"), ("d", "e")]),
    (["a", "b", "c"], 5, [("a", "b", "c")]),
])
def test_batches_keep_inventory_order(apps, size, want):
    assert batches(apps, size) == want
    assert [h for batch in batches(apps, size) for h in batch] == apps


CLUSTER = Topology(("p1", "p2"), ("x1", "x2"), clustered=True)
BINDS = {"x1": "10.0.0.11", "x2": "10.0.0.12"}
ROLLING = {"x1": 1, "x2": 1}
ADDRESSES = {"p1": "10.0.0.1", "p2": "10.0.0.2"}


def test_a_sound_cluster_is_not_refused():
    assert refusals(CLUSTER, BINDS, ROLLING, ADDRESSES) == []


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "::1"])
def test_an_app_host_on_loopback_is_refused_naming_host_field_and_value(bind):
    (line,) = refusals(CLUSTER, {**BINDS, "x2": bind}, ROLLING, ADDRESSES)
    assert line.startswith(f"host x2: app.bind = {bind!r}: ")
    assert "private address its proxies reach it at" in line


def test_app_hosts_that_disagree_on_the_batch_are_refused_naming_the_host():
    (line,) = refusals(CLUSTER, BINDS, {"x1": 1, "x2": 2}, ADDRESSES)
    assert line.startswith("host x2: app.rolling_batch = 2: differs from host x1's 1")


def test_a_proxy_without_an_address_is_refused_naming_the_setting():
    (line,) = refusals(CLUSTER, BINDS, ROLLING, {"p1": "10.0.0.1", "p2": None})
    assert line.startswith("host p2: nginx.private_address is not set")
    # ... and a proxy missing from the table altogether
    (line,) = refusals(CLUSTER, BINDS, ROLLING, {"p1": "10.0.0.1"})
    assert line.startswith("host p2: nginx.private_address")


def test_every_refusal_is_reported_at_once():
    lines = refusals(CLUSTER, {"x1": "127.0.0.1", "x2": "::1"}, {"x1": 1, "x2": 3}, {})
    assert [line.split(":")[0] for line in lines] == ["host x1", "host x2", "host x2", "host p1", "host p2"]


@pytest.mark.parametrize("topo", [Topology(), Topology(("a",), ("a",), clustered=False)])
def test_a_layout_that_is_not_a_cluster_is_never_refused(topo):
    # loopback binds and unknown addresses are the single-host layout's normal
    assert refusals(topo, {"a": "127.0.0.1"}, {"a": 1}, {"a": None}) == []


@pytest.mark.parametrize("setting,ssh_hostname,want", [
    ("10.9.9.9", "10.0.0.1", "10.9.9.9"),          # the setting wins
    ("fd00::9", "web-1.example.org", "fd00::9"),
    (None, "10.0.0.1", "10.0.0.1"),                # else ssh_hostname, when it is an IP address
    (None, "fd00::1", "fd00::1"),
    (None, "FD00:0::1", "fd00::1"),                # as nftables and nginx write it
    (None, "web-1.example.org", None),             # a DNS name: unknown
    (None, "localhost", None),
    (None, None, None),
    ("", None, None),
])
def test_private_address(setting, ssh_hostname, want):
    assert private_address(setting, ssh_hostname) == want


@pytest.mark.parametrize("limited,refused", [
    (None, False),                                   # not limited
    ({"p1", "p2", "a1", "a2"}, False),               # everything
    ({"p1", "p2", "a1"}, False),                     # every proxy and one app host
    ({"p1"}, False),                                 # a proxy alone: its upstream follows the app hosts
    ({"a1"}, True),                                  # an app host without the proxies
    ({"p1", "a2"}, True),                            # one proxy missing
])
def test_a_limited_run_takes_every_proxy_along_with_an_app_host(limited, refused):
    topo = topology(["p1", "p2", "a1", "a2"], {"proxies": ["p1", "p2"], "apps": ["a1", "a2"]})
    why = limit_refusal(topo, limited)
    assert (why is not None) == refused
    if refused:
        assert "--limit proxies," in why and "p2" in why


def test_a_limited_run_of_whole_hosts_is_never_refused():
    assert limit_refusal(topology(["w1", "w2"], {}), {"w1"}) is None
