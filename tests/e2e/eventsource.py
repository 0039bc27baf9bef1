"""Many EventSource-like clients in one process, for release tests and benchmarks.

Each client behaves as a browser's EventSource over plain HTTP/1.1: it sends Last-Event-ID once it
has seen an id, reconnects after the last `retry:` it received (3000 ms before any) whenever the
stream ends or the connection fails, and gives up for good on a non-200 answer or a Content-Type
other than text/event-stream. Unlike tests/e2e/streams.py, which reconnects at once to see the
outage itself, these wait as browsers do, so the numbers are what users would see.

All clients run as coroutines on one asyncio loop in a background thread: a thousand streams cost a
thousand sockets, not a thousand threads. Everything they see is recorded with wall-clock times
(`Client`, `Connection`); `report()` turns the records into the figures of a release.

    fleet = Fleet(host, 80, "/api/stream", 1000, stagger_s=0.002).start()
    # over HTTPS: Fleet(address, 443, ..., tls=ssl.create_default_context(cafile=roots), server_name=name)
    fleet.wait_streaming(30)
    prober = fleet.prober(every_s=0.2).start()
    since = fleet.mark(); release(); until = fleet.mark()
    print(report(fleet.stop(), prober.stop(), since, until).table_row())
"""

from __future__ import annotations

import asyncio
import math
import resource
import ssl
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar, Sequence

from ssedeploy.nginx import FALLBACK_HEADER as _FALLBACK
from ssedeploy.sse import Block, _Blocks, _Chunked

DEFAULT_RETRY_MS = 3000  # browsers' reconnection time before the server sets one
FALLBACK_HEADER = _FALLBACK.lower()  # on nginx's own `retry:` answer while the app is down

# How a connection ended.
CLOSED = "server closed"  # the stream ended (cleanly or not): the client reconnects
ERROR = "error"  # no usable answer (refused, reset, timeout, garbage): the client reconnects
STOPPED = "client stopped"
GAVE_UP = "gave up"  # non-200 or not text/event-stream: the client never reconnects


@dataclass
class Connection:
    """One request of a client, with wall-clock times (time.time())."""

    opened_at: float
    last_event_id: str | None  # what the request sent
    retry_ms: int  # the reconnection time in force; at the end, the wait before the next request
    status: int = 0  # 0: no answer
    content_type: str | None = None
    fallback: bool = False  # the answer carried X-Ssedeploy-Fallback
    answered_at: float | None = None  # response headers complete
    events: list[tuple[str | None, float]] = field(default_factory=list)  # (the block's id, arrival)
    end: str | None = None
    ended_at: float | None = None
    error: str | None = None

    @property
    def first_event_at(self) -> float | None:
        return self.events[0][1] if self.events else None

    def finish(self, end: str, error: str | None = None) -> None:
        if self.end is None:
            self.end, self.ended_at, self.error = end, time.time(), error


