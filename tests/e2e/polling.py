"""Waiting in tests: poll a condition until a deadline, never a fixed sleep."""

from __future__ import annotations

import time

import pytest

from ssedeploy.sse import StreamResult, read_stream


def wait_until(condition, seconds: float, what: str, every: float = 0.2):
    """Poll `condition` until it returns a true value (returned) or the deadline passes (the test fails)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"not within {seconds} s: {what}")


def first_event(address: str, port: int = 80, path: str = "/api/stream") -> StreamResult | None:
    """A stream read until its first event; None when none came within 3 s."""
    result = read_stream(address, port, path, duration=3, until=lambda r: r.events)
    return result if result.events else None


def open_streams(host, port: int = 80) -> int:
    """Established client connections on the host's `port`."""
    return int(host.check_output(f"ss -Htn state established '( sport = :{port} )' | wc -l"))


def streaming(host, address: str, count: int) -> None:
    """Wait until `count` clients are connected and each has had its first event. The app ticks every
    stream an interval after it opened, so once a stream opened after them has its first event, so
    have they."""
    wait_until(lambda: open_streams(host) >= count, 15, f"{count} streams open through nginx")
    wait_until(lambda: first_event(address), 15, "a first event through nginx")
