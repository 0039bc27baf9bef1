// SSE load client for the capacity benchmark: zero dependencies (Node 18+), run on the sandbox host itself
// so it reaches the app on loopback and shares the app's clock (latency = receive time - the event's `ts`).
//
//   node sse-load.js --url http://127.0.0.1:80/api/stream --streams 1000 --rate 1000 --hold 30 \
//        [--units nginx.service,sseapp@3000.service] [--connect-timeout 10] \
//        [--local-address 127.0.0.2,127.0.0.3] [--heartbeat 5]
//
// Opens N streams at `rate` connects/s, holds them all for `hold` s after the ramp, then closes them and
// prints one JSON object: totals, latency percentiles, errors by kind, per-unit CPU/RSS, per-stream records.
// --local-address: the source addresses, in turn per stream (one address has ~28k ephemeral ports by default).
// --heartbeat S: idle streams (bench/idle.py): the app's `: ping` comments are what arrives; a stream is on
// time if it answered 200, stayed open through the hold and no gap between heartbeats (from its first bytes,
// until the hold's end) exceeded S + 1 s. Adds `heartbeat` (on-time count, gap histogram) and per-stream
// pings / max_ping_gap_ms / on_time; `healthy` is then the on-time count.
'use strict';
const http = require('http');
const fs = require('fs');
const { performance } = require('perf_hooks');

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const URL_ = new URL(args.url || 'http://127.0.0.1:3000/api/stream');
const STREAMS = Number(args.streams || 100);
const RATE = Number(args.rate || 1000);
const HOLD_S = Number(args.hold || 10);
const CONNECT_TIMEOUT_MS = Number(args['connect-timeout'] || 10) * 1000;
const UNITS = (args.units || '').split(',').filter(Boolean);
const MAX_GAP_MS = 1500;
const LOCAL_ADDRESSES = (args['local-address'] || '').split(',').filter(Boolean);
const HEARTBEAT_MS = args.heartbeat ? Number(args.heartbeat) * 1000 : null;
const ON_TIME_MS = HEARTBEAT_MS == null ? null : HEARTBEAT_MS + 1000;
const GAP_BIN_MS = 100; // heartbeat gap histogram: 100 ms bins
const gapBins = {};

// Wall-clock ms with sub-ms resolution, on the same clock as the app's Date.now(): calibrated on the edge
// of a Date.now() tick (Date.now() is floored to the ms, so a plain offset would be up to 1 ms early).
const ORIGIN = (() => {
  const first = Date.now();
  let t;
  while ((t = Date.now()) === first);
  return t - performance.now();
})();
const now = () => ORIGIN + performance.now();
// The event's `ts` is the app's Date.now(), floored: on average 0.5 ms before the real send time.
const TS_FLOOR = 0.5;

// --- per-unit CPU (cgroup cpu.stat usage_usec) and memory (cgroup memory or summed RSS of its processes)
function cgroupDir(unit) {
  // cgroup v2 host, or the v2 `unified` tree systemd mounts in a hybrid (v1) container. An instance of a
  // template (sseapp@3000.service) sits in its template's slice, system-sseapp.slice ('-' escaped as \x2d).
  const at = unit.indexOf('@');
  const slice = at > 0 ? `system-${unit.slice(0, at).replace(/-/g, '\\x2d')}.slice/` : '';
  for (const base of ['/sys/fs/cgroup/system.slice', '/sys/fs/cgroup/unified/system.slice']) {
    if (fs.existsSync(`${base}/${slice}${unit}/cgroup.procs`)) return `${base}/${slice}${unit}`;
  }
  return null;
}
function read(path) {
  try { return fs.readFileSync(path, 'utf8'); } catch { return null; }
}
function cpuUsec(unit) {
  const dir = cgroupDir(unit);
  const stat = dir && read(`${dir}/cpu.stat`);
  const m = stat && /^usage_usec (\d+)/m.exec(stat);
  return m ? Number(m[1]) : null;
}
function memoryBytes(unit) {
  const dir = cgroupDir(unit);
  if (!dir) return null;
  const current = read(`${dir}/memory.current`);
  if (current) return Number(current);
  // No memory controller in this cgroup (hybrid container): sum the RSS of the unit's processes.
  let sum = 0;
  for (const pid of (read(`${dir}/cgroup.procs`) || '').split('\n').filter(Boolean)) {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(read(`/proc/${pid}/status`) || '');
    if (m) sum += Number(m[1]) * 1024;
  }
  return sum;
}
const memorySource = (unit) => {
  const dir = cgroupDir(unit);
  return !dir ? null : fs.existsSync(`${dir}/memory.current`) ? 'cgroup memory.current' : 'summed VmRSS';
};

