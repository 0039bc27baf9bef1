"""Waiting for streams in e2e tests: polled until a deadline (tests/polling.py), never a fixed sleep."""

from __future__ import annotations

from ssedeploy.sse import StreamResult, read_stream

from ..polling import wait_until

__all__ = ["first_event", "open_streams", "streaming", "wait_until"]


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