@dataclass
class Client:
    """One EventSource: its connections in order, and the state it carries between them."""

    index: int = 0
    connections: list[Connection] = field(default_factory=list)
    retry_ms: int = DEFAULT_RETRY_MS
    last_id: str = ""  # sent as Last-Event-ID when not empty
    gave_up: str | None = None  # why, once it stopped reconnecting
    stopped_at: float | None = None  # when it stopped running (stop, probe done, gave up)

    @property
    def events(self) -> list[tuple[str | None, float]]:
        return [e for c in self.connections for e in c.events]

    @property
    def first_event_at(self) -> float | None:
        return next((c.first_event_at for c in self.connections if c.events), None)

    @property
    def opened_at(self) -> float | None:
        return self.connections[0].opened_at if self.connections else None

    @property
    def first_event_s(self) -> float | None:
        """From the first request to the first event, through any fallback answers and retries."""
        first = self.first_event_at
        return None if first is None else first - self.opened_at


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    path: str
    connect_timeout_s: float
    tls: ssl.SSLContext | None = None  # HTTPS (HTTP/1.1, as a browser's EventSource without HTTP/2)
    server_name: str | None = None  # Host header and SNI, when not the address

    def request(self, last_id: str) -> bytes:
        name = self.server_name or self.host
        host = name if self.port == (443 if self.tls else 80) else f"{name}:{self.port}"
        headers = {"Host": host, "Accept": "text/event-stream", "Cache-Control": "no-cache",
                   "Accept-Encoding": "gzip, deflate"}  # what browsers send, minus br (no stdlib decoder)
        if last_id:
            headers["Last-Event-ID"] = last_id
        lines = [f"GET {self.path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Body:
    """The response body as the app wrote it: de-chunked, cut at Content-Length, decompressed."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.chunked = _Chunked() if "chunked" in headers.get("transfer-encoding", "").lower() else None
        length = headers.get("content-length")
        self.left = int(length) if length is not None and not self.chunked else None
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise ValueError(f"content-encoding {encoding} not supported")
        self.inflate = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding != "identity" else None

    @property
    def done(self) -> bool:
        # Keep-alive: the server does not close after a complete body, so its end must be seen.
        return bool(self.chunked and self.chunked.done) or self.left == 0

    def feed(self, data: bytes) -> bytes:
        if self.chunked:
            data = self.chunked.feed(data)
        elif self.left is not None:
            data = data[: self.left]
            self.left -= len(data)
        return self.inflate.decompress(data) if self.inflate else data


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def _refusal(status: int, content_type: str | None) -> str | None:
    """Why a browser would fail the connection for good (WHATWG: no reconnection), or None."""
    if status != 200:  # redirects are not followed: none is expected in front of a stream
        return f"status {status}"
    if (content_type or "").split(";")[0].strip().lower() != "text/event-stream":
        return f"content-type {content_type}"
    return None


def _take(client: Client, conn: Connection, block: Block, at: float) -> None:
    """Apply a block's fields in order, as the WHATWG parser does, and record it if it is an event."""
    for name, value in block.fields:
        if name == "id" and "\0" not in value:
            client.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            client.retry_ms = conn.retry_ms = int(value)
    if block.is_event:
        conn.events.append((block.event_id, at))


async def _connect(client: Client, conn: Connection, target: _Target, first_event_only: bool) -> None:
    """One request: read the answer until it ends; `conn.end` says how."""
    writer = None
    try:
        tls = {"ssl": target.tls, "server_hostname": target.server_name or target.host} if target.tls else {}
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port, **tls),
                                                target.connect_timeout_s)
        writer.write(target.request(client.last_id))
        head = await reader.readuntil(b"\r\n\r\n")
        conn.answered_at = time.time()
        conn.status, headers = _parse_head(head)
        conn.content_type, conn.fallback = headers.get("content-type"), FALLBACK_HEADER in headers
        if refusal := _refusal(conn.status, conn.content_type):
            client.gave_up = refusal
            return conn.finish(GAVE_UP, refusal)
        body, blocks = _Body(headers), _Blocks()
        while not body.done and (data := await reader.read(65536)):
            at = time.time()
            for block in blocks.feed(body.feed(data), 0.0):
                _take(client, conn, block, at)
            if first_event_only and conn.events:
                return conn.finish(STOPPED)
        conn.finish(CLOSED)
    except (OSError, EOFError, ValueError, IndexError, asyncio.TimeoutError, asyncio.LimitOverrunError,
            zlib.error) as exc:
        conn.finish(ERROR, f"{type(exc).__name__}: {exc}")
    finally:
        if writer:
            writer.close()


