"""Disposable local hosts (systemd-nspawn) that behave like fresh cloud servers."""

import os

from .instance import SandboxError, Unreachable, down, down_stale, status, up  # noqa: F401
from .rootfs import DISTROS  # noqa: F401

DEFAULT_NAME = "demo"


def current_name() -> str:
    """The instance named by SSEDEPLOY_SANDBOX, else `demo` (what `--name` defaults to)."""
    return os.environ.get("SSEDEPLOY_SANDBOX") or DEFAULT_NAME