// --- streams
const streams = [];
const errors = {};
const latencies = [];
let holdEnd = Infinity;
let closing = false;

function fail(s, kind) {
  if (s.error || closing) return;
  s.error = kind;
  errors[kind] = (errors[kind] || 0) + 1;
}

function errorKind(err, s) {
  if (err.code === 'ECONNREFUSED') return 'connect refused';
  if (err.code === 'ECONNRESET') return s.status ? 'reset after 200' : 'reset';
  if (err.code === 'EMFILE' || err.code === 'ENFILE') return 'client out of fds';
  if (err.code === 'EADDRNOTAVAIL') return 'client out of ports';
  return `error ${err.code || err.message}`;
}

function open(i) {
  const s = { i, status: 0, events: 0, maxGap: 0, last: 0, opened: now(), headers: 0, error: null,
              pings: 0, beat: 0, maxBeatGap: 0 };
  streams.push(s);
  const req = http.request({
    host: URL_.hostname, port: URL_.port || 80, path: URL_.pathname, agent: false,
    ...(LOCAL_ADDRESSES.length ? { localAddress: LOCAL_ADDRESSES[i % LOCAL_ADDRESSES.length] } : {}),
    // What a browser's EventSource sends (Accept-Encoding too: compression would hold events back).
    headers: { Accept: 'text/event-stream', 'Cache-Control': 'no-cache', 'Accept-Encoding': 'gzip, deflate, br' },
  });
  s.req = req;
  const timer = setTimeout(() => { fail(s, 'no response within connect timeout'); req.destroy(); }, CONNECT_TIMEOUT_MS);
  req.on('response', (res) => {
    clearTimeout(timer);
    s.status = res.statusCode;
    s.headers = now();
    if (res.statusCode !== 200) { fail(s, `status ${res.statusCode}`); res.resume(); return; }
    if (res.headers['content-encoding']) { fail(s, `compressed (${res.headers['content-encoding']})`); req.destroy(); return; }
    res.setEncoding('utf8');
    let buf = '';
    res.on('data', (chunk) => {
      const t = now();
      buf += chunk;
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        for (const line of block.split('\n')) {
          if (HEARTBEAT_MS != null && line.startsWith(':')) {
            // The first bytes (`: connected`) start the clock; each `: ping` is a heartbeat.
            if (s.beat && t <= holdEnd) {
              const gap = t - s.beat;
              s.maxBeatGap = Math.max(s.maxBeatGap, gap);
              const bin = Math.floor(gap / GAP_BIN_MS) * GAP_BIN_MS;
              gapBins[bin] = (gapBins[bin] || 0) + 1;
            }
            if (line.startsWith(': ping')) s.pings += 1;
            if (t <= holdEnd) s.beat = t;
            continue;
          }
          if (!line.startsWith('data:')) continue;
          let ts;
          try { ts = JSON.parse(line.slice(5)).ts; } catch { continue; }
          if (typeof ts !== 'number') continue;
          if (s.last) s.maxGap = Math.max(s.maxGap, t - s.last);
          s.last = t;
          s.events += 1;
          latencies.push(t - (ts + TS_FLOOR));
        }
      }
    });
    res.on('end', () => { if (now() < holdEnd) fail(s, 'early close'); });
    res.on('close', () => { if (now() < holdEnd) fail(s, 'early close'); });
    res.on('error', (err) => fail(s, errorKind(err, s)));
  });
  req.on('error', (err) => { clearTimeout(timer); fail(s, errorKind(err, s)); });
  req.end();
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function nofileLimit() {
  const m = /^Max open files\s+(\d+)\s+(\d+)/m.exec(read('/proc/self/limits') || '');
  return m ? { soft: Number(m[1]), hard: Number(m[2]) } : null;
}