async def _follow(client: Client, target: _Target, first_event_only: bool = False) -> None:
    """The EventSource: connect, read, wait `retry`, reconnect, until stopped or given up."""
    try:
        while True:
            conn = Connection(time.time(), client.last_id or None, client.retry_ms)
            client.connections.append(conn)
            await _connect(client, conn, target, first_event_only)
            if client.gave_up or (first_event_only and conn.events):
                return
            await asyncio.sleep(client.retry_ms / 1000)
    finally:  # also on cancellation (stop, probe timeout)
        if client.connections:
            client.connections[-1].finish(STOPPED)
        client.stopped_at = time.time()


class _Loop:
    """One asyncio loop in a daemon thread, driven from the caller's thread."""

    def __init__(self) -> None:
        if "gevent.monkey" in sys.modules and sys.modules["gevent.monkey"].is_module_patched("threading"):
            # A patched thread is a greenlet: an asyncio loop in it would block every other one, for good.
            raise RuntimeError("gevent has monkey-patched threading in this process (pyinfra_cli was imported): "
                               "the EventSource clients need a real thread")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="eventsource", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _raise_fd_limit(need: int) -> None:
    """One socket per stream: 1,000 streams pass the usual soft limit of 1,024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        wanted = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _cancel(tasks: list[asyncio.Task]) -> None:
    """Cancel until done: before Python 3.12, wait_for() swallows a cancellation that comes just as
    what it waits for finishes (a refused connect), and the client would go on reconnecting."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
    _raise_first(tasks)


def _raise_first(tasks: list[asyncio.Task]) -> None:
    """A client's coroutine that died of anything but cancellation is a bug here: do not hide it."""
    for task in tasks:
        if not task.cancelled() and task.exception():
            raise task.exception()


class Fleet:
    """`count` EventSource clients of HOST:PORT PATH, started `stagger_s` apart."""

    def __init__(self, host: str, port: int, path: str = "/api/stream", count: int = 1, *,
                 stagger_s: float = 0.0, connect_timeout_s: float = 10.0, tls: ssl.SSLContext | None = None,
                 server_name: str | None = None) -> None:
        self.target = _Target(host, port, path, connect_timeout_s, tls, server_name)
        self.stagger_s = stagger_s
        self.clients = [Client(i) for i in range(count)]
        self._loop: _Loop | None = None
        self._tasks: list[asyncio.Task] = []
        self._probers: list[Prober] = []

    def start(self) -> Fleet:
        _raise_fd_limit(len(self.clients) + 256)
        self._loop = _Loop()
        self._tasks = self._loop.run(self._spawn())
        return self

    async def _spawn(self) -> list[asyncio.Task]:
        async def staggered(client: Client, delay: float) -> None:
            await asyncio.sleep(delay)
            await _follow(client, self.target)
        return [asyncio.create_task(staggered(c, c.index * self.stagger_s)) for c in self.clients]

    def wait_streaming(self, timeout_s: float, every_s: float = 0.05) -> None:
        """Poll until every client has had an event; TimeoutError (or RuntimeError if one gave up) if not."""
        deadline = time.monotonic() + timeout_s
        while waiting := [c for c in self.clients if c.first_event_at is None]:
            if given_up := [c for c in waiting if c.gave_up]:
                raise RuntimeError(f"{len(given_up)} clients gave up before an event: {given_up[0].gave_up}")
            if died := [t for t in self._tasks if t.done() and not t.cancelled() and t.exception()]:
                raise died[0].exception()
            if time.monotonic() > deadline:
                last = waiting[0].connections[-1:] or [None]
                raise TimeoutError(f"{len(waiting)} of {len(self.clients)} clients had no event within "
                                   f"{timeout_s} s; client {waiting[0].index}'s last connection: {last[0]}")
            time.sleep(every_s)

    @staticmethod
    def mark() -> float:
        """Now, on the records' clock (wall clock): the bounds of a window for report()."""
        return time.time()

    def prober(self, every_s: float = 0.5, timeout_s: float = 10.0) -> Prober:
        """A Prober of the same stream on this fleet's loop (start it; fleet.stop() stops it too)."""
        prober = Prober(self.target.host, self.target.port, self.target.path, every_s=every_s,
                        timeout_s=timeout_s, connect_timeout_s=self.target.connect_timeout_s, _fleet=self)
        prober.target = self.target  # the same scheme and name (HTTPS) as the fleet's
        self._probers.append(prober)
        return prober

    def stop(self) -> list[Client]:
        """Close every stream (end: client stopped) and return the clients' records."""
        for prober in self._probers:
            prober.stop()
        if self._loop:
            try:
                self._loop.run(_cancel(self._tasks))
            finally:
                self._loop.close()
                self._loop = None
        return self.clients


