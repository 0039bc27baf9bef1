"""The example SSE app on loopback, read with ssedeploy's own stream reader."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ssedeploy.sse import read_stream

APP = Path(__file__).resolve().parents[2] / "examples" / "sse-app" / "server.js"
INTERVAL_MS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(**env) -> tuple[subprocess.Popen, int]:
    node = shutil.which("node")
    assert node, "node is needed for the example app tests (make deps installs it)"
    port = free_port()
    proc = subprocess.Popen(
        [node, str(APP)], env=dict(os.environ, HOSTNAME="127.0.0.1", PORT=str(port), **env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the app did not listen on {port}: {proc.stdout.read().decode()}")


@pytest.fixture(scope="module")
def app():
    proc, port = start_app(INTERVAL_MS=str(INTERVAL_MS), HEARTBEAT_MS="500")
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0  # exits promptly on SIGTERM (systemd stop)


def test_stream_headers_are_what_proxies_need(app):
    stream = read_stream("127.0.0.1", app, duration=0.5)
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-cache, no-transform"
    assert stream.headers["x-accel-buffering"] == "no"
    assert "content-length" not in stream.headers


def test_retry_and_comment_arrive_at_once(app):
    stream = read_stream("127.0.0.1", app, duration=0.15)
    assert stream.first_block_ms is not None and stream.first_block_ms < 100
    assert stream.blocks[0].retry == "5000"
    assert stream.blocks[0].comments == ["connected"]
    assert stream.events == []  # the first event comes one interval later


def test_events_count_up_with_send_time_and_heartbeats(app):
    stream = read_stream("127.0.0.1", app, duration=1.15)
    events = stream.events
    assert stream.ids[:4] == ["1", "2", "3", "4"]
    now_ms = time.time() * 1000
    for event in events:
        data = json.loads(event.data)
        assert data["n"] == int(event.event_id)
        assert abs(now_ms - data["ts"]) < 2000
    assert all(INTERVAL_MS * 0.5 <= g <= INTERVAL_MS * 1.5 for g in stream.gaps_ms), stream.gaps_ms
    assert any("ping" in b.comments for b in stream.blocks), "no heartbeat in 1.15 s at HEARTBEAT_MS=500"


def test_resume_continues_at_normal_cadence(app):
    stream = read_stream("127.0.0.1", app, duration=0.75, last_event_id="41")
    assert stream.ids[:2] == ["42", "43"]
    assert stream.events[0].t_ms >= INTERVAL_MS * 0.5, "resumed events came in a burst"
    assert all(g >= INTERVAL_MS * 0.5 for g in stream.gaps_ms)


def test_garbage_last_event_id_starts_over(app):
    assert read_stream("127.0.0.1", app, duration=0.35, last_event_id="abc").ids[:1] == ["1"]


@pytest.mark.parametrize("path,status,ctype", [
    ("/healthz", 200, "text/plain"), ("/", 200, "text/html"), ("/nope", 404, "text/plain"),
])
def test_other_routes(app, path, status, ctype):
    result = read_stream("127.0.0.1", app, path, duration=0.5, headers={"Accept": "*/*"})
    assert result.status == status
    assert result.headers["content-type"].startswith(ctype)


def test_page_uses_eventsource(app):
    with socket.create_connection(("127.0.0.1", app)) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        body = b"".join(iter(lambda: s.recv(65536), b""))
    assert b"new EventSource('/api/stream')" in body


def test_binds_loopback_by_default():
    env = {k: v for k, v in os.environ.items() if k != "HOSTNAME"}
    port = free_port()
    proc = subprocess.Popen([shutil.which("node"), str(APP)], env=dict(env, PORT=str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        line = proc.stdout.readline().decode()
        assert f"127.0.0.1:{port}" in line
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening.split()[3] == f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


# The reader itself, against a tiny local server that splits data in awkward places.

def serve_once(payload_parts: list[bytes], delay: float = 0.05) -> int:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn, srv:
            conn.recv(65536)
            for part in payload_parts:
                conn.sendall(part)
                time.sleep(delay)

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1]


def test_reader_handles_chunks_split_mid_line_and_crlf():
    body = b"retry: 1000\r\n\r\nid: 1\r\ndata: a\r\n\r\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = head + chunked
    parts = [raw[i:i + 7] for i in range(0, len(raw), 7)]
    result = read_stream("127.0.0.1", serve_once(parts, 0.01), duration=3)
    assert result.error is None and result.status == 200
    assert [b.retry for b in result.blocks] == ["1000", None]
    assert result.ids == ["1"] and result.events[0].data == "a"
    assert result.closed_by_server


def test_reader_times_blocks_as_they_arrive():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    port = serve_once([head, b"data: 1\n\n", b"data: 2\n\n"], delay=0.3)
    result = read_stream("127.0.0.1", port, duration=2)
    assert [b.data for b in result.events] == ["1", "2"]
    assert 200 <= result.gaps_ms[0] <= 600


def test_reader_records_compression_without_decoding():
    data = gzip.compress(b"data: x\n\n")
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n\r\n"
    result = read_stream("127.0.0.1", serve_once([head, data]), duration=1)
    assert result.headers["content-encoding"] == "gzip"
    assert result.blocks == [] and result.raw_bytes == len(data)


def test_reader_reports_refused_connection_instead_of_raising():
    result = read_stream("127.0.0.1", free_port(), duration=1)
    assert result.status == 0 and "refused" in result.error.lower()
