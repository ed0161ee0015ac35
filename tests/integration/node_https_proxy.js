// A Node.js client for connectd's TLS listener (test_tls_clients.py): for each target, open TLS
// to the proxy with tls.connect (verified against the test CA, servername = the proxy name),
// send CONNECT (with Proxy-Authorization when --auth is given), read the proxy's reply head,
// and on 200 run TLS to the origin over the proxy TLS socket with tls.connect({socket})
// (verified against the same CA and the target's name), GET the path and read to the end.
// Prints one JSON object to stdout: {results: [{target, proxyTLS, alpn, status, head, body,
// originTLS, error}]}. Targets run one after another. Bounded: gives up after the timeout.
//
// usage: node node_https_proxy.js PROXY_HOST PROXY_PORT PROXY_NAME CA_FILE TIMEOUT_MS AUTH
//                                 HOST:PORT/PATH...      (AUTH: user:password, or - for none)
'use strict';

const fs = require('fs');
const tls = require('tls');

const [proxyHost, proxyPort, proxyName, caFile, timeoutArg, auth, ...targets] =
  process.argv.slice(2);
if (!targets.length) {
  process.stderr.write('usage: node node_https_proxy.js PROXY_HOST PROXY_PORT PROXY_NAME ' +
    'CA_FILE TIMEOUT_MS AUTH HOST:PORT/PATH...\n');
  process.exit(2);
}
const ca = fs.readFileSync(caFile);
const results = [];

const timer = setTimeout(() => {
  process.stdout.write(JSON.stringify({ results, error: 'timeout' }) + '\n');
  process.exit(1);
}, Number(timeoutArg));

function one(spec) {
  return new Promise((resolve) => {
    const slash = spec.indexOf('/');
    const target = spec.slice(0, slash);
    const path = spec.slice(slash);
    const host = target.slice(0, target.lastIndexOf(':'));
    const r = { target };
    let done = false;
    const finish = (err) => {
      if (done) return;
      done = true;
      if (err) r.error = String(err && err.message ? err.message : err);
      resolve(r);
    };
    const outer = tls.connect({
      host: proxyHost,
      port: Number(proxyPort),
      servername: proxyName,
      ca,
      rejectUnauthorized: true,
      ALPNProtocols: ['http/1.1'],
    });
    outer.on('error', finish);
    outer.once('secureConnect', () => {
      r.proxyTLS = outer.getProtocol();
      r.alpn = outer.alpnProtocol || null;
      let req = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n`;
      if (auth !== '-') {
        req += `Proxy-Authorization: Basic ${Buffer.from(auth).toString('base64')}\r\n`;
      }
      outer.write(req + '\r\n');
      let buf = Buffer.alloc(0);
      const onData = (d) => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        outer.removeListener('data', onData);
        outer.pause();
        r.head = buf.slice(0, end).toString('latin1');
        r.status = Number(r.head.split(' ')[1]);
        const rest = buf.slice(end + 4);
        if (r.status !== 200) {
          r.body = rest.toString('latin1');
          outer.on('data', (x) => { r.body += x.toString('latin1'); });
          outer.on('end', () => { outer.destroy(); finish(); });
          outer.on('close', () => finish());
          outer.resume();
          return;
        }
        if (rest.length) outer.unshift(rest);
        const inner = tls.connect({
          socket: outer, servername: host, ca, rejectUnauthorized: true,
        });
        const chunks = [];
        inner.on('error', finish);
        inner.once('secureConnect', () => {
          r.originTLS = inner.getProtocol();
          inner.write(`GET ${path} HTTP/1.0\r\nHost: ${target}\r\n\r\n`);
        });
        inner.on('data', (x) => chunks.push(x));
        inner.on('end', () => {
          r.body = Buffer.concat(chunks).toString('latin1');
          inner.destroy();
          outer.destroy();
          finish();
        });
      };
      outer.on('data', onData);
    });
  });
}

(async () => {
  for (const t of targets) results.push(await one(t));
  clearTimeout(timer);
  process.stdout.write(JSON.stringify({ results }) + '\n');
  process.exit(results.every((x) => !x.error) ? 0 : 1);
})();
