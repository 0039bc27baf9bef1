"""Run the real commands (ssedeploy, pyinfra) the way a user does, against a test instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from ssedeploy.testinfra_backend import get_host

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTANCE = os.environ.get("SSEDEPLOY_TEST_SANDBOX", "e2e")


def run(*args: str, check: bool = True, timeout: float = 900, instance: str = INSTANCE,
        env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, SSEDEPLOY_SANDBOX=instance, **(env or {}))
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ssedeploy(*args: str, **kw) -> subprocess.CompletedProcess:
    return run(str(BIN / "ssedeploy"), *args, **kw)


def pyinfra_deploy(**kw) -> subprocess.CompletedProcess:
    return run(str(BIN / "pyinfra"), "-y", "inventories/sandbox.py", "deploy.py", **kw)


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
                per_host: dict | None = None, limit: str | None = None):
    """Deploy with extra inventory data for every host of the instance (a settings change)."""
    return run(*deploy_args(data, tmp_dir, instance, per_host, limit), check=check, instance=instance, env=env)


def start_deploy(data: dict, tmp_dir: Path, instance: str = INSTANCE, env: dict | None = None,
                 limit: str | None = None) -> subprocess.Popen:
    """deploy_with, in the background: the caller waits for it (or kills it). It runs in `tmp_dir`, so
    what a killed or cut run leaves behind (pyinfra-debug.log) stays out of the checkout."""
    return subprocess.Popen(
        deploy_args(data, tmp_dir, instance, limit=limit), cwd=tmp_dir, text=True,
        env=dict(os.environ, SSEDEPLOY_SANDBOX=instance, PYTHONPATH=str(REPO), **(env or {})),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def operation_results(log: str) -> dict[str, list[str]]:
    """pyinfra's log -> {operation name: [per-host result lines]} ("Success", "No changes", "Error")."""
    results: dict[str, list[str]] = {}
    current = None
    for line in log.splitlines():
        if line.startswith("--> Starting operation: "):
            current = line.removeprefix("--> Starting operation: ").strip()
            results.setdefault(current, [])
        elif current and line.strip().startswith("[") and "]" in line:
            results[current].append(line.split("]", 1)[1].strip())
    return results


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
    return get_host(info["address"], user=info["ssh_user"], key=info["ssh_key"], known_hosts=info["known_hosts"])
