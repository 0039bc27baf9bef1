// The SSE route handler, written to the playbook (see SSE-PLAYBOOK rows 17-19).
export const runtime = 'nodejs'; // streams need the Node runtime, not the edge one
export const dynamic = 'force-dynamic'; // never prerendered or cached

const INTERVAL_MS = Number(process.env.INTERVAL_MS || 1000);
const HEARTBEAT_MS = Number(process.env.HEARTBEAT_MS || 15000);

// Next.js waits for open requests on SIGTERM, and a stream never ends by itself. On
// SIGTERM each stream ends right after its next event with a short `retry:`, random per
// stream, so browsers come straight back (to the other instance) with Last-Event-ID,
// having missed nothing, spread over a second rather than in one burst; then exit.
const open = new Set();
const shutdownRetryMs = () => 500 + Math.floor(Math.random() * 1001); // 500..1500
if (!globalThis.__sseShutdownHook) {
  globalThis.__sseShutdownHook = true;
  process.once('SIGTERM', () => {
    for (const stream of open) stream.closing = true;
    const grace = Math.min(INTERVAL_MS + 250, 2000);
    setTimeout(() => {
      for (const stream of [...open]) stream.goodbye();
    }, grace);
    setTimeout(() => process.exit(0), grace + 500).unref();
  });
}

export function GET(request) {
  const last = request.headers.get('last-event-id') || '';
  let n = /^\d+$/.test(last) ? Number(last) : 0;
  const encoder = new TextEncoder();
  let tick;
  let ping;
  const stop = () => {
    clearInterval(tick);
    clearInterval(ping);
  };

  const body = new ReadableStream({
    start(controller) {
      const send = (text) => {
        try {
          controller.enqueue(encoder.encode(text));
        } catch {
          stop(); // the client is gone
        }
      };
      const stream = { closing: false };
      const end = () => {
        stop();
        open.delete(stream);
        try {
          controller.close();
        } catch {
          // already closed
        }
      };
      stream.goodbye = () => {
        send(`retry: ${shutdownRetryMs()}\n\n`);
        end();
      };
      const event = () => {
        n += 1;
        send(`id: ${n}\ndata: ${JSON.stringify({ n, ts: Date.now() })}\n\n`);
        if (stream.closing) stream.goodbye(); // shutting down: end right after an event
      };
      // Next flushes headers with the first chunk: send one at once so `open` fires.
      send('retry: 5000\n: connected\n\n');
      // A resumed client gets the event it is owed at once, then the normal cadence (not a burst).
      if (n > 0) event();
      tick = setInterval(event, INTERVAL_MS);
      // Keeps quiet streams open past proxy read timeouts.
      ping = setInterval(() => send(': ping\n\n'), HEARTBEAT_MS);
      open.add(stream);
      request.signal.addEventListener('abort', end);
    },
    cancel() {
      stop();
    },
  });

  return new Response(body, {
    headers: {
      'Content-Type': 'text/event-stream; charset=utf-8',
      // no-transform: Next's own compression leaves the stream alone only with it.
      'Cache-Control': 'no-cache, no-transform',
      'X-Accel-Buffering': 'no',
    },
  });
}
