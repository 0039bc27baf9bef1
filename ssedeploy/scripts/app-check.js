// Is the app up and streaming? Run on the host with the app's own Node:
//   node app-check.js PORT HEALTH_PATH SSE_PATH TIMEOUT_S
// Exit 0: health path answered 200 and the SSE path sent a first block as text/event-stream.
'use strict';
const http = require('http');
const [port, healthPath, ssePath, timeoutS] = process.argv.slice(2);
const deadline = Date.now() + Number(timeoutS || 30) * 1000;

function get(path, onResponse) {
  const req = http.get({ host: '127.0.0.1', port: Number(port), path, headers: { Accept: '*/*' } }, onResponse);
  req.setTimeout(5000, () => req.destroy(new Error(`no answer on ${path} within 5 s`)));
  return req;
}

function fail(message) {
  console.error(`app check failed: ${message}`);
  process.exit(1);
}

function health() {
  const retry = (why) => (Date.now() < deadline ? setTimeout(health, 250) : fail(why));
  get(healthPath, (res) => {
    res.resume();
    if (res.statusCode === 200) return stream();
    retry(`${healthPath} answered ${res.statusCode}`);
  }).on('error', (err) => retry(`${healthPath}: ${err.message}`));
}

function stream() {
  const req = get(ssePath, (res) => {
    const type = res.headers['content-type'] || '';
    if (res.statusCode !== 200 || !type.startsWith('text/event-stream')) {
      fail(`${ssePath} answered ${res.statusCode} ${type}`);
    }
    const timer = setTimeout(() => fail(`${ssePath} sent no block within 3 s`), 3000);
    res.once('data', () => {
      clearTimeout(timer);
      req.destroy();
      process.exit(0);
    });
  });
  req.on('error', (err) => fail(`${ssePath}: ${err.message}`));
}

health();
