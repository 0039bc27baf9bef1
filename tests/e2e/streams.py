"""SSE clients that reconnect like an EventSource (with Last-Event-ID), for the fault tests.

They reconnect at once instead of after the server's `retry:` delay, so a test sees
the outage itself rather than the client's back-off.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ssedeploy.sse import StreamResult, read_stream


@dataclass
class Connection:
    result: StreamResult
    ended_at: float  # wall clock
    last_event_id: int | None  # what this request sent

    @property
    def event_times(self) -> list[float]:
        return [self.result.started_at + e.t_ms / 1000 for e in self.result.events]


@dataclass
class Client:
    connections: list[Connection] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return [int(i) for c in self.connections for i in c.result.ids]

    @property
    def statuses(self) -> set[int]:
        return {c.result.status for c in self.connections}

    @property
    def event_times(self) -> list[float]:
        return [t for c in self.connections for t in c.event_times]


def follow(address: str, seconds: float, path: str = "/api/stream", port: int = 80, pause: float = 0.1) -> Client:
    """Read the stream for `seconds`, reconnecting with the last id seen whenever it ends."""
    client = Client()
    deadline = time.time() + seconds
    last = None
    while (left := deadline - time.time()) > 0:
        result = read_stream(address, port, path, duration=left, last_event_id=last)
        client.connections.append(Connection(result, time.time(), last))
        if result.ids:
            last = int(result.ids[-1])
        if time.time() < deadline:
            time.sleep(pause)
    return client


def crowd(count: int, address: str, seconds: float, **kw) -> "Crowd":
    """`count` clients following the stream in threads; `.join()` returns their Client records."""
    pool = ThreadPoolExecutor(max_workers=count)
    return Crowd(pool, [pool.submit(follow, address, seconds, **kw) for _ in range(count)])


@dataclass
class Crowd:
    pool: ThreadPoolExecutor
    futures: list

    def join(self) -> list[Client]:
        try:
            return [f.result() for f in self.futures]
        finally:
            self.pool.shutdown()


def consecutive(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids))) if ids else False
