"""The EventSource-like load client (tests/e2e/eventsource.py) against a small loopback SSE server,
and report() on hand-made records."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time

import pytest

from tests.e2e.eventsource import (CLOSED, DEFAULT_RETRY_MS, ERROR, GAVE_UP, STOPPED, Client, Connection, Fleet,
                                   Prober, Report, _Body, report)
from tests.polling import wait_until

SLEW = 0.002  # wall-clock times on one thread may be slewed (NTP) by a hair: not a timing bound


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunk(text: str) -> bytes:
    data = text.encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


class Server:
    """Loopback SSE server on its own asyncio loop: an event every `interval_s` with consecutive ids,
    resuming at Last-Event-ID + 1. `mode` makes it answer otherwise; `end_streams()` ends open streams."""

    def __init__(self) -> None:
        self.mode = "stream"  # or "503", "html", "fallback"
        self.interval_s = 0.05
        self.fallback_retry_ms = 5000
        self.requests: list[tuple[float, dict[str, str]]] = []
        self.generation, self.end_retry_ms = 0, None
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = None
        self.listen(True)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    def listen(self, on: bool) -> None:
        """Off: connections are refused (open streams go on until ended)."""
        async def toggle():
            if on:
                self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port, backlog=1024)
            else:
                self.server.close()
        self._run(toggle())

    def end_streams(self, retry_ms: int | None) -> None:
        """Each open stream sends `retry: retry_ms` (if not None) at its next tick and ends."""
        self.end_retry_ms, self.generation = retry_ms, self.generation + 1

    def close(self) -> None:
        async def cancel_all():
            self.server.close()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    async def handle(self, reader, writer) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in head.split("\r\n")[1:] if line)}
            self.requests.append((time.time(), headers))
            if self.mode == "stream":
                await self.stream(writer, headers.get("last-event-id", ""))
            else:
                writer.write(self.answer())
                await reader.read()  # keep-alive: the client must see the end of the body by itself
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def answer(self) -> bytes:
        if self.mode == "fallback":
            return self.response("200 OK", "text/event-stream", f"retry: {self.fallback_retry_ms}\n\n",
                                 "X-Ssedeploy-Fallback: 1\r\n")
        if self.mode == "503":
            return self.response("503 Service Unavailable", "text/html", "<p>down</p>")
        return self.response("200 OK", "text/html", "<p>a page</p>")

    @staticmethod
    def response(status: str, content_type: str, body: str, extra: str = "") -> bytes:
        return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    async def stream(self, writer, last: str) -> None:
        n, generation = int(last) if last.isdigit() else 0, self.generation
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + chunk(": connected\n\n"))
        while True:
            await asyncio.sleep(self.interval_s)
            if self.generation != generation:
                if self.end_retry_ms is not None:
                    writer.write(chunk(f"retry: {self.end_retry_ms}\n\n"))
                writer.write(b"0\r\n\r\n")
                return await writer.drain()
            n += 1
            writer.write(chunk(f"id: {n}\ndata: {{\"n\": {n}}}\n\n"))
            await writer.drain()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def fleets():
    """Fleet(...) started here is stopped at the end of the test, whatever happens."""
    started = []

    def make(port: int, count: int = 1, **kw) -> Fleet:
        fleet = Fleet("127.0.0.1", port, "/stream", count, **kw).start()
        started.append(fleet)
        return fleet

    yield make
    for fleet in started:
        fleet.stop()


def ids(client: Client) -> list[int]:
    return [int(i) for i, _ in client.events]


def test_streams_with_browser_headers_and_records_the_connection(server, fleets):
    fleet = fleets(server.port)
    fleet.wait_streaming(5)
    wait_until(lambda: len(fleet.clients[0].events) >= 3, 5, "3 events")
    (client,) = fleet.stop()
    (conn,) = client.connections
    assert (conn.status, conn.content_type, conn.fallback) == (200, "text/event-stream; charset=utf-8", False)
    assert conn.opened_at <= conn.answered_at <= conn.first_event_at <= conn.ended_at
    assert conn.end == STOPPED and conn.retry_ms == DEFAULT_RETRY_MS and conn.last_event_id is None
    assert ids(client) == list(range(1, len(client.events) + 1))
    (_, headers), = server.requests
    assert headers["accept"] == "text/event-stream" and headers["cache-control"] == "no-cache"
    assert headers["host"] == f"127.0.0.1:{server.port}" and "last-event-id" not in headers


def test_reconnects_after_retry_with_last_event_id_and_loses_no_id(server, fleets):
    fleet = fleets(server.port, 3)
    fleet.wait_streaming(5)
    since = fleet.mark()
    server.end_streams(retry_ms=300)
    wait_until(lambda: all(len(c.connections) > 1 and len(c.connections[1].events) >= 2 for c in fleet.clients),
               10, "every client back and streaming")
    until = fleet.mark()
    clients = fleet.stop()
    for client in clients:
        first, second = client.connections[:2]
        assert first.end == CLOSED and first.retry_ms == 300 and client.retry_ms == 300
        assert second.opened_at - first.ended_at >= 0.3 - SLEW  # not before the retry
        assert second.last_event_id == first.events[-1][0]
        assert ids(client) == list(range(1, len(client.events) + 1))
    resumed = [h["last-event-id"] for _, h in server.requests if "last-event-id" in h]
    assert sorted(resumed) == sorted(c.connections[0].events[-1][0] for c in clients)
    r = report(clients, since=since, until=until)
    assert (r.clients, r.clients_cut, r.max_cuts_per_client, r.clients_unrecovered) == (3, 3, 1, 0)
    assert (r.lost_ids, r.repeated_ids, r.non_200, r.fallback_answers, r.gave_up) == (0, 0, 0, 0, 0)
    assert r.worst_gap_s >= 0.3 - SLEW and r.worst_gap_minus_retry_s >= -SLEW


def test_a_refused_connection_is_retried_after_the_default_3000_ms(fleets):
    fleet = fleets(free_port())
    client = fleet.clients[0]
    wait_until(lambda: len(client.connections) > 1, 3 + 5, "a second attempt")
    first, second = fleet.stop()[0].connections[:2]
    assert first.end == ERROR and "refused" in first.error.lower() and first.status == 0
    assert second.opened_at - first.ended_at >= DEFAULT_RETRY_MS / 1000 - SLEW
    assert client.gave_up is None


def test_comes_back_through_refused_connections_at_the_retry_pace(server, fleets):
    fleet = fleets(server.port)
    fleet.wait_streaming(5)
    client = fleet.clients[0]
    server.listen(False)
    server.end_streams(retry_ms=100)
    wait_until(lambda: sum(c.end == ERROR for c in client.connections) >= 2, 5, "two refused attempts")
    server.listen(True)
    wait_until(lambda: client.connections[-1].events, 5, "streaming again")
    clients = fleet.stop()
    refused = [c for c in client.connections if c.end == ERROR]
    assert all(c.status == 0 and c.retry_ms == 100 for c in refused)
    times = [c.opened_at for c in client.connections]
    assert all(b - a >= 0.1 - SLEW for a, b in zip(times[1:], times[2:]))  # ended at once: a - ended ~ 0
    assert ids(client) == list(range(1, len(client.events) + 1))
    r = report(clients)
    assert (r.clients_cut, r.lost_ids, r.failed_connects, r.clients_unrecovered) == (1, 0, len(refused), 0)


@pytest.mark.parametrize("mode,why", [("503", "status 503"), ("html", "content-type text/html")])
def test_gives_up_for_good_on_an_error_status_or_another_content_type(server, fleets, mode, why):
    fleet = fleets(server.port)
    fleet.wait_streaming(5)
    client = fleet.clients[0]
    server.mode = mode
    server.end_streams(retry_ms=100)
    wait_until(lambda: client.stopped_at, 5, "the client stopped by itself")
    r = report(fleet.stop())
    assert client.gave_up == why and [c.end for c in client.connections] == [CLOSED, GAVE_UP]
    assert (r.gave_up, r.non_200, r.clients_cut) == (1, int(mode == "503"), 1)
    # And a fleet that never streamed says so instead of waiting out its timeout.
    with pytest.raises(RuntimeError, match=why):
        fleets(server.port).wait_streaming(5)


def test_a_fallback_answer_is_counted_and_its_retry_honoured(server, fleets):
    fleet = fleets(server.port)
    fleet.wait_streaming(5)
    client = fleet.clients[0]
    server.mode = "fallback"
    server.end_streams(retry_ms=100)
    # The server keeps the connection open: the client must end it at the end of the body itself.
    wait_until(lambda: len(client.connections) > 1 and client.connections[1].end, 5, "the fallback answer read")
    r = report(fleet.stop())
    fallback = client.connections[1]
    assert (fallback.status, fallback.fallback, fallback.end, fallback.events) == (200, True, CLOSED, [])
    assert fallback.retry_ms == 5000 and client.retry_ms == 5000 and client.gave_up is None
    assert len(client.connections) == 2  # still waiting its 5 s
    assert (r.fallback_answers, r.clients_cut, r.clients_unrecovered, r.non_200, r.gave_up) == (1, 1, 1, 0, 0)


def test_probes_opened_during_an_outage_get_their_first_event_after_the_retry(server):
    server.mode, server.fallback_retry_ms = "fallback", 300
    prober = Prober("127.0.0.1", server.port, "/stream", every_s=0.1, timeout_s=5).start()
    try:
        wait_until(lambda: sum(p.connections[0].end == CLOSED for p in prober.probes if p.connections) >= 3, 5,
                   "3 probes answered by the fallback")
        server.mode = "stream"
        wait_until(lambda: len([p for p in prober.probes if p.first_event_at]) >= 6, 5, "probes streaming")
    finally:
        probes = prober.stop()
    assert all(p.first_event_at for p in probes) and all(p.stopped_at for p in probes)
    assert all(p.connections[-1].end == STOPPED for p in probes)  # closed at their first event
    early = [p for p in probes if p.connections[0].fallback]
    assert len(early) >= 3 and all(p.first_event_s >= 0.3 - SLEW for p in early)
    r = report([], probes)
    assert r.probes == len(probes) and r.probes_without_event == 0 and r.fallback_answers >= 3
    assert r.probe_worst_first_event_s >= 0.3 - SLEW


def test_a_probe_without_an_event_in_time_is_recorded(server, fleets):
    server.interval_s = 10
    fleet = fleets(server.port)
    prober = fleet.prober(every_s=0.2, timeout_s=0.3).start()
    wait_until(lambda: len(prober.probes) >= 2, 5, "2 probes opened")
    fleet.stop()  # stops its prober too, after the open probes time out
    probes = prober.stop()
    assert probes and all(p.first_event_at is None and p.connections[-1].end == STOPPED for p in probes)
    assert report(fleet.clients, probes).probes_without_event == len(probes)


def test_a_thousand_clients_on_one_loop_thread(server, fleets):
    server.interval_s = 0.5
    threads = threading.active_count()
    fleet = fleets(server.port, 1000)
    fleet.wait_streaming(15)
    assert threading.active_count() <= threads + 1
    server.end_streams(retry_ms=200)
    wait_until(lambda: all(c.connections[-1].events and len(c.connections) > 1 for c in fleet.clients), 15,
               "all 1,000 back and streaming")
    r = report(fleet.stop())
    assert (r.clients_cut, r.lost_ids, r.repeated_ids, r.gave_up, r.failed_connects) == (1000, 0, 0, 0, 0)


def test_body_reader_dechunks_cuts_at_content_length_and_decompresses():
    body = _Body({"content-length": "5"})
    assert body.feed(b"retry") == b"retry" and body.done and body.feed(b"more") == b""
    data = gzip.compress(b"id: 1\ndata: x\n\n")
    body = _Body({"transfer-encoding": "chunked", "content-encoding": "gzip"})
    wire = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    assert b"".join(body.feed(wire[i:i + 3]) for i in range(0, len(wire), 3)) == b"id: 1\ndata: x\n\n"
    assert body.done
    with pytest.raises(ValueError):
        _Body({"content-encoding": "br"})


# report() on hand-made records: times are seconds on the records' clock.

def conn(opened, events=(), end=CLOSED, ended=None, retry=DEFAULT_RETRY_MS, status=200, fallback=False):
    ended = ended if ended is not None else (events[-1][1] + 0.1 if events else opened + 0.1)
    return Connection(opened, None, retry, status, "text/event-stream", fallback, opened if status else None,
                      [(str(i), t) for i, t in events], end, ended)


def client(*connections, gave_up=None, stopped=None):
    return Client(0, list(connections), gave_up=gave_up, stopped_at=stopped or connections[-1].ended_at)


def probe(opened, first_event=None, fallback=False):
    events = [(1, first_event)] if first_event is not None else []
    return client(conn(opened, events, STOPPED, fallback=fallback))


STEADY = client(conn(0, [(1, 1), (2, 2), (3, 3)], STOPPED, 10))
# Cut at 2.5 with retry 1000; back at 3.5, first event 4.0: gap 2.0, id 3 lost.
CUT_AND_LOSS = client(conn(0, [(1, 1), (2, 2)], CLOSED, 2.5, retry=1000), conn(3.5, [(4, 4)], STOPPED, 10))
# The app restarted and ignored Last-Event-ID: 1, 2 again.
REPLAYED = client(conn(0, [(1, 1), (2, 2)], CLOSED, 2.5, retry=500), conn(3, [(1, 3.5), (2, 4.5)], STOPPED, 10))
# Reset, refused, a fallback answer, then streaming: one cut, the others inside its gap.
THROUGH_FALLBACK = client(conn(0, [(1, 1)], ERROR, 1.5, retry=200), conn(1.7, [], ERROR, 1.7, 200, status=0),
                          conn(1.9, [], CLOSED, 2.0, 5000, fallback=True), conn(7, [(2, 7.5)], STOPPED, 10))
UNRECOVERED = client(conn(0, [(1, 1)], CLOSED, 2, retry=1000), conn(3, [], ERROR, 3, 1000, status=0),
                     conn(4, [], STOPPED, 4.5, 1000, status=0), stopped=9)
GAVE_UP_503 = client(conn(0, [(1, 1)], CLOSED, 2, retry=1000), conn(3, [], GAVE_UP, 3, 1000, status=503),
                     gave_up="status 503", stopped=3)
TWO_CUTS = client(conn(0, [(1, 1)], CLOSED, 1.5, retry=100), conn(1.6, [(2, 2)], CLOSED, 2.5, retry=100),
                  conn(2.6, [(3, 3)], STOPPED, 10))


@pytest.mark.parametrize("clients,probes,window,expected", [
    ([STEADY], [], (), dict(clients=1, clients_cut=0, max_cuts_per_client=0, worst_gap_s=None,
                            worst_gap_minus_retry_s=None, lost_ids=0, non_200=0, gave_up=0, probes=0,
                            probe_worst_first_event_s=None)),
    ([STEADY, CUT_AND_LOSS], [], (), dict(clients=2, clients_cut=1, worst_gap_s=2.0, worst_gap_minus_retry_s=1.0,
                                          lost_ids=1, repeated_ids=0, clients_unrecovered=0)),
    ([CUT_AND_LOSS], [], (3, 10), dict(clients_cut=0, worst_gap_s=None, lost_ids=1)),  # the hole ends inside
    ([CUT_AND_LOSS], [], (5, 10), dict(clients_cut=0, lost_ids=0)),
    ([REPLAYED], [], (), dict(clients_cut=1, worst_gap_s=1.5, worst_gap_minus_retry_s=1.0, lost_ids=0,
                              repeated_ids=2)),
    ([THROUGH_FALLBACK], [], (), dict(clients_cut=1, max_cuts_per_client=1, worst_gap_s=6.5,
                                      worst_gap_minus_retry_s=6.3, fallback_answers=1, failed_connects=1,
                                      non_200=0, lost_ids=0)),
    ([UNRECOVERED, STEADY], [], (), dict(clients_cut=1, clients_unrecovered=1, worst_gap_s=8.0, failed_connects=1)),
    ([GAVE_UP_503], [], (), dict(gave_up=1, non_200=1, clients_cut=1, clients_unrecovered=1, worst_gap_s=2.0)),
    ([TWO_CUTS, CUT_AND_LOSS], [], (), dict(clients_cut=2, max_cuts_per_client=2, worst_gap_s=2.0)),
    ([], [probe(0, 0.2), probe(1, 3.5, fallback=True), probe(2)], (),
     dict(probes=3, probe_worst_first_event_s=2.5, probes_without_event=1, fallback_answers=1)),
    ([], [probe(0, 0.2), probe(1, 3.5, fallback=True), probe(2)], (1.5, 5),
     dict(probes=1, probe_worst_first_event_s=None, probes_without_event=1, fallback_answers=0)),
], ids=["steady", "cut", "hole-in-window", "hole-before-window", "replayed", "through-fallback", "unrecovered",
        "gave-up", "two-cuts", "probes", "probes-window"])
def test_report(clients, probes, window, expected):
    got = report(clients, probes, *window).as_dict()
    assert {k: got[k] for k in expected} == expected


def test_report_prints_as_a_table_row():
    r = report([CUT_AND_LOSS], [probe(0)])
    assert len(r.table_row()) == len(Report.HEADER) == len(r.as_dict())
    assert r.table_row()[:5] == ["1", "1", "1", "2.00", "1.00"] and r.table_row()[13] == "-"
