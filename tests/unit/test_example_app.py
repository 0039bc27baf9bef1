"""The example SSE app on loopback, read with ssedeploy's own stream reader; and the reader itself."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ssedeploy.sse import _Blocks, _Chunked, read_stream

APP = Path(__file__).resolve().parents[2] / "examples" / "sse-app" / "server.js"
# The e2e tests' app that gzips when asked, as compression middleware does.
COMPRESSING = Path(__file__).resolve().parents[2] / "tests" / "e2e" / "apps" / "compressing-sse" / "server.js"
INTERVAL_MS = 200
HEARTBEAT_MS = 500
NODE = shutil.which("node")

needs_node = pytest.mark.skipif(NODE is None, reason="node is needed for the example app tests")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(hostname: str | None = "127.0.0.1", app: Path = APP, **env: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k not in ("HOSTNAME", "INTERVAL_MS", "HEARTBEAT_MS")}
    environ.update(env, PORT=str(port), **({"HOSTNAME": hostname} if hostname else {}))
    proc = subprocess.Popen([NODE, str(app)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    stop_app(proc)
    pytest.fail(f"the app did not listen on {port}: {proc.stdout.read().decode()}")


def stop_app(proc: subprocess.Popen, timeout: float = 5) -> int | None:
    """SIGTERM this process (by its own PID); kill it if it does not exit in time. The exit code, or None."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    finally:
        proc.stdout.close()


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def app():
    if NODE is None:
        pytest.skip("node is needed for the example app tests")
    proc, port = start_app(INTERVAL_MS=str(INTERVAL_MS), HEARTBEAT_MS=str(HEARTBEAT_MS))
    yield port
    assert stop_app(proc) == 0, "the app did not exit 0 within 5 s of SIGTERM"


def test_stream_headers_are_what_proxies_need(app):
    stream = read_stream("127.0.0.1", app, duration=2.0)  # headers only: a busy machine may be slow to answer
    assert stream.error is None and stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-cache, no-transform"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.headers["connection"] == "keep-alive"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in stream.headers
    assert "content-encoding" not in stream.headers  # even though we asked for gzip, like a browser


def test_retry_and_comment_arrive_at_once(app):
    stream = read_stream("127.0.0.1", app, duration=5, until=lambda r: r.blocks)
    assert stream.headers_ms is not None and stream.headers_ms <= stream.first_block_ms
    # The first block is the retry + comment, not an event: it was not held back until the first event.
    first = stream.blocks[0]
    assert first.retry == "5000" and first.comments == ["connected"] and not first.is_event


def test_events_count_up_with_send_time_and_heartbeats(app):
    wall_start_ms = time.time() * 1000
    stream = read_stream("127.0.0.1", app, duration=5,
                         until=lambda r: len(r.events) >= 4 and any(b.comments == ["ping"] for b in r.blocks))
    wall_end_ms = time.time() * 1000
    events = stream.events
    assert len(events) >= 4, stream.blocks
    assert stream.ids == [str(n) for n in range(1, len(events) + 1)]
    sent = []
    for event in events:
        data = json.loads(event.data)
        assert data["n"] == int(event.event_id)
        assert wall_start_ms <= data["ts"] <= wall_end_ms, (event, wall_start_ms)  # stamped while we read
        sent.append(data["ts"])
    assert sent == sorted(sent) and len(set(sent)) == len(sent), sent
    pings = [b for b in stream.blocks if b.comments == ["ping"]]
    assert pings and all(not b.fields for b in pings), "no `: ping` heartbeat in 1.15 s at HEARTBEAT_MS=500"


def test_resume_gets_the_owed_event_at_once_then_the_normal_cadence(app):
    stream = read_stream("127.0.0.1", app, duration=0.75, last_event_id="41")
    events = stream.events
    assert stream.ids[:3] == ["42", "43", "44"]
    assert stream.ids == [str(n) for n in range(42, 42 + len(events))]
    # The event it is owed comes with the first bytes (a client cut by a release waits no interval more)...
    assert events[0].t_ms < events[1].t_ms - INTERVAL_MS * 0.5, "the owed event waited an interval"
    # ... and not a burst: the rest an interval apart.
    assert len(events) <= 0.75 * 1000 / INTERVAL_MS + 2
    sent = [json.loads(e.data)["ts"] for e in events]
    assert all(b - a >= INTERVAL_MS * 0.5 for a, b in zip(sent, sent[1:])), sent


@pytest.mark.parametrize("bad", ["abc", "-3", "4.5", "99999999999999999999"])
def test_unusable_last_event_id_starts_over(app, bad):
    assert read_stream("127.0.0.1", app, duration=0.3, last_event_id=bad).ids[:1] == ["1"]