async function main() {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const start = now();
  // Bounded ramp: connects spread evenly at RATE per second.
  for (let i = 0; i < STREAMS; i++) {
    const due = start + (i * 1000) / RATE;
    if (due > now()) await sleep(due - now());
    open(i);
  }
  const rampEnd = now();
  const clientCpu0 = process.cpuUsage();
  const cpu0 = Object.fromEntries(UNITS.map((u) => [u, cpuUsec(u)]));
  const peak = Object.fromEntries(UNITS.map((u) => [u, memoryBytes(u)]));
  const holdStart = now();
  holdEnd = holdStart + HOLD_S * 1000;
  while (now() < holdEnd) {
    await sleep(Math.min(5000, holdEnd - now()));
    for (const u of UNITS) peak[u] = Math.max(peak[u] || 0, memoryBytes(u) || 0);
  }
  const held = (now() - holdStart) / 1000;
  const units = {};
  for (const u of UNITS) {
    const c1 = cpuUsec(u);
    units[u] = {
      cpu_pct: cpu0[u] == null || c1 == null ? null : (100 * (c1 - cpu0[u])) / 1e6 / held,
      mem_peak_bytes: peak[u], mem_end_bytes: memoryBytes(u), mem_source: memorySource(u),
    };
  }
  const end = now();
  const openAtEnd = streams.filter((s) => s.status === 200 && !s.error).length;
  closing = true;
  for (const s of streams) s.req.destroy();

  let healthy = 0;
  let onTime = 0;
  const clientCpuHold = process.cpuUsage(clientCpu0);
  const records = streams.map((s) => {
    if (HEARTBEAT_MS != null) {
      // Idle streams: judged by their heartbeats alone, the last gap running to the hold's end.
      const gap = s.beat ? Math.max(s.maxBeatGap, end - s.beat) : Infinity;
      const ok = s.status === 200 && !s.error && gap <= ON_TIME_MS;
      if (ok) onTime += 1;
      else if (!s.error) errors[`heartbeat gap over ${ON_TIME_MS / 1000} s`] =
        (errors[`heartbeat gap over ${ON_TIME_MS / 1000} s`] || 0) + 1;
      return { ok, on_time: ok, status: s.status, pings: s.pings, events: s.events,
               max_ping_gap_ms: Number.isFinite(gap) ? Math.round(gap) : null, error: s.error };
    }
    // Seconds this stream was open up to the end of the hold; the last event must be recent too.
    const duration = s.headers ? (end - s.headers) / 1000 : 0;
    const gap = s.last ? Math.max(s.maxGap, end - s.last) : Infinity;
    const ok = s.status === 200 && !s.error && s.events >= duration - 3 && gap <= MAX_GAP_MS;
    if (ok) healthy += 1;
    else if (!s.error) errors[s.events < duration - 3 ? 'too few events' : 'gap over 1.5 s'] =
      (errors[s.events < duration - 3 ? 'too few events' : 'gap over 1.5 s'] || 0) + 1;
    return { ok, status: s.status, events: s.events, max_gap_ms: Number.isFinite(gap) ? Math.round(gap) : null,
             error: s.error };
  });
  latencies.sort((a, b) => a - b);
  const round = (x) => (x == null ? null : Math.round(x * 10) / 10);
  if (HEARTBEAT_MS != null) healthy = onTime;
  const out = {
    url: URL_.href, streams: STREAMS, rate: RATE, hold_s: HOLD_S,
    ramp_s: round((rampEnd - start) / 1000), held_s: round(held),
    open_at_end: openAtEnd, healthy, events: latencies.length,
    ...(HEARTBEAT_MS == null ? {} : {
      heartbeat: { interval_s: HEARTBEAT_MS / 1000, on_time_limit_s: ON_TIME_MS / 1000, on_time: onTime,
                   pings: streams.reduce((n, s) => n + s.pings, 0),
                   max_gap_ms: Math.round(Math.max(0, ...records.map((r) => r.max_ping_gap_ms ?? Infinity))),
                   gap_hist_ms: gapBins, gap_bin_ms: GAP_BIN_MS },
    }),
    local_addresses: LOCAL_ADDRESSES,
    latency_ms: { p50: round(percentile(latencies, 50)), p99: round(percentile(latencies, 99)),
                  max: round(latencies[latencies.length - 1]) },
    errors, units, client: { nofile: nofileLimit(), cpu_pct: round((process.cpuUsage().user + process.cpuUsage().system) / 1e4 / ((end - start) / 1000)),
                             // CPU % of one core over the hold alone (cpu_pct: the whole run, ramp included)
                             cpu_pct_hold: round((clientCpuHold.user + clientCpuHold.system) / 1e4 / held),
                             max_rss_bytes: process.resourceUsage().maxRSS * 1024,
                             node: process.version },
    per_stream: records,
  };
  // Exit only once the whole report is written: a pipe takes 64 KiB at a time.
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
}

main().catch((err) => { console.error(err); process.exit(1); });
