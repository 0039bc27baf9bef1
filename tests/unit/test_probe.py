"""The probe's verdicts against small local servers that stream, buffer, compress or mislead."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time

import pytest

from ssedeploy.cli import main
from ssedeploy.probe import probe

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"


def event(n: int, ts_ms: float | None = None) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (n, json.dumps({"n": n, "ts": int(ts_ms or time.time() * 1000)}).encode())


def serve(handler, connections: int = 1) -> int:
    """A loopback server that runs `handler(conn, request)` for each of `connections` clients."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(connections)

    def run():
        with srv:
            for _ in range(connections):
                conn, _ = srv.accept()
                with conn:
                    request = conn.recv(65536).decode()
                    try:
                        handler(conn, request)
                    except OSError:
                        pass

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1]


def streaming(conn, request, count=4, interval=0.25, start=1):
    conn.sendall(SSE_HEAD + b"retry: 1000\n: hi\n\n")
    for n in range(start, start + count):
        time.sleep(interval)
        conn.sendall(event(n))


def test_a_live_stream_is_streaming():
    port = serve(streaming)
    r = probe(f"http://127.0.0.1:{port}/s", duration=2, expect_interval=0.25)
    assert r.verdict == "streaming", r.reason
    assert r.first_block_ms is not None and r.events == 4 and r.status == 200
    assert all(g >= 200 for g in r.gaps_ms)  # the server waits 0.25 s between events: never earlier


def test_no_cadence_is_assumed_without_expect_interval():
    def irregular(conn, request):
        conn.sendall(SSE_HEAD + b": hi\n\n")
        for n, pause in enumerate([0.05, 0.4, 0.02, 0.3], 1):
            time.sleep(pause)
            conn.sendall(event(n))

    r = probe(f"http://127.0.0.1:{serve(irregular)}/s", duration=1.5)
    assert r.verdict == "streaming", r.reason


def test_everything_held_then_flushed_is_buffered_even_though_all_events_arrive():
    def held(conn, request):
        t0 = time.time() * 1000
        time.sleep(2.2)  # a proxy buffer filling up; the events were sent every 0.5 s before
        conn.sendall(SSE_HEAD + b"".join(event(n, t0 + n * 500) for n in range(1, 5)))

    r = probe(f"http://127.0.0.1:{serve(held)}/s", duration=3)
    assert r.events == 4
    assert r.verdict == "buffered" and "held back" in r.reason


def test_bunched_events_are_buffered_when_a_cadence_is_expected():
    def bunched(conn, request):
        conn.sendall(SSE_HEAD + b": hi\n\n")
        for n in range(1, 4):
            conn.sendall(b"id: %d\ndata: x\n\n" % n)
            time.sleep(0.01)

    r = probe(f"http://127.0.0.1:{serve(bunched)}/s", duration=1, expect_interval=0.5)
    assert r.verdict == "buffered" and "bunched" in r.reason


def test_open_connection_without_headers_is_buffered_not_an_error(monkeypatch):
    monkeypatch.setattr("ssedeploy.probe.FIRST_BLOCK_MS", 500)

    def silent(conn, request):
        time.sleep(2)

    r = probe(f"http://127.0.0.1:{serve(silent)}/s", duration=1.5)
    assert r.verdict == "buffered" and "no response headers" in r.reason


def test_headers_without_a_block_are_buffered(monkeypatch):
    monkeypatch.setattr("ssedeploy.probe.FIRST_BLOCK_MS", 500)

    def headers_only(conn, request):
        conn.sendall(SSE_HEAD)
        time.sleep(2)

    r = probe(f"http://127.0.0.1:{serve(headers_only)}/s", duration=1.5)
    assert r.verdict == "buffered" and "no block" in r.reason


def test_compressed_stream_is_buffered():
    def gz(conn, request):
        assert "gzip" in request.lower()  # the probe asks like a browser
        body = gzip.compress(event(1))
        conn.sendall(SSE_HEAD.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n") + body)

    r = probe(f"http://127.0.0.1:{serve(gz)}/s", duration=1)
    assert r.verdict == "buffered" and "compressed" in r.reason and r.content_encoding == "gzip"


@pytest.mark.parametrize("head,reason", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>", "text/html"),
    (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n\r\n", "status 502"),
])
def test_wrong_status_or_type_is_not_sse(head, reason):
    r = probe(f"http://127.0.0.1:{serve(lambda c, q: c.sendall(head))}/s", duration=1)
    assert r.verdict == "not-sse" and reason in r.reason


def test_connection_refused_is_an_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = probe(f"http://127.0.0.1:{port}/s", duration=1)
    assert r.verdict == "error" and "connect" in r.reason


def test_redirects_are_followed_like_eventsource():
    target = serve(streaming)
    port = serve(lambda c, q: c.sendall(
        b"HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:%d/s\r\nContent-Length: 0\r\n\r\n" % target))
    r = probe(f"http://127.0.0.1:{port}/old", duration=1.5)
    assert r.verdict == "streaming" and r.url.endswith(f":{target}/s")


def test_resume_checks_ids_continue_and_headers_are_sent():
    seen = []

    def resumable(conn, request):
        seen.append(request)
        last = next((line.split(":", 1)[1].strip() for line in request.split("\r\n")
                     if line.lower().startswith("last-event-id:")), None)
        streaming(conn, request, count=2 if last is None else 1, interval=0.1, start=int(last or 0) + 1)

    port = serve(resumable, connections=2)
    r = probe(f"http://127.0.0.1:{port}/s", duration=1, resume=True, headers={"Authorization": "Bearer t"})
    assert r.resume == {"ok": True, "last_event_id": "2", "first_id_after": "3"}
    assert all("Authorization: Bearer t" in q for q in seen)


def test_resume_that_replays_from_the_start_is_an_error():
    port = serve(lambda c, q: streaming(c, q, count=2, interval=0.1), connections=2)
    r = probe(f"http://127.0.0.1:{port}/s", duration=1, resume=True)
    assert r.verdict == "error" and "resume" in r.reason


def test_cli_json_and_exit_status(capsys):
    port = serve(streaming)
    status = main(["probe", f"http://example.test:{port}/s", "--resolve", "example.test:127.0.0.1",
                   "--duration", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["verdict"] == "streaming"
    for key in ("verdict", "reason", "status", "content_type", "content_encoding", "headers_ms",
                "first_block_ms", "first_event_ms", "events", "gaps_ms"):
        assert key in report
    assert main(["probe", "http://127.0.0.1:9/s", "--duration", "1"]) == 3