class Prober:
    """Opens a new EventSource every `every_s` from start() to stop(); each runs until its first event
    (through fallback answers and retries, as a page opened at that moment would) or `timeout_s`."""

    def __init__(self, host: str, port: int, path: str = "/api/stream", *, every_s: float = 0.5,
                 timeout_s: float = 10.0, connect_timeout_s: float = 5.0, _fleet: Fleet | None = None) -> None:
        self.target = _Target(host, port, path, connect_timeout_s)
        self.every_s, self.timeout_s = every_s, timeout_s
        self.probes: list[Client] = []
        self._fleet = _fleet  # shares its loop
        self._loop: _Loop | None = None
        self._opener: asyncio.Task | None = None
        self._running: list[asyncio.Task] = []

    def start(self) -> Prober:
        if self._fleet is not None and self._fleet._loop is None:
            raise RuntimeError("start the fleet before its prober")
        self._loop = self._fleet._loop if self._fleet is not None else _Loop()
        self._opener = self._loop.run(self._spawn())
        return self

    async def _spawn(self) -> asyncio.Task:
        return asyncio.create_task(self._open_every())

    async def _open_every(self) -> None:
        loop, start = asyncio.get_running_loop(), asyncio.get_running_loop().time()
        while True:
            probe = Client(len(self.probes))
            self.probes.append(probe)
            self._running.append(asyncio.create_task(self._probe(probe)))
            # On a fixed schedule: a slow loop opens late, not fewer probes over the window.
            await asyncio.sleep(max(0.0, start + len(self.probes) * self.every_s - loop.time()))

    async def _probe(self, probe: Client) -> None:
        task = asyncio.create_task(_follow(probe, self.target, first_event_only=True))
        await asyncio.wait([task], timeout=self.timeout_s)
        await _cancel([task])  # timed out: recorded as no first event, its connection "client stopped"

    async def _finish(self) -> None:
        await _cancel([self._opener])
        if self._running:
            await asyncio.wait(self._running)
        _raise_first(self._running)

    def stop(self) -> list[Client]:
        """Stop opening probes, let the open ones finish (first event or timeout), return all of them."""
        if self._opener is not None:
            try:
                self._loop.run(self._finish(), self.timeout_s + 30)
            finally:
                self._opener = None
                if self._fleet is None:
                    self._loop.close()
                self._loop = None
        return self.probes


@dataclass
class Cut:
    """A stream that delivered events and was ended by the server side."""

    at: float  # when it ended
    gap_s: float  # from its last event to the client's next event (or to the client's stop: not recovered)
    retry_s: float  # the reconnection time in force when it ended
    recovered: bool


def cuts(client: Client, since: float = -math.inf, until: float = math.inf) -> list[Cut]:
    """The client's cuts that happened in [since, until]. Connections that never delivered an event
    (refused, fallback answers) are not cuts of their own: they lie inside the gap of the one before."""
    found = []
    for i, conn in enumerate(client.connections):
        if conn.end in (CLOSED, ERROR) and conn.events and since <= conn.ended_at <= until:
            after = next((c.first_event_at for c in client.connections[i + 1:] if c.events), None)
            last_seen = after if after is not None else (client.stopped_at or conn.ended_at)
            found.append(Cut(conn.ended_at, last_seen - conn.events[-1][1], conn.retry_ms / 1000,
                             after is not None))
    return found


