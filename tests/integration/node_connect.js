// A Node.js client for the connectd integration tests (test_clients.py): open a tunnel with
// http.request({method: 'CONNECT'}), run TLS over the tunnel's socket with tls.connect
// (verifying against the test CA and the name 'localhost'), send one GET and print the whole
// response to stdout. Bounded: gives up after the timeout.
//
// usage: node node_connect.js PROXY_HOST PROXY_PORT TARGET_HOST TARGET_PORT CA_FILE PATH [TIMEOUT_MS]
'use strict';

const fs = require('fs');
const http = require('http');
const tls = require('tls');

const [proxyHost, proxyPort, targetHost, targetPort, caFile, path, timeoutArg] =
  process.argv.slice(2);
if (!caFile || !path) {
  process.stderr.write('usage: node node_connect.js PROXY_HOST PROXY_PORT TARGET_HOST ' +
    'TARGET_PORT CA_FILE PATH [TIMEOUT_MS]\n');
  process.exit(2);
}

function fail(msg) {
  process.stderr.write(`node_connect: ${msg}\n`);
  process.exit(1);
}

const timer = setTimeout(() => fail('timeout'), Number(timeoutArg || 20000));

const target = `${targetHost}:${targetPort}`;
const req = http.request({
  host: proxyHost,
  port: Number(proxyPort),
  method: 'CONNECT',
  path: target,
  headers: { Host: target },
  agent: false,
});

req.on('error', (e) => fail(`CONNECT request: ${e.message}`));

req.on('connect', (res, socket, head) => {
  process.stderr.write(`node_connect: proxy answered ${res.statusCode} ${res.statusMessage}\n`);
  if (res.statusCode !== 200) fail(`proxy refused: ${res.statusCode}`);
  if (head && head.length) socket.unshift(head);
  const conn = tls.connect({
    socket,
    ca: fs.readFileSync(caFile),
    servername: targetHost,
    rejectUnauthorized: true,
  });
  const chunks = [];
  conn.on('secureConnect', () => {
    conn.write(`GET ${path} HTTP/1.0\r\nHost: ${target}\r\n\r\n`);
  });
  conn.on('data', (d) => chunks.push(d));
  conn.on('error', (e) => fail(`TLS: ${e.message}`));
  conn.on('end', () => {
    clearTimeout(timer);
    process.stdout.write(Buffer.concat(chunks));
    conn.destroy();
  });
});

req.end();
