// Is an app instance up and streaming? Run on the host with the app's own Node:
//   node app-check.js HOST PORT HEALTH_PATH TIMEOUT_S SSE_PATH...
// Exit 0: the health path answered 200 within TIMEOUT_S, and every SSE path sent a first block as
// text/event-stream. Otherwise exit 1 with what the check saw.
'use strict';
const http = require('http');
const [host, port, healthPath, timeoutS, ...ssePaths] = process.argv.slice(2);
const deadline = Date.now() + Number(timeoutS || 30) * 1000;

function get(path, onResponse) {
  const req = http.get({ host, port: Number(port), path, headers: { Accept: 'text/event-stream, */*' } }, onResponse);
  req.setTimeout(5000, () => req.destroy(new Error(`no answer on ${path} within 5 s`)));
  return req;
}

function fail(message) {
  console.error(`app check failed on ${host}:${port}: ${message}`);
  process.exit(1);
}

function health() {
  const retry = (why) => (Date.now() < deadline ? setTimeout(health, 250) : fail(why));
  get(healthPath, (res) => {
    res.resume();
    if (res.statusCode === 200) return stream(0);
    retry(`${healthPath} answered ${res.statusCode}`);
  }).on('error', (err) => retry(`${healthPath}: ${err.message}`));
}

function stream(i) {
  if (i === ssePaths.length) process.exit(0);
  const path = ssePaths[i];
  const req = get(path, (res) => {
    const type = res.headers['content-type'] || '';
    if (res.statusCode !== 200 || !type.startsWith('text/event-stream')) {
      fail(`${path} answered ${res.statusCode} ${type || '(no content type)'}`);
    }
    const timer = setTimeout(() => fail(`${path} sent no SSE block within 3 s`), 3000);
    res.on('end', () => fail(`${path} ended before its first SSE block`));
    let seen = '';
    res.on('data', (chunk) => {
      seen += chunk.toString('utf8');
      if (!/\r\n\r\n|\n\n|\r\r/.test(seen)) return; // a block ends with a blank line
      clearTimeout(timer);
      res.removeAllListeners('end');
      req.destroy();
      stream(i + 1);
    });
  });
  req.on('error', (err) => fail(`${path}: ${err.message}`));
}

health();
