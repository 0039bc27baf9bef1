"""Disposable local hosts (systemd-nspawn) that behave like fresh cloud servers."""

import os

from .instance import SandboxError, Unreachable, down, down_stale, status, up  # noqa: F401
from .rootfs import DISTROS  # noqa: F401

DEFAULT_NAME = "demo"
INSTANCE_ENV = "SSEDEPLOY_SANDBOX"


def current_name(default: str = DEFAULT_NAME) -> str:
    """The instance named by SSEDEPLOY_SANDBOX, else `default` (`demo`, what `--name` defaults to)."""
    return os.environ.get(INSTANCE_ENV) or default
