"""Run the real commands (ssedeploy, pyinfra) the way a user does, against a test instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from ssedeploy import run_results
from ssedeploy.facts import AppInstances, parse_instances
from ssedeploy.instances import HostInstances, live_port, unit_name
from ssedeploy.inventory import HTTPS_ENV, sandbox_host
from ssedeploy.paths import app_dir
from ssedeploy.settings import Settings, parse
from ssedeploy.testinfra_hosts import testinfra_host

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTANCE = os.environ.get("SSEDEPLOY_TEST_SANDBOX", "e2e")
# The suite's hosts serve plain HTTP (the HTTP/1.1 path on port 80 is what most tests read); the ACME tests
# ask for the sandbox's default, HTTPS from the instance's CA, with HTTPS_ON.
os.environ[HTTPS_ENV] = "0"
HTTPS_ON = {HTTPS_ENV: "1"}


def run(*args: str, check: bool = True, timeout: float = 900, instance: str = INSTANCE,
        env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, SSEDEPLOY_SANDBOX=instance, **(env or {}))
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ssedeploy(*args: str, **kw) -> subprocess.CompletedProcess:
    return run(str(BIN / "ssedeploy"), *args, **kw)


class Results:
    """What a pyinfra run wrote to $SSEDEPLOY_RESULTS (ssedeploy/run_results.py), read strictly: asking
    for an operation a host did not run fails the test, naming the operations it did run, so an
    assertion about a renamed or skipped operation cannot pass."""

    RAN = ("changed", "no change", "failed", "would change", "may change", "not checked")

    def __init__(self, data: dict | None, source: str = "results") -> None:
        self.data, self.source = data, source

    @classmethod
    def read(cls, path: str | Path) -> "Results":
        """The results at `path`; none (`written` false) when the run wrote none (it stopped before
        deploy.py installed the callback, so before any operation)."""
        try:
            return cls(run_results.load(path), str(path))
        except run_results.ResultsError as e:
            if Path(path).exists():
                pytest.fail(str(e))
            return cls(None, str(path))

    @property
    def written(self) -> bool:
        return self.data is not None

    @property
    def hosts(self) -> list[str]:
        """The hosts of the run, in inventory order; fails when the run wrote no results."""
        if self.data is None:
            pytest.fail(f"the run wrote no results ({self.source})")
        return list(self.data["hosts"])

    def operations(self, host: str) -> list[dict]:
        """{name, result, files} of every operation of `host`, in pyinfra's order (results not run included)."""
        if host not in self.hosts:
            pytest.fail(f"host {host} is not in the run's results; its hosts: {self.hosts}")
        return self.data["hosts"][host]["operations"]

    def _one(self, host: str, op: str, ran: bool) -> dict:
        ops = self.operations(host)
        found = [o for o in ops if o["name"] == op and (o["result"] in self.RAN or not ran)]
        if len(found) != 1:
            did = "\n  ".join(f"{o['name']}: {o['result']}" for o in ops if o["result"] in self.RAN)
            what = "ran twice (ambiguous)" if found else "did not run" if ran else "is not an operation of this run"
            pytest.fail(f"operation {op!r} {what} on {host}; the operations that ran there:\n  {did or '(none)'}")
        return found[0]

    def of(self, host: str, op: str) -> str:
        """How `op` ended on `host` ("changed", "no change", "failed"; dry: "would change", ...); fails the
        test when `op` did not run on `host` (renamed, skipped, or after the host failed)."""
        return self._one(host, op, ran=True)["result"]

    def planned(self, host: str, op: str) -> str:
        """Like `of`, but "not run" is an answer too (an operation after the host failed); fails the test
        only when `op` is no operation of `host` in this run at all."""
        return self._one(host, op, ran=False)["result"]

    def files(self, host: str, op: str) -> list[str]:
        """The files `op` named on `host` (what `drift` lists); fails like `of`."""
        return self._one(host, op, ran=True)["files"]

    def failed_at(self, host: str) -> str | None:
        self.operations(host)
        return self.data["hosts"][host]["failed_at"]

    def error(self, host: str) -> str:
        """What the operation the host failed at wrote to stderr (its last lines)."""
        failed = self.failed_at(host)
        if failed is None:
            pytest.fail(f"{host} did not fail: no error to read")
        return "\n".join(self._one(host, failed, ran=True)["error"])

    def changed(self) -> list[tuple[str, str]]:
        """(host, operation) of every operation that changed something (or would, dry)."""
        return [(h, o["name"]) for h in self.hosts for o in self.operations(h) if o["result"] in run_results.CHANGES]

    def ran(self) -> list[tuple[str, str]]:
        """(host, operation) of every operation executed on a host; none when the run wrote no results."""
        if self.data is None or not self.data["executed"]:
            return []
        return [(h, o["name"]) for h in self.hosts for o in self.operations(h) if o["result"] != "not run"]


