// A reference HTTP/2 CONNECT proxy (RFC 9113 section 8.5) on Node's http2, used only to check
// the test clients (h2client.py, node_h2_connect.js) and the success-path tests of test_h2.py
// without connectd (H2_REF=1). TLS with ALPN h2; CONNECT host:port -> net.connect, bytes piped
// both ways with backpressure and half-close; a destination error resets the stream with
// CONNECT_ERROR; anything but CONNECT gets 405. No policy, no auth, loopback only.
//
// usage: node h2ref_proxy.js PORT CERT_FILE KEY_FILE      (prints "listening PORT" when ready)
'use strict';

const fs = require('fs');
const http2 = require('http2');
const net = require('net');

const [port, certFile, keyFile] = process.argv.slice(2);
const { NGHTTP2_CONNECT_ERROR } = http2.constants;

const server = http2.createSecureServer({
  cert: fs.readFileSync(certFile),
  key: fs.readFileSync(keyFile),
  ALPNProtocols: ['h2'],
  settings: { maxConcurrentStreams: 256, initialWindowSize: 262144 },
  maxSessionMemory: 1024,
});

server.on('session', (session) => session.setLocalWindowSize(4 * 1024 * 1024));

server.on('stream', (stream, headers) => {
  const authority = headers[':authority'] || '';
  const m = /^(.+):(\d+)$/.exec(authority);
  if (headers[':method'] !== 'CONNECT' || headers[':protocol']) {
    stream.respond({ ':status': 405, allow: 'CONNECT' }, { endStream: true });
    return;
  }
  if (!m) {
    stream.respond({ ':status': 400 }, { endStream: true });
    return;
  }
  const sock = net.connect({ port: Number(m[2]), host: m[1].replace(/^\[|\]$/g, ''),
    allowHalfOpen: true });
  let up = false;
  sock.on('connect', () => {
    up = true;
    stream.respond({ ':status': 200 });
    sock.pipe(stream); // destination FIN -> END_STREAM after the last bytes
    stream.pipe(sock); // client END_STREAM -> shutdown(SHUT_WR) of the destination
  });
  sock.on('error', () => {
    if (!up && !stream.destroyed) {
      stream.respond({ ':status': 502 }, { endStream: true });
    } else if (!stream.destroyed) {
      stream.close(NGHTTP2_CONNECT_ERROR);
    }
  });
  stream.on('error', () => sock.destroy());
  stream.on('close', () => {
    if (stream.rstCode) sock.destroy(); // a reset; a clean close lets the socket finish
  });
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
server.listen(Number(port), '127.0.0.1', () => process.stdout.write(`listening ${port}\n`));
