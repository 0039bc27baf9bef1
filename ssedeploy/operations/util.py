"""What ssedeploy's operations share (as pyinfra.operations.util does for pyinfra's)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pyinfra import host
from pyinfra.facts.hardware import Cpus

from .. import nginx
from ..facts import NofileHardLimit
from ..settings import Settings

# The host-side scripts the operations upload and run.
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def report_differences(paths: list[str]) -> None:
    """Name what the current operation would change: logged once while pyinfra plans, and recorded for
    this host and operation in the run's results (what `drift` lists). Not while the facts of a run are read
    ahead (ssedeploy/round_trips.py): the operation is planned again when it runs."""
    from ..round_trips import planning_ahead
    from ..run_results import name_files
    if planning_ahead():
        return
    name_files(host, paths)


def detached(name: str, command: str) -> str:
    """Run `command` as a transient systemd unit and wait for it: a dropped SSH connection cannot cut it
    in half, and its output and exit status still come back.

    Tests only: $SSEDEPLOY_TEST_FAULT=NAME=POINT on the controller kills the host-side script of the unit
    NAME at its fault point POINT (SSEDEPLOY_FAULT_AT in the scripts), as a power cut there would."""
    fault = os.environ.get("SSEDEPLOY_TEST_FAULT", "")
    target, _, point = fault.partition("=")
    setenv = f" --setenv=SSEDEPLOY_FAULT_AT={point}" if fault and target == name else ""
    return f"systemd-run --quiet --wait --pipe --collect{setenv} --unit={name}-{secrets.token_hex(3)} {command}"


# The facts host_limits reads ((fact, args, kwargs), for ssedeploy/round_trips.py's read_ahead).
LIMIT_FACTS = [(Cpus, (), {}), (NofileHardLimit, (), {})]


def host_limits(settings: Settings) -> nginx.Limits:
    # Cpus is None when getconf prints nothing useful: size for one CPU rather than fail.
    return nginx.limits(settings, host.get_fact(Cpus) or 1, host.get_fact(NofileHardLimit))
