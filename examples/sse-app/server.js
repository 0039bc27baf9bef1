// Zero-dependency Server-Sent Events example app (CommonJS, Node 18+): what `make demo` deploys behind nginx.
'use strict';
const http = require('http');

// HOSTNAME/PORT as in Next.js standalone servers. Loopback by default: only nginx should reach the app.
// (Docker exports HOSTNAME=<container id>; the systemd unit sets it explicitly.)
const HOST = process.env.HOSTNAME || '127.0.0.1';
const PORT = Number(process.env.PORT || 3000);
const INTERVAL_MS = Number(process.env.INTERVAL_MS || 1000);
const HEARTBEAT_MS = Number(process.env.HEARTBEAT_MS || 15000);

const STREAM_HEADERS = {
  'Content-Type': 'text/event-stream; charset=utf-8',
  'Cache-Control': 'no-cache, no-transform', // no-transform: proxies must not compress or rewrite it
  'X-Accel-Buffering': 'no', // nginx: pass this response through unbuffered
  Connection: 'keep-alive',
};

const PAGE = `<!doctype html>
<html lang="en"><meta charset="utf-8"><title>SSE demo</title>
<h1>Server-Sent Events</h1>
<p>state: <b id="state">connecting</b> · events: <b id="count">0</b></p>
<pre id="last">waiting…</pre>
<script>
const $ = (id) => document.getElementById(id);
const es = new EventSource('/api/stream');
let count = 0;
es.onopen = () => { $('state').textContent = 'open'; };
es.onerror = () => { $('state').textContent = 'reconnecting'; };
es.onmessage = (e) => {
  const d = JSON.parse(e.data);
  $('count').textContent = ++count;
  $('last').textContent = 'id ' + e.lastEventId + '  ' + e.data + '  lag ' + (Date.now() - d.ts) + ' ms';
};
</script>
</html>
`;

const streams = new Set(); // open streams, ended on shutdown

function lastEventId(req) {
  const value = req.headers['last-event-id'];
  const n = /^\d+$/.test(value || '') ? Number(value) : NaN;
  return Number.isSafeInteger(n) ? n : 0; // anything else: start over
}

function stream(req, res) {
  if (req.method === 'HEAD') {
    res.writeHead(200, STREAM_HEADERS);
    return res.end();
  }
  let n = lastEventId(req);
  req.socket.setNoDelay(true); // small writes go out at once instead of waiting for an ACK (Nagle)
  req.socket.setTimeout(0); // a stream is idle between events by design
  res.writeHead(200, STREAM_HEADERS);
  res.flushHeaders();
  // Browsers fire EventSource `open` only once body bytes arrive, so send something at once.
  res.write('retry: 5000\n: connected\n\n');
  let tick, ping;
  const entry = { res, closing: false, stop: () => { clearInterval(tick); clearInterval(ping); streams.delete(entry); } };
  const send = () => {
    n += 1;
    res.write(`id: ${n}\ndata: ${JSON.stringify({ n, ts: Date.now() })}\n\n`);
    if (entry.closing) goodbye(entry); // shutting down: end right after an event, so the client misses none
  };
  // A resumed client gets the event it is owed at once, then the normal cadence (one event, not a burst).
  if (n > 0) send();
  tick = setInterval(send, INTERVAL_MS);
  // A comment now and then keeps quiet streams alive through proxy read timeouts (nginx, load balancers).
  ping = setInterval(() => res.write(': ping\n\n'), HEARTBEAT_MS);
  streams.add(entry);
  req.on('close', entry.stop);
  res.on('close', entry.stop); // also fires if the request side was already closed
}

const server = http.createServer((req, res) => {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' });
    return res.end('method not allowed\n');
  }
  const path = req.url.split('?')[0];
  // One stream per topic too (/api/stream/<topic>): the same events, to try several SSE paths.
  if (path === '/api/stream' || path.startsWith('/api/stream/')) return stream(req, res);
  if (path === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    return res.end('ok\n');
  }
  if (path === '/') {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    return res.end(PAGE);
  }
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found\n');
});
// Longer than nginx's upstream keepalive_timeout (60 s): the upstream side (nginx) must be the one to close
// an idle keep-alive connection, or nginx may reuse a socket Node is just closing and the request fails (502).
// Idle keep-alive longer than nginx's upstream keepalive_timeout (the unit sets KEEP_ALIVE_TIMEOUT, as for
// Next.js), so nginx never reuses a socket Node is just closing.
server.keepAliveTimeout = Number(process.env.KEEP_ALIVE_TIMEOUT) || server.keepAliveTimeout;
server.headersTimeout = server.keepAliveTimeout + 1000; // must exceed keepAliveTimeout

// On shutdown each stream gets a short `retry:` so browsers come straight back (to another instance) with
// Last-Event-ID instead of waiting 5 s; random per stream, so many clients return over a second, not in one burst.
const shutdownRetryMs = () => 500 + Math.floor(Math.random() * 1001); // 500..1500

function goodbye(entry) {
  entry.stop();
  const socket = entry.res.socket;
  entry.res.write(`retry: ${shutdownRetryMs()}\n\n`);
  entry.res.end(); // the final chunk: a clean end of stream for the client
  if (socket) socket.destroySoon(); // and close the connection once written, even if keep-alive
}

function shutdown() {
  server.close(() => process.exit(0)); // stop accepting; exits once every connection is gone
  // Each stream ends right after its next event (within one interval), so its client loses no time but
  // the retry; any that has not ticked by then (a slow cadence) ends anyway, well within the stop timeout.
  for (const entry of streams) entry.closing = true;
  setTimeout(() => { for (const entry of [...streams]) goodbye(entry); }, Math.min(INTERVAL_MS + 250, 2000));
  // Node 18 server.close() leaves idle keep-alive connections open (Node 19+ closes them).
  if (server.closeIdleConnections) server.closeIdleConnections();
  setTimeout(() => process.exit(0), 5000).unref(); // safety net
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.listen(PORT, HOST, () => {
  const { address, port } = server.address();
  console.log(`sse-app listening on ${address.includes(':') ? `[${address}]` : address}:${port}`);
});
