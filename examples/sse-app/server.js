// Zero-dependency SSE example app (Node 18+): what `make demo` deploys behind nginx.
'use strict';
const http = require('http');

const HOST = process.env.HOSTNAME || '127.0.0.1';
const PORT = Number(process.env.PORT || 3000);
const INTERVAL_MS = Number(process.env.INTERVAL_MS || 1000);
const HEARTBEAT_MS = Number(process.env.HEARTBEAT_MS || 15000);

const PAGE = `<!doctype html><meta charset="utf-8"><title>SSE demo</title>
<h1>SSE through nginx</h1><p>events: <b id="count">0</b></p><pre id="last">waiting…</pre>
<script>
const es = new EventSource('/api/stream'); let count = 0;
es.onmessage = (e) => { count += 1; document.getElementById('count').textContent = count;
  const d = JSON.parse(e.data);
  document.getElementById('last').textContent = 'id ' + e.lastEventId + ', lag ' + (Date.now() - d.ts) + ' ms'; };
</script>
`;

const streams = new Set();

function stream(req, res) {
  const last = /^\d+$/.test(req.headers['last-event-id'] || '') ? Number(req.headers['last-event-id']) : 0;
  let n = last;
  req.socket.setNoDelay(true);
  req.socket.setTimeout(0);
  res.writeHead(200, {
    'Content-Type': 'text/event-stream; charset=utf-8',
    'Cache-Control': 'no-cache, no-transform',
    'X-Accel-Buffering': 'no',
    Connection: 'keep-alive',
  });
  // Browsers fire `open` only once bytes arrive: send something at once.
  res.write('retry: 5000\n: connected\n\n');
  // Resume continues at the normal cadence: no burst of replayed events.
  const tick = setInterval(() => {
    n += 1;
    res.write(`id: ${n}\ndata: ${JSON.stringify({ n, ts: Date.now() })}\n\n`);
  }, INTERVAL_MS);
  // Keeps idle streams open past proxy timeouts (nginx, load balancers).
  const ping = setInterval(() => res.write(': ping\n\n'), HEARTBEAT_MS);
  const entry = { res, stop: () => { clearInterval(tick); clearInterval(ping); } };
  streams.add(entry);
  req.on('close', () => { entry.stop(); streams.delete(entry); });
}

const server = http.createServer((req, res) => {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD' });
    return res.end();
  }
  const path = req.url.split('?')[0];
  if (path === '/api/stream') return stream(req, res);
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
// Longer than nginx's upstream keepalive (60 s), so nginx never reuses a socket Node just closed.
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;

function shutdown() {
  server.close(() => process.exit(0));
  for (const { res, stop } of streams) { stop(); res.end(); }
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.listen(PORT, HOST, () => console.log(`sse-app listening on http://${HOST}:${PORT}`));
