"""End-to-end fixtures: a sandbox instance of the tests' own, deployed with the real CLI commands.

The instance is `e2e` (or $SSEDEPLOY_TEST_SANDBOX), never the user's demo; it is torn
down at the end of the session, and a crashed earlier run's leftovers are adopted by
`sandbox up`. These tests never skip: on the CI machine they must run.
"""

from __future__ import annotations

import os

import pytest

from .helpers import INSTANCE, booted, pyinfra_deploy, host_of


@pytest.fixture(scope="session")
def sandbox_hosts():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests boot sandbox hosts and need root (run `make test` as root)")
    with booted(INSTANCE) as (up, status):
        assert up.returncode == 0, up.stdout + up.stderr
        assert status, "sandbox up succeeded but status lists no host"
        yield status


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
    return host_of(target)



NOBLE = "e2e-noble"


@pytest.fixture(scope="session")
def noble():
    """An Ubuntu 24.04 host, deployed; skipped only where `sandbox up` says its archive is unreachable (3)."""
    with booted(NOBLE, "--distro", "ubuntu24") as (up, hosts):
        if up.returncode == 3:
            assert "not reachable" in up.stderr or "could not download" in up.stderr, up.stderr
            pytest.skip(f"Ubuntu archive unreachable here: {up.stderr.strip()[:300]}")
        assert up.returncode == 0, up.stdout + up.stderr
        status = hosts[0]
        status["first_deploy"] = pyinfra_deploy(instance=NOBLE)
        yield status


@pytest.fixture(scope="module", params=["debian12", "ubuntu24"])
def deployed(request):
    """(instance, status, testinfra host) of a deployed host of each distro."""
    if request.param == "debian12":
        target = request.getfixturevalue("target")
        return INSTANCE, target, request.getfixturevalue("host")
    info = request.getfixturevalue("noble")
    return NOBLE, info, host_of(info)