class Ran(subprocess.CompletedProcess):
    """A finished pyinfra run: the process (returncode, stdout, stderr) and its `results`."""

    def __init__(self, process: subprocess.CompletedProcess, results: Results) -> None:
        super().__init__(process.args, process.returncode, process.stdout, process.stderr)
        self.results = results


def pyinfra(*args: str, env: dict | None = None, **kw) -> Ran:
    """`pyinfra ARGS` with SSEDEPLOY_RESULTS pointed at a temporary file: the process and its parsed results."""
    with tempfile.TemporaryDirectory(prefix="ssedeploy-e2e-results-") as tmp:
        path = Path(tmp) / "results.json"
        process = run(str(BIN / "pyinfra"), *args, env={**(env or {}), "SSEDEPLOY_RESULTS": str(path)}, **kw)
        return Ran(process, Results.read(path))


def pyinfra_deploy(**kw) -> Ran:
    return pyinfra("-y", "inventories/sandbox.py", "deploy.py", **kw)


def write_inventory(data: dict, tmp_dir: Path, instance: str = INSTANCE, per_host: dict | None = None) -> Path:
    """An inventory of the instance's hosts with extra data for all; `per_host` replaces top-level keys for some."""
    inventory = tmp_dir / f"inventory_{abs(hash(repr((data, per_host))))}.py"
    inventory.write_text(
        "from ssedeploy.inventory import sandbox_hosts\n"
        f"per_host = {per_host or {}!r}\n"
        f"hosts = [(name, {{**data, **{data!r}, **per_host.get(name, {{}})}}) for name, data in sandbox_hosts({instance!r})]\n"
    )
    return inventory


def deploy_args(data: dict, tmp_dir: Path, instance: str = INSTANCE, per_host: dict | None = None,
                limit: str | None = None) -> list[str]:
    inventory = write_inventory(data, tmp_dir, instance, per_host)
    return [str(BIN / "pyinfra"), "-y", *(["--limit", limit] if limit else []), str(inventory), str(REPO / "deploy.py")]


def deploy_with(data: dict, tmp_dir: Path, instance: str = INSTANCE, check: bool = False, env: dict | None = None,
                per_host: dict | None = None, limit: str | None = None) -> Ran:
    """Deploy with extra inventory data for every host of the instance (a settings change)."""
    return pyinfra(*deploy_args(data, tmp_dir, instance, per_host, limit)[1:], check=check, instance=instance, env=env)


def start_deploy(data: dict, tmp_dir: Path, instance: str = INSTANCE, env: dict | None = None,
                 limit: str | None = None) -> subprocess.Popen:
    """deploy_with, in the background: the caller waits for it (or kills it). It runs in `tmp_dir`, so
    what a killed or cut run leaves behind (pyinfra-debug.log) stays out of the checkout."""
    return subprocess.Popen(
        deploy_args(data, tmp_dir, instance, limit=limit), cwd=tmp_dir, text=True,
        env=dict(os.environ, SSEDEPLOY_SANDBOX=instance, PYTHONPATH=str(REPO), **(env or {})),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


@contextmanager
def booted(name: str, *up_args: str):
    """`sandbox up` an instance; yield (the up result, its hosts from `status --json`); always `down` it."""
    try:
        up = ssedeploy("sandbox", "up", "--name", name, *up_args, check=False)
        hosts = json.loads(ssedeploy("sandbox", "status", "--name", name, "--json").stdout) if up.returncode == 0 else []
        yield up, hosts
    finally:
        ssedeploy("sandbox", "down", "--name", name, check=False)


def host_of(info: dict):
    """testinfra Host for one entry of `sandbox status --json` (host key checked, sudo like the deploy)."""
    return testinfra_host(*sandbox_host(info))


def instances(host, settings: Settings | None = None, cluster: bool = False) -> HostInstances:
    """The app's instances on a testinfra host, read with the deploy's own fact (default settings' app);
    `cluster`: an app host of a cluster (its live instance is the one it recorded)."""
    settings = settings or parse({})
    app = settings.app
    command = AppInstances().command(app=app.name, app_dir=app_dir(settings), ports=app.instance_ports,
                                     revision_port=settings.site.revision_port, cluster=cluster)
    return parse_instances(host.check_output(command).splitlines())


def live_app_port(host, settings: Settings | None = None) -> int:
    """The port of the instance nginx sends new connections to."""
    settings = settings or parse({})
    port = live_port(instances(host, settings), settings.app.instance_ports)
    assert port is not None, "nginx sends to no app instance"
    return port


def live_unit(host, settings: Settings | None = None) -> str:
    """The unit of the instance nginx sends new connections to."""
    settings = settings or parse({})
    return unit_name(settings.app.name, live_app_port(host, settings))


def main_pid(host, settings: Settings | None = None) -> str:
    """The main process of the live instance."""
    return host.check_output(f"systemctl show -p MainPID --value {live_unit(host, settings)}")
