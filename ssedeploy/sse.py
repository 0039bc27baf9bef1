"""Read a Server-Sent Events stream over a raw socket, timestamping what arrives.

A raw socket, not an HTTP library: the end of the response headers and every complete
block are timed exactly when their bytes arrive, with no client-side buffering or
decoding in between. That is what telling "streaming" from "buffered" depends on.
Network errors never raise; they end up in ``StreamResult.error``.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from dataclasses import dataclass, field

BROWSER_HEADERS = {
    "Accept": "text/event-stream",
    "Accept-Encoding": "gzip, deflate, br",  # what browsers send: nothing on the way may compress the stream
    "Cache-Control": "no-cache",
}
_EOL = re.compile(rb"\r\n|\n|\r")  # WHATWG: a line ends in CRLF, LF or CR


@dataclass
class Block:
    """One blank-line-terminated block of the stream, with its arrival time (ms after the connect began)."""

    t_ms: float
    fields: list[tuple[str, str]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def _last(self, name: str) -> str | None:
        values = [v for k, v in self.fields if k == name]
        return values[-1] if values else None

    @property
    def event_id(self) -> str | None:
        return self._last("id")

    @property
    def retry(self) -> str | None:
        return self._last("retry")

    @property
    def data(self) -> str | None:
        values = [v for k, v in self.fields if k == "data"]
        return "\n".join(values) if values else None

    @property
    def is_event(self) -> bool:
        return self.data is not None


@dataclass
class StreamResult:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    headers_ms: float | None = None
    blocks: list[Block] = field(default_factory=list)
    closed_by_server: bool = False
    error: str | None = None
    raw_bytes: int = 0  # body bytes as received (before de-chunking)
    started_at: float = 0.0  # wall clock at connect, to compare arrival with events' send times
    http_version: str = "1.1"

    @property
    def first_block_ms(self) -> float | None:
        return self.blocks[0].t_ms if self.blocks else None

    @property
    def events(self) -> list[Block]:
        return [b for b in self.blocks if b.is_event]

    @property
    def gaps_ms(self) -> list[float]:
        times = [e.t_ms for e in self.events]
        return [round(b - a, 1) for a, b in zip(times, times[1:])]

    @property
    def ids(self) -> list[str]:
        return [e.event_id for e in self.events if e.event_id is not None]


def parse_block(lines: list[bytes], t_ms: float) -> Block:
    block = Block(t_ms)
    for raw in lines:
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            block.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")  # no colon: the whole line names a field with an empty value
            block.fields.append((name, value[1:] if value.startswith(" ") else value))
    return block


class _Blocks:
    """Incremental splitter into blocks; a CR at the end of one read may be the first half of a CRLF."""

    def __init__(self) -> None:
        self.buf, self.lines, self.skip_lf, self.first = b"", [], False, True

    def feed(self, data: bytes, t_ms: float) -> list[Block]:
        if not data:
            return []
        if self.skip_lf and data.startswith(b"\n"):
            data = data[1:]
        self.skip_lf = False
        self.buf += data
        blocks = []
        while match := _EOL.search(self.buf):
            line, self.buf = self.buf[: match.start()], self.buf[match.end():]
            self.skip_lf = match.group() == b"\r" and not self.buf
            if self.first:
                line, self.first = line.removeprefix(b"\xef\xbb\xbf"), False
            if line:
                self.lines.append(line)
            elif self.lines:  # a blank line ends the block
                blocks.append(parse_block(self.lines, t_ms))
                self.lines = []
        return blocks


class _Chunked:
    """Incremental decoder for Transfer-Encoding: chunked (reads may split anywhere)."""

    def __init__(self) -> None:
        self.buf = b""
        self.left = 0  # data bytes left in the current chunk
        self.crlf = False  # the CRLF after a chunk's data is still to skip
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = b""
        while not self.done:
            if self.left:
                piece = self.buf[: self.left]
                out += piece
                self.buf = self.buf[len(piece):]
                self.left -= len(piece)
                if self.left:
                    break
                self.crlf = True
            if self.crlf:
                if len(self.buf) < 2:
                    break
                self.buf, self.crlf = self.buf[2:], False
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self.buf[:line_end].split(b";")[0].strip(), 16)  # ValueError if malformed
            self.buf = self.buf[line_end + 2:]
            self.done, self.left = size == 0, size
        return out


def read_stream(host: str, port: int, path: str = "/api/stream", *, duration: float,
                headers: dict[str, str] | None = None, last_event_id: str | int | None = None,
                connect_timeout: float = 5.0, tls: bool = False, server_name: str | None = None,
                insecure: bool = False, until=None) -> StreamResult:
    """GET ``path`` and read until ``duration`` seconds after the connect began, the server closes,
    or ``until(result)`` says the reader has seen enough."""
    result = StreamResult(started_at=time.time())
    start = time.monotonic()
    ms = lambda: round((time.monotonic() - start) * 1000, 1)  # noqa: E731
    name = server_name or host
    defaults = {"Host": name if port == (443 if tls else 80) else f"{name}:{port}", **BROWSER_HEADERS}
    overridden = {k.lower() for k in headers or {}}  # the caller's headers win, whatever their case
    send = {k: v for k, v in defaults.items() if k.lower() not in overridden} | (headers or {})
    send["Connection"] = "close"  # read until the server closes
    if last_event_id is not None:
        send["Last-Event-ID"] = str(last_event_id)
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in send.items()) + "\r\n"
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        if tls:
            ctx = ssl.create_default_context()
            if insecure:  # self-signed certificates (sandbox, staging)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            sock = ctx.wrap_socket(sock, server_hostname=name)
    except OSError as exc:
        result.error = f"connect: {exc}"
        return result
    with sock:
        try:
            sock.sendall(request.encode())
            head, chunked, blocks, encoded = b"", None, _Blocks(), False
            while (left := duration - (time.monotonic() - start)) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    break
                if not data:
                    result.closed_by_server = True
                    break
                if result.headers_ms is None:
                    head += data
                    if b"\r\n\r\n" not in head:
                        continue
                    head, data = head.split(b"\r\n\r\n", 1)
                    result.headers_ms = ms()
                    lines = head.decode("latin-1").split("\r\n")
                    result.status = int(lines[0].split()[1])
                    for line in lines[1:]:
                        key, _, value = line.partition(":")
                        result.headers[key.strip().lower()] = value.strip()
                    if "chunked" in result.headers.get("transfer-encoding", "").lower():
                        chunked = _Chunked()
                    # Compressed: block boundaries cannot be seen, and that is a finding in itself.
                    encoded = result.headers.get("content-encoding", "").lower() not in ("", "identity")
                result.raw_bytes += len(data)
                if chunked:
                    data = chunked.feed(data)
                if not encoded:
                    result.blocks += blocks.feed(data, ms())
                if until and until(result):
                    break
                if chunked and chunked.done:
                    result.closed_by_server = True
                    break
            if result.headers_ms is None:
                result.error = "no complete response headers" + (
                    " before the server closed" if result.closed_by_server else f" within {duration} s")
        except (OSError, ValueError, IndexError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
    return result