def id_holes(client: Client, since: float = -math.inf, until: float = math.inf) -> tuple[int, int]:
    """(lost, repeated) ids between consecutive events whose interval overlaps [since, until].
    Ids are the server's consecutive integers; a restart that ignores Last-Event-ID shows as repeats."""
    seq = [(int(i), t) for i, t in client.events if i is not None and i.lstrip("-").isdigit()]
    lost = repeated = 0
    for (a, ta), (b, tb) in zip(seq, seq[1:]):
        if tb >= since and ta <= until:
            lost, repeated = lost + max(0, b - a - 1), repeated + max(0, a - b + 1)
    return lost, repeated


@dataclass
class Report:
    """The figures of a window (a release) over a fleet's clients and a prober's probes."""

    clients: int
    clients_cut: int  # clients whose stream the server ended at least once in the window
    max_cuts_per_client: int
    worst_gap_s: float | None  # last event before a cut -> first event after it
    worst_gap_minus_retry_s: float | None  # that gap beyond the retry the client had to wait anyway
    clients_unrecovered: int  # cut, and no event after it before the client stopped
    lost_ids: int
    repeated_ids: int
    non_200: int  # answers in the window (clients and probes)
    fallback_answers: int
    failed_connects: int  # requests with no answer at all (refused, reset, timeout)
    gave_up: int  # clients that stopped reconnecting for good
    probes: int
    probe_worst_first_event_s: float | None
    probes_without_event: int

    HEADER: ClassVar[list[str]] = [
        "clients", "cut", "max cuts", "worst gap s", "gap - retry s", "unrecovered", "lost ids", "repeated ids",
        "non-200", "fallback", "failed connects", "gave up", "probes", "probe worst first event s", "probes no event"]

    def as_dict(self) -> dict:
        return asdict(self)

    def table_row(self) -> list[str]:
        """Cells in HEADER's order (bench.common.table)."""
        return [_cell(getattr(self, f.name)) for f in fields(self)]


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _max(values) -> float | None:
    values = list(values)
    return round(float(max(values)), 3) if values else None


def report(clients: Sequence[Client], probes: Sequence[Client] = (), since: float = -math.inf,
           until: float = math.inf) -> Report:
    """What the clients and probes saw in [since, until] (wall clock, e.g. Fleet.mark() around a release)."""
    all_cuts = [cuts(c, since, until) for c in clients]
    flat = [cut for per_client in all_cuts for cut in per_client]
    holes = [id_holes(c, since, until) for c in clients]
    answers = [conn for c in [*clients, *probes] for conn in c.connections if since <= conn.opened_at <= until]
    window_probes = [p for p in probes if p.opened_at is not None and since <= p.opened_at <= until]
    return Report(
        clients=len(clients),
        clients_cut=sum(1 for per_client in all_cuts if per_client),
        max_cuts_per_client=max((len(per_client) for per_client in all_cuts), default=0),
        worst_gap_s=_max(cut.gap_s for cut in flat),
        worst_gap_minus_retry_s=_max(cut.gap_s - cut.retry_s for cut in flat),
        clients_unrecovered=sum(1 for per_client in all_cuts if any(not cut.recovered for cut in per_client)),
        lost_ids=sum(lost for lost, _ in holes),
        repeated_ids=sum(repeated for _, repeated in holes),
        non_200=sum(1 for conn in answers if conn.status not in (0, 200)),
        fallback_answers=sum(1 for conn in answers if conn.fallback),
        failed_connects=sum(1 for conn in answers if conn.status == 0 and conn.end == ERROR),
        gave_up=sum(1 for c in clients if c.gave_up),
        probes=len(window_probes),
        probe_worst_first_event_s=_max(p.first_event_s for p in window_probes if p.first_event_s is not None),
        probes_without_event=sum(1 for p in window_probes if p.first_event_at is None),
    )
