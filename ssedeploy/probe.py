"""`ssedeploy probe URL`: does this stream really stream? A verdict from event timing.

It connects like a browser's EventSource (Accept-Encoding gzip/deflate/br,
`Accept: text/event-stream`, redirects followed), over HTTP/1.1 or, with `--http2`,
HTTP/2 over TLS, and times the headers and every complete block. Verdicts:

- streaming: headers and a first block in time, and (when checkable) events on time;
- buffered: the connection stays open but no headers or no block arrive within the
  first-block threshold, the stream is compressed, events arrive bunched, or they lag
  their own send timestamps (`ts` in JSON data, ms since the epoch) by more than
  LAG_SPREAD_MS relative to the freshest one (a spread, so clock skew does not count).
  A stream whose events all arrive in the end is still buffered if they came late;
- not-sse: a final status other than 200 or a content type other than text/event-stream;
- error: the connection or TLS failed, or `--resume` found the ids not continuing.

No cadence is assumed unless `--expect-interval` gives one: then every gap must be
within 25 % of it. Exit status: 0 streaming, 1 buffered, 2 not-sse, 3 error.
"""

from __future__ import annotations

import json
import socket
import ssl
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from .sse import BROWSER_HEADERS, StreamResult, _Blocks, read_stream

EXIT = {"streaming": 0, "buffered": 1, "not-sse": 2, "error": 3}
FIRST_BLOCK_MS = 4000  # the playbook: healthy 6-60 ms, buffered: nothing for > 4 s
LAG_SPREAD_MS = 1000
BUNCH_MS = 50


@dataclass
class Report:
    url: str
    verdict: str = "error"
    reason: str = ""
    status: int = 0
    http_version: str = "1.1"
    content_type: str | None = None
    content_encoding: str | None = None
    cache_control: str | None = None
    x_accel_buffering: str | None = None
    headers_ms: float | None = None
    first_block_ms: float | None = None
    first_event_ms: float | None = None
    events: int = 0
    gaps_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    resume: dict | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def read_h2(address: str, port: int, path: str, *, server_name: str, headers: dict, duration: float,
            insecure: bool, last_event_id: str | None = None, until=None) -> StreamResult:
    """The same reading as sse.read_stream, over HTTP/2 (TLS with ALPN h2), with the h2 library."""
    import h2.config
    import h2.connection
    import h2.events

    result = StreamResult(started_at=time.time(), http_version="2")
    start = time.monotonic()
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        sock = ctx.wrap_socket(socket.create_connection((address, port), timeout=5), server_hostname=server_name)
    except OSError as exc:
        result.error = f"connect: {exc}"
        return result
    with sock:
        if sock.selected_alpn_protocol() != "h2":
            result.error = f"the server did not negotiate HTTP/2 (ALPN: {sock.selected_alpn_protocol()})"
            return result
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        send = {k.lower(): v for k, v in {**BROWSER_HEADERS, **headers}.items() if k.lower() not in ("host", "connection")}
        if last_event_id is not None:
            send["last-event-id"] = last_event_id
        authority = server_name if port == 443 else f"{server_name}:{port}"
        conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                              (":path", path), *send.items()], end_stream=True)
        sock.sendall(conn.data_to_send())
        blocks = _Blocks()
        while (left := duration - (time.monotonic() - start)) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except (socket.timeout, ssl.SSLError):
                break
            if not data:
                result.closed_by_server = True
                break
            t = round((time.monotonic() - start) * 1000, 1)
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    result.headers_ms = t
                    hdrs = {k.decode(): v.decode() for k, v in event.headers}
                    result.status = int(hdrs.pop(":status"))
                    result.headers = hdrs
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    result.raw_bytes += len(event.data)
                    if result.headers.get("content-encoding", "identity") == "identity":
                        result.blocks += blocks.feed(event.data, t)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    result.closed_by_server = True
            sock.sendall(conn.data_to_send())
            if result.closed_by_server or (until and until(result)):
                break
        if result.headers_ms is None and not result.error:
            result.error = f"no complete response headers within {duration} s"
    return result


def _read(url: str, *, duration: float, headers: dict, resolve: dict, insecure: bool, http2: bool,
          last_event_id: str | None = None, until=None) -> tuple[str, StreamResult]:
    """Read `url`, following redirects like EventSource does (at most 5)."""
    for _ in range(6):
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        name = parts.hostname or ""
        address = resolve.get(name, name)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if http2 and tls:
            result = read_h2(address, port, path, server_name=name, headers=headers, duration=duration,
                             insecure=insecure, last_event_id=last_event_id, until=until)
        else:
            result = read_stream(address, port, path, duration=duration, headers={**headers, "Host": parts.netloc},
                                 last_event_id=last_event_id, tls=tls, server_name=name, insecure=insecure,
                                 until=until)
        if result.status in (301, 302, 303, 307, 308) and "location" in result.headers:
            url = urljoin(url, result.headers["location"])
            continue
        return url, result
    return url, result


def _lags(result: StreamResult) -> list[float]:
    lags = []
    for event in result.events:
        try:
            ts = json.loads(event.data)["ts"]
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(ts, (int, float)):
            lags.append(round(result.started_at * 1000 + event.t_ms - ts, 1))
    return lags