def test_health_page_and_errors(app):
    status, headers, body = get(app, "/healthz")
    assert (status, body) == (200, b"ok\n") and headers["content-type"].startswith("text/plain")
    status, headers, body = get(app, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"new EventSource('/api/stream')" in body
    assert b"src=" not in body and b"://" not in body  # no external resources
    assert get(app, "/nope")[0] == 404
    status, headers, _ = get(app, "/healthz", "POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_head_on_the_stream_does_not_hang(app):
    status, headers, body = get(app, "/api/stream", "HEAD")
    assert status == 200 and headers["content-type"].startswith("text/event-stream") and body == b""


def open_stream(port: int) -> tuple[socket.socket, bytes]:
    """A keep-alive stream, as nginx holds it, read up to its first block."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: app\r\n\r\n")
    received = b""
    while b": connected" not in received and (data := sock.recv(65536)):
        received += data
    return sock, received


def read_to_end(sock: socket.socket, received: bytes) -> bytes:
    try:
        while data := sock.recv(65536):
            received += data
    except TimeoutError:
        pytest.fail("the open stream was not ended within 5 s of SIGTERM")
    return received


def body_blocks(response: bytes) -> list:
    """The blocks of a whole chunked response; fails if it did not end with the last chunk."""
    body = response.split(b"\r\n\r\n", 1)[1]
    dechunk = _Chunked()
    blocks = _Blocks().feed(dechunk.feed(body), 0.0)
    assert dechunk.done, response[-40:]
    return blocks


@needs_node
def test_sigterm_ends_open_streams_after_their_next_event_with_a_short_spread_retry_and_exits_promptly():
    proc, port = start_app(INTERVAL_MS="100", HEARTBEAT_MS="1000")
    streams = []
    try:
        streams = [open_stream(port) for _ in range(8)]
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # an idle keep-alive connection
        idle.request("GET", "/healthz")
        assert idle.getresponse().read() == b"ok\n"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        received = [read_to_end(sock, first) for sock, first in streams]
        code = proc.wait(timeout=5)
        elapsed = time.monotonic() - started
    finally:
        for sock, _ in streams:
            sock.close()
        stop_app(proc)
    assert code == 0
    assert elapsed < 3, f"took {elapsed:.1f} s: the 5 s safety exit, not a clean shutdown"
    retries = []
    for response in received:
        assert response.endswith(b"\r\n0\r\n\r\n"), response[-40:]  # the stream was ended, not cut
        blocks = body_blocks(response)
        last = blocks[-1]  # the retry, then the end of the stream
        assert last.fields == [("retry", last.retry)] and not last.comments, last
        assert blocks[-2].is_event, "the stream did not end right after an event"
        retries.append(int(last.retry))
    assert all(500 <= r <= 1500 for r in retries), retries
    # Random per stream, so clients come back spread over a second (8 equal draws: ~1e-21).
    assert len(set(retries)) > 1, retries


@needs_node
def test_binds_loopback_only_by_default():
    proc, port = start_app(hostname=None)
    try:
        assert select.select([proc.stdout], [], [], 5)[0], "no log line at start"
        assert proc.stdout.readline().decode().strip() == f"sse-app listening on 127.0.0.1:{port}"
        if shutil.which("ss"):
            out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
            assert [line.split()[3] for line in out.splitlines()] == [f"127.0.0.1:{port}"]
        # All of 127/8 reaches this machine, but only a socket bound to 127.0.0.1 itself (not 0.0.0.0
        # or ::) answers there.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
    finally:
        assert stop_app(proc) == 0


@needs_node
def test_the_loopback_check_can_fail():
    proc, port = start_app(hostname="0.0.0.0")
    try:
        socket.create_connection(("127.0.0.2", port), timeout=2).close()  # a wildcard bind answers
    finally:
        stop_app(proc)


# The reader itself, against a tiny local server.

def serve_once(parts: list[bytes], delay: float = 0.02) -> tuple[int, dict]:
    """Accept one connection, send `parts` with a pause between them, close. Records the request."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    seen: dict = {}

    def run():
        with srv:
            conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = b""
            while b"\r\n\r\n" not in request and (data := conn.recv(65536)):
                request += data
            seen["request"] = request.decode()
            for part in parts:
                conn.sendall(part)
                time.sleep(delay)

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], seen


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
# Events split across chunks, CRLF / CR / LF line endings, a CRLF split between chunks.
BODY_CHUNKS = (b"retry: 1000\r", b"\n\r\nid: 1\r\nda", b"ta: a\r\n\r\nid: 2\rdata: b\r\r", b": c\n\nid: 3\ndata: x\n",
               b"data: y\n\n")


def test_reader_handles_chunks_split_mid_line_and_in_crlfs():
    wire = HEAD_CHUNKED + chunked(*BODY_CHUNKS)
    cuts = [0] + [i + 1 for i, byte in enumerate(wire) if byte == ord("\r")] + [len(wire)]  # after every CR
    port, seen = serve_once([wire[a:b] for a, b in zip(cuts, cuts[1:])])
    result = read_stream("127.0.0.1", port, duration=5)
    assert result.error is None and result.status == 200 and result.closed_by_server
    assert [b.retry for b in result.blocks] == ["1000", None, None, None, None]
    assert result.ids == ["1", "2", "3"] and [e.data for e in result.events] == ["a", "b", "x\ny"]
    assert result.blocks[3].comments == ["c"] and not result.blocks[3].is_event
    assert [b.t_ms for b in result.blocks] == sorted(b.t_ms for b in result.blocks)
    assert result.headers_ms <= result.first_block_ms
    # Reading stops at the last chunk; its final CRLF may still have been on the way.
    assert len(chunked(*BODY_CHUNKS)) - 2 <= result.raw_bytes <= len(chunked(*BODY_CHUNKS))
    assert seen["request"].startswith("GET /api/stream HTTP/1.1\r\n")


def test_decoders_give_the_same_result_for_every_split():
    wire = chunked(*BODY_CHUNKS)

    def decode(pieces):
        dechunk, blocks, out = _Chunked(), _Blocks(), []
        for piece in pieces:
            out += blocks.feed(dechunk.feed(piece), 0.0)
        assert dechunk.done
        return [(b.fields, b.comments) for b in out]

    whole = decode([wire])
    assert len(whole) == 5
    assert decode([wire[i:i + 1] for i in range(len(wire))]) == whole  # byte by byte
    for i in range(len(wire)):
        assert decode([wire[:i], wire[i:]]) == whole, i


def test_block_splitter_follows_the_whatwg_line_rules():
    stream = (b"\xef\xbb\xbfdata: a\n\r\n"  # BOM; LF then CRLF is a blank line
              b"data: b\r\r"  # CR CR
              b"data:c\r\n\n"  # no space after the colon
              b"data\n\n"  # no colon: the field, empty value
              b"\n\n"  # blank lines alone dispatch nothing
              b"data:  two spaces\nevent: e\nid: 9\nid: 10\n\n"
              b"data: never finished")
    blocks = _Blocks().feed(stream, 1.0)
    assert [b.data for b in blocks] == ["a", "b", "c", "", " two spaces"]
    assert blocks[4].event_id == "10" and ("event", "e") in blocks[4].fields


def test_reader_times_blocks_as_they_arrive():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    port, _ = serve_once([head, b"data: 1\n\n", b"data: 2\n\n"], delay=0.3)
    result = read_stream("127.0.0.1", port, duration=3)
    assert [b.data for b in result.events] == ["1", "2"]
    # Timed on arrival, not on reading the whole response: each block came 0.3 s after the previous one
    # at the earliest (only lower bounds: a loaded machine may deliver later, never earlier).
    assert result.events[0].t_ms - result.headers_ms >= 200
    assert result.gaps_ms[0] >= 200


def test_reader_sends_browser_like_headers_and_lets_the_caller_override():
    port, seen = serve_once([b"HTTP/1.1 204 No Content\r\n\r\n"])
    result = read_stream("127.0.0.1", port, "/x?y=1", duration=2, last_event_id=7, headers={"accept": "*/*"})
    assert result.status == 204 and result.error is None
    lines = seen["request"].split("\r\n")
    assert lines[0] == "GET /x?y=1 HTTP/1.1"
    for expected in (f"Host: 127.0.0.1:{port}", "accept: */*", "Accept-Encoding: gzip, deflate, br",
                     "Cache-Control: no-cache", "Connection: close", "Last-Event-ID: 7"):
        assert expected in lines
    assert "Accept: text/event-stream" not in lines


def test_reader_records_compression_without_decoding():
    data = gzip.compress(b"data: x\n\n")
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n\r\n"
    port, _ = serve_once([head, data])
    result = read_stream("127.0.0.1", port, duration=2)
    assert result.error is None and result.headers["content-encoding"] == "gzip"
    assert result.blocks == [] and result.raw_bytes == len(data)


def test_reader_reports_refused_connection_instead_of_raising():
    result = read_stream("127.0.0.1", free_port(), duration=1)
    assert result.status == 0 and result.headers_ms is None and "refused" in result.error.lower()


def test_reader_reports_silence_and_garbage_instead_of_raising():
    port, _ = serve_once([b"HTTP/1.1 200 OK\r\n"], delay=1)  # headers never complete
    silent = read_stream("127.0.0.1", port, duration=0.3)
    assert silent.status == 0 and silent.error == "no complete response headers within 0.3 s"
    port, _ = serve_once([HEAD_CHUNKED + b"zz\r\ndata: x\r\n"])
    garbage = read_stream("127.0.0.1", port, duration=2)
    assert garbage.status == 200 and garbage.error.startswith("ValueError")


@needs_node
def test_probe_calls_an_app_that_compresses_buffered_and_the_same_app_asked_for_identity_streaming():
    """What the SSE location's `Accept-Encoding ""` changes, judged by the probe on loopback."""
    from ssedeploy.probe import probe

    proc, port = start_app(app=COMPRESSING, COMPRESS="gzip")
    try:
        asked = probe(f"http://127.0.0.1:{port}/api/stream", duration=4)
        identity = probe(f"http://127.0.0.1:{port}/api/stream", duration=8, headers={"Accept-Encoding": "identity"})
    finally:
        stop_app(proc)
    assert (asked.verdict, asked.content_encoding) == ("buffered", "gzip"), asked.reason
    assert identity.verdict == "streaming" and not identity.content_encoding, identity.reason
