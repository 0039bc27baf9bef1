// The SSE route handler, written to the playbook (see SSE-PLAYBOOK rows 17-19).
export const runtime = 'nodejs'; // streams need the Node runtime, not the edge one
export const dynamic = 'force-dynamic'; // never prerendered or cached

const INTERVAL_MS = Number(process.env.INTERVAL_MS || 1000);
const HEARTBEAT_MS = Number(process.env.HEARTBEAT_MS || 15000);

// Next.js waits for open requests on SIGTERM, and a stream never ends by itself; on
// Node 18 idle keep-alive sockets (nginx's upstream pool) hold it too. End the streams
// and exit after a short grace, so a restart takes a moment, not the whole stop
// timeout. Clients resume with Last-Event-ID (nginx answers `retry:` meanwhile).
const open = new Set();
if (!globalThis.__sseShutdownHook) {
  globalThis.__sseShutdownHook = true;
  process.once('SIGTERM', () => {
    for (const end of open) end();
    setTimeout(() => process.exit(0), 1000).unref();
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
      // Next flushes headers with the first chunk: send one at once so `open` fires.
      send('retry: 5000\n: connected\n\n');
      // Resuming continues at the normal cadence: no burst of replayed events.
      tick = setInterval(() => {
        n += 1;
        send(`id: ${n}\ndata: ${JSON.stringify({ n, ts: Date.now() })}\n\n`);
      }, INTERVAL_MS);
      // Keeps quiet streams open past proxy read timeouts.
      ping = setInterval(() => send(': ping\n\n'), HEARTBEAT_MS);
      const end = () => {
        stop();
        open.delete(end);
        try {
          controller.close();
        } catch {
          // already closed
        }
      };
      open.add(end);
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
