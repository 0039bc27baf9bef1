"""testinfra suite for any inventory: `pytest tests/host --inventory inventories/prod.py [--limit web-1]`.

The hosts, SSH user, key, port, sudo and known_hosts come from the pyinfra inventory
itself (no second host list); host keys are always checked. `ssedeploy verify` runs
this; every test is parametrized by host, so a failure names the host.
"""

from __future__ import annotations

import time

import pytest
from pyinfra.facts.hardware import Cpus

from ssedeploy import acme
from ssedeploy import nginx as conf
from ssedeploy.facts import AcmeCerts, AppInstances, open_files_limit, parse_instances
from ssedeploy.instances import HostInstances, live_port
from ssedeploy.paths import app_dir
from ssedeploy.inventory import inventory_hosts, inventory_topology
from ssedeploy.settings import parse
from ssedeploy.testinfra_hosts import testinfra_host
from ssedeploy.topology import app_peers, private_address

DIAGNOSTIC_PATTERNS = ("upstream timed out", "worker_connections are not enough", "upstream prematurely closed",
                       "setrlimit")


def pytest_addoption(parser):
    parser.addoption("--inventory", help="pyinfra inventory file whose hosts to check")
    parser.addoption("--limit", help="comma-separated host or group names")


def _hosts(config):
    path = config.getoption("--inventory")
    if not path:
        raise pytest.UsageError("tests/host needs --inventory PATH (a pyinfra inventory)")
    limit = config.getoption("--limit")
    hosts = inventory_hosts(path, limit.split(",") if limit else None)
    if not hosts:
        raise pytest.UsageError(f"no host in {path}" + (f" matching --limit {limit}" if limit else ""))
    return hosts


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        hosts = _hosts(metafunc.config)
        metafunc.parametrize("target", hosts, ids=[name for name, _ in hosts], indirect=True, scope="session")


class Layout:
    """The inventory's topology (ssedeploy/topology.py) and every host's data, for what one host's tests need
    of the others (a proxy's upstream, an app host's firewall)."""

    def __init__(self, path: str):
        self.topology = inventory_topology(path)
        self.data = dict(inventory_hosts(path))

    def settings(self, name: str):
        return parse(self.data[name], name, offline=True)

    def proxy_addresses(self) -> dict[str, str | None]:
        return {p: private_address(self.settings(p).nginx.private_address, self.data[p].get("ssh_hostname"))
                for p in self.topology.proxies}

    def peers(self, name: str) -> list[tuple[int, str]]:
        return app_peers(self.topology, name, self.settings(name).app.instance_ports, self.proxy_addresses())


_layouts: dict[str, Layout] = {}


def layout(config) -> Layout:
    path = config.getoption("--inventory")
    if path not in _layouts:
        _layouts[path] = Layout(path)
    return _layouts[path]


class Target:
    """One inventory host: its name, settings, testinfra host, role in the layout and derived expectations."""

    def __init__(self, name: str, data: dict, layout: Layout):
        self.name = name
        self.data = data
        self.layout = layout
        self.settings = parse(data, name, offline=True)
        self.address = data.get("ssh_hostname") or name
        self.runs_nginx, self.runs_app = layout.topology.is_proxy(name), layout.topology.is_app(name)
        try:
            self.host = testinfra_host(name, data)
        except ValueError as exc:
            pytest.fail(str(exc))

    def needs_nginx(self) -> None:
        if not self.runs_nginx:
            pytest.skip(f"{self.name}: an app host of the cluster: nginx runs on {', '.join(self.layout.topology.proxies)}")

    def needs_app(self) -> None:
        if not self.runs_app:
            pytest.skip(f"{self.name}: a proxy of the cluster: the app runs on {', '.join(self.layout.topology.apps)}")

    def other(self, name: str) -> "Target":
        """Another host of the inventory (the same Target its own tests use)."""
        if name not in _targets:
            _targets[name] = Target(name, self.layout.data[name], self.layout)
        return _targets[name]

    @property
    def limits(self) -> conf.Limits:
        # The deploy's own reads (pyinfra's Cpus, ssedeploy's NofileHardLimit), so both derive the same sizes.
        cpus = self.host.check_output(Cpus().command())
        hard = self.host.check_output(open_files_limit(1, "hard"))
        return conf.limits(self.settings, int(cpus) if cpus.isdigit() else 1, int(hard) if hard.isdigit() else None)

    def instances(self) -> HostInstances:
        """The app's instances as the deploy reads them (its own fact's command and parser)."""
        app = self.settings.app
        command = AppInstances().command(app=app.name, app_dir=app_dir(self.settings), ports=app.instance_ports,
                                         revision_port=self.settings.site.revision_port,
                                         cluster=self.layout.topology.clustered)
        return parse_instances(self.host.check_output(command).splitlines())

    def live_port(self) -> int | None:
        return live_port(self.instances(), self.settings.app.instance_ports)

    def diagnostics(self) -> list[str]:
        if not self.runs_nginx:
            return [f"app host of the cluster: live instance port {self.live_port()}"]
        out = []
        log = self.host.run("tail -n 2000 /var/log/nginx/error.log 2>/dev/null").stdout
        hits = [line for line in log.splitlines() if any(p in line for p in DIAGNOSTIC_PATTERNS)]
        out += [f"error.log: {line}" for line in hits[-10:]] or ["error.log: no known SSE failure message"]
        port = self.settings.site.tls.port if self.settings.site.tls else self.settings.site.listen_port
        streams = self.host.run(f"ss -Htn state established '( sport = :{port} )' | wc -l").stdout.strip()
        out.append(f"open client connections on :{port}: {streams}")
        old = self.host.run("pgrep -c -f '^nginx: worker process is shutting down' || true").stdout.strip()
        out.append(f"old nginx workers still shutting down: {old or 0}")
        tls = self.settings.site.tls
        if tls and tls.mode == "acme":  # the days left, also when nothing fails
            certs, now = self.certs(), int(time.time())
            out.append(acme.describe(certs, acme.plan(self.settings.site.server_names, tls.directory, certs, now), now))
        return out

    def certs(self) -> acme.Certs:
        """The ACME certificate state, as the deploy reads it (its own fact's command and parser)."""
        fact = AcmeCerts()
        return fact.process(self.host.check_output(fact.command(**acme.fact_args(self.settings))).splitlines())


_targets: dict[str, Target] = {}


@pytest.fixture(scope="session")
def target(request) -> Target:
    name, data = request.param
    if name not in _targets:
        _targets[name] = Target(name, data, layout(request.config))
    return _targets[name]


def pytest_terminal_summary(terminalreporter):
    if not _targets:
        return
    terminalreporter.section("ssedeploy diagnostics")
    for name, t in _targets.items():
        try:
            lines = t.diagnostics()
        except Exception as exc:  # diagnostics must never hide the test results
            lines = [f"could not collect: {exc}"]
        for line in lines:
            terminalreporter.write_line(f"{name}: {line}")


def sse_locations(tree: list[dict]) -> dict[str, dict]:
    """Location blocks of a crossplane-parsed `nginx -T`: `args joined` -> {directive: [args lists]}."""
    found = {}
    for d, _ in conf.walk(tree):
        if d["directive"] == "location":
            block = {}
            for c in d.get("block", []):
                block.setdefault(c["directive"], []).append(c["args"])
            found[" ".join(d["args"])] = block
    return found

