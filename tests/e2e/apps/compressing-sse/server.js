// Test app: an SSE route that compresses when the client asks, the way Express's `compression`
// middleware or Next.js's built-in compression do: one gzip stream per response, no flush per event,
// so events wait in the compressor. It compresses only with COMPRESS=gzip in its environment.
'use strict';
const http = require('http');
const zlib = require('zlib');

const HOST = process.env.HOSTNAME || '127.0.0.1';
const PORT = Number(process.env.PORT || 3000);
const COMPRESS = process.env.COMPRESS === 'gzip';
const streams = new Set();

function stream(req, res) {
  const gzip = COMPRESS && /\bgzip\b/.test(req.headers['accept-encoding'] || '');
  res.writeHead(200, {
    'Content-Type': 'text/event-stream; charset=utf-8',
    'Cache-Control': 'no-cache', // no `no-transform`: compression middleware compresses it
    ...(gzip ? { 'Content-Encoding': 'gzip', Vary: 'Accept-Encoding' } : {}),
  });
  const out = gzip ? zlib.createGzip() : res;
  if (gzip) out.pipe(res);
  let n = Number(/^\d+$/.test(req.headers['last-event-id'] || '') ? req.headers['last-event-id'] : 0);
  out.write('retry: 1000\n: connected\n\n');
  const tick = setInterval(() => {
    n += 1;
    out.write(`id: ${n}\ndata: ${JSON.stringify({ n, ts: Date.now() })}\n\n`);
  }, 1000);
  const entry = { end: () => out.end('retry: 500\n\n') };
  streams.add(entry);
  res.on('close', () => {
    clearInterval(tick);
    streams.delete(entry);
  });
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/healthz') return res.end('ok\n');
  if (path.startsWith('/api/stream')) return stream(req, res);
  res.writeHead(404).end();
});
server.keepAliveTimeout = Number(process.env.KEEP_ALIVE_TIMEOUT || 5000);
server.listen(PORT, HOST);
process.on('SIGTERM', () => {
  for (const s of streams) s.end();
  server.close(() => process.exit(0));
});
