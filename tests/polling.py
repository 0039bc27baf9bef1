"""Waiting in tests (unit and e2e): poll a condition until a deadline, never a fixed sleep."""

from __future__ import annotations

import time

import pytest


def wait_until(condition, seconds: float, what: str, every: float = 0.2):
    """Poll `condition` until it returns a true value (returned) or the deadline passes (the test fails)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"not within {seconds} s: {what}")