def judge(result: StreamResult, expect_interval: float | None, threshold_ms: float = FIRST_BLOCK_MS) -> tuple[str, str]:
    if result.error and result.headers_ms is None:
        if result.error.startswith("connect") or "HTTP/2" in result.error:
            return "error", result.error
        return "buffered", f"the connection stayed open but no response headers came ({result.error})"
    if result.status != 200:
        return "not-sse", f"status {result.status} (EventSource needs 200)"
    ctype = result.headers.get("content-type", "")
    if not ctype.startswith("text/event-stream"):
        return "not-sse", f"content type {ctype!r}, not text/event-stream"
    encoding = result.headers.get("content-encoding", "identity")
    if encoding != "identity":
        return "buffered", f"the stream is compressed ({encoding}): the compressor holds events back"
    if result.headers_ms > threshold_ms:
        return "buffered", f"headers took {result.headers_ms:.0f} ms (threshold {threshold_ms:.0f} ms)"
    if result.first_block_ms is None:
        return "buffered", f"no block within {threshold_ms / 1000:.0f} s of connecting" if result.raw_bytes == 0 else \
            "bytes arrived but no complete block"
    if result.first_block_ms > threshold_ms:
        return "buffered", f"the first block came after {result.first_block_ms:.0f} ms (threshold {threshold_ms:.0f} ms)"
    lags = _lags(result)
    if len(lags) >= 2 and max(lags) - min(lags) > LAG_SPREAD_MS:
        return "buffered", f"events were held back: their lag behind their send time varies by {max(lags) - min(lags):.0f} ms"
    gaps = result.gaps_ms
    if expect_interval and gaps:
        want = expect_interval * 1000
        off = [g for g in gaps if abs(g - want) > 0.25 * want]
        if off:
            bunched = [g for g in off if g < BUNCH_MS]
            kind = "bunched (the signature of buffering)" if bunched else "off the expected interval"
            return "buffered", f"{len(off)} of {len(gaps)} gaps {kind}: {off[:5]} ms vs {want:.0f} ms"
    if not result.events:
        return "streaming", f"first block after {result.first_block_ms:.0f} ms; no event during the probe"
    return "streaming", f"first block after {result.first_block_ms:.0f} ms, {len(result.events)} events on time"


def probe(url: str, *, duration: float = 10.0, expect_interval: float | None = None, resume: bool = False,
          headers: dict | None = None, resolve: dict | None = None, insecure: bool = False,
          http2: bool = False) -> Report:
    headers, resolve = headers or {}, resolve or {}

    def enough(r: StreamResult) -> bool:
        # Certain once 5 events came on time, or the first block is already late.
        late = r.first_block_ms is None and (time.monotonic() - mono) * 1000 > FIRST_BLOCK_MS + 500
        return late or (len(r.events) >= 5 and judge(r, expect_interval)[0] == "streaming")

    mono = time.monotonic()
    final_url, result = _read(url, duration=duration, headers=headers, resolve=resolve, insecure=insecure,
                              http2=http2, until=enough)
    verdict, reason = judge(result, expect_interval)
    events = result.events
    report = Report(
        url=final_url, verdict=verdict, reason=reason, status=result.status, http_version=result.http_version,
        content_type=result.headers.get("content-type"), content_encoding=result.headers.get("content-encoding"),
        cache_control=result.headers.get("cache-control"), x_accel_buffering=result.headers.get("x-accel-buffering"),
        headers_ms=result.headers_ms, first_block_ms=result.first_block_ms,
        first_event_ms=events[0].t_ms if events else None, events=len(events), gaps_ms=result.gaps_ms,
        lag_ms=_lags(result), ids=result.ids,
    )
    if resume and verdict == "streaming":
        last = result.ids[-1] if result.ids else None
        if last is None:
            report.resume = {"ok": False, "reason": "no event id to resume from"}
        else:
            _, again = _read(final_url, duration=min(duration, 5.0), headers=headers, resolve=resolve,
                             insecure=insecure, http2=http2, last_event_id=last, until=lambda r: bool(r.ids))
            first = again.ids[0] if again.ids else None
            ok = first is not None and (int(first) == int(last) + 1 if first.isdigit() and last.isdigit()
                                        else first != last)
            report.resume = {"ok": ok, "last_event_id": last, "first_id_after": first}
            if not ok:
                report.verdict, report.reason = "error", f"resume with Last-Event-ID {last} continued at {first}"
    return report


def format_text(r: Report) -> str:
    def ms(v):
        return "-" if v is None else f"{v:.0f} ms"

    gaps = f"median {statistics.median(r.gaps_ms):.0f} ms, max {max(r.gaps_ms):.0f} ms" if r.gaps_ms else "-"
    lines = [
        f"{r.verdict.upper()}: {r.reason}",
        f"  url {r.url}  HTTP/{r.http_version}  status {r.status}  type {r.content_type}",
        f"  encoding {r.content_encoding or 'identity'}  cache-control {r.cache_control}",
        f"  headers {ms(r.headers_ms)}  first block {ms(r.first_block_ms)}  first event {ms(r.first_event_ms)}",
        f"  events {r.events}  gaps {gaps}",
    ]
    if r.lag_ms:
        lines.append(f"  lag behind send time: min {min(r.lag_ms):.0f} ms, max {max(r.lag_ms):.0f} ms")
    if r.resume:
        lines.append(f"  resume: {r.resume}")
    return "\n".join(lines)
