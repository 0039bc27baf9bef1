"""End-to-end fixtures: a sandbox instance of the tests' own, deployed with the real CLI commands.

The instance is `e2e` (or $SSEDEPLOY_TEST_SANDBOX), never the user's demo; it is torn
down at the end of the session, and a crashed earlier run's leftovers are adopted by
`sandbox up`. These tests never skip: on the CI machine they must run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssedeploy.testinfra_backend import get_host

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTANCE = os.environ.get("SSEDEPLOY_TEST_SANDBOX", "e2e")


def run(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, SSEDEPLOY_SANDBOX=INSTANCE)
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ssedeploy(*args: str, **kw) -> subprocess.CompletedProcess:
    return run(str(BIN / "ssedeploy"), *args, **kw)


def pyinfra_deploy(**kw) -> subprocess.CompletedProcess:
    return run(str(BIN / "pyinfra"), "-y", "inventories/sandbox.py", "deploy.py", **kw)


@pytest.fixture(scope="session")
def sandbox_hosts():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests boot sandbox hosts and need root (run `make test` as root)")
    try:
        ssedeploy("sandbox", "up", "--name", INSTANCE)
        status = json.loads(ssedeploy("sandbox", "status", "--name", INSTANCE, "--json").stdout)
        assert status, "sandbox up succeeded but status lists no host"
        yield status
    finally:
        ssedeploy("sandbox", "down", "--name", INSTANCE, check=False)


@pytest.fixture(scope="session")
def first_deploy(sandbox_hosts):
    return pyinfra_deploy()


@pytest.fixture(scope="session")
def target(sandbox_hosts, first_deploy):
    """The deployed sandbox host, as a dict from `sandbox status --json`."""
    return sandbox_hosts[0]


@pytest.fixture(scope="session")
def host(target):
    """testinfra Host over SSH with the host key checked, sudo like the deploy."""
    return get_host(target["address"], user=target["ssh_user"], key=target["ssh_key"],
                    known_hosts=target["known_hosts"])


@pytest.fixture
def redeploy(target):
    """Run the same deploy command again."""
    return pyinfra_deploy
