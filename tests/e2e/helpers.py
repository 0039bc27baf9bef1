"""Run the real commands (ssedeploy, pyinfra) the way a user does, against a test instance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTANCE = os.environ.get("SSEDEPLOY_TEST_SANDBOX", "e2e")


def run(*args: str, check: bool = True, timeout: float = 900, instance: str = INSTANCE) -> subprocess.CompletedProcess:
    env = dict(os.environ, SSEDEPLOY_SANDBOX=instance)
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ssedeploy(*args: str, **kw) -> subprocess.CompletedProcess:
    return run(str(BIN / "ssedeploy"), *args, **kw)


def pyinfra_deploy(**kw) -> subprocess.CompletedProcess:
    return run(str(BIN / "pyinfra"), "-y", "inventories/sandbox.py", "deploy.py", **kw)
