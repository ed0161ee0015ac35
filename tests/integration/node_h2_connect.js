// A Node.js HTTP/2 client for the connectd integration tests (test_h2.py): over ONE http2
// session (TLS to the proxy, ALPN h2, verified against the test CA as 'localhost'), open N
// concurrent CONNECT streams (RFC 9113 section 8.5: :method CONNECT and :authority only) to
// TARGET, an echo server; on each send BYTES of deterministic pseudo-random data (xorshift32,
// seeded by the stream's index, so that no two streams carry the same bytes), end the stream,
// read the echo up to the proxy's END_STREAM and check it byte-exact.
// Prints one JSON line: {"alpn", "streams", "exact", "failures": [...], "statuses", "ms"}; exit
// status 0 only when every stream got 200 and an exact echo. Bounded: gives up after TIMEOUT_MS.
//
// usage: node node_h2_connect.js PROXY_PORT CA_FILE TARGET N BYTES [TIMEOUT_MS]
'use strict';

const fs = require('fs');
const http2 = require('http2');

const [portArg, caFile, target, nArg, bytesArg, timeoutArg] = process.argv.slice(2);
if (!target || !nArg || !bytesArg) {
  process.stderr.write('usage: node node_h2_connect.js PROXY_PORT CA_FILE TARGET N BYTES ' +
    '[TIMEOUT_MS]\n');
  process.exit(2);
}
const N = Number(nArg);
const BYTES = Number(bytesArg);
const t0 = Date.now();
const result = { alpn: null, streams: N, exact: 0, failures: [], statuses: {}, ms: 0 };

function finish(code) {
  result.ms = Date.now() - t0;
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(code);
}

setTimeout(() => {
  result.failures.push(`timeout after ${timeoutArg || 60000} ms`);
  finish(1);
}, Number(timeoutArg || 60000));

function payload(seed) {
  const buf = Buffer.alloc(BYTES + 3);
  let x = (seed * 2654435761 + 12345) >>> 0 || 1;
  for (let i = 0; i < BYTES; i += 4) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    buf.writeUInt32LE(x, i);
  }
  return buf.subarray(0, BYTES);
}

// Made before connecting: 100 x 2 MiB take seconds on a busy machine, and the proxy gives a
// session only its handshake timeout to send the preface.
const payloads = Array.from({ length: N }, (_, i) => payload(i + 1));

const session = http2.connect(`https://127.0.0.1:${portArg}`, {
  ca: fs.readFileSync(caFile),
  servername: 'localhost',
  settings: { initialWindowSize: 1 << 20, enablePush: false },
  maxSessionMemory: 1024, // MB; the default 10 refuses streams once many are in flight
});
session.on('error', (e) => { result.failures.push(`session: ${e.message}`); finish(1); });
session.on('goaway', (code) => result.failures.push(`GOAWAY ${code}`));

let done = 0;
function streamDone(i, err) {
  if (err) result.failures.push(`stream ${i}: ${err}`);
  else result.exact += 1;
  done += 1;
  if (done === N) {
    session.close();
    finish(result.exact === N && result.failures.length === 0 ? 0 : 1);
  }
}

session.on('connect', () => {
  result.alpn = session.alpnProtocol;
  session.setLocalWindowSize(64 * 1024 * 1024);
  for (let i = 0; i < N; i++) {
    const data = payloads[i];
    let off = 0;
    let bad = null;
    let finished = false;
    const end = (err) => { if (!finished) { finished = true; streamDone(i, err); } };
    const req = session.request({ ':method': 'CONNECT', ':authority': target },
      { endStream: false });
    req.on('response', (headers) => {
      const st = headers[':status'];
      result.statuses[st] = (result.statuses[st] || 0) + 1;
      if (st !== 200) { end(`status ${st}`); return; }
      req.end(data); // all of it, then END_STREAM
    });
    req.on('data', (chunk) => {
      if (bad === null && (off + chunk.length > BYTES ||
          !chunk.equals(data.subarray(off, off + chunk.length)))) {
        bad = `echo differs at or after byte ${off}`;
      }
      off += chunk.length;
    });
    req.on('end', () => {
      if (bad) end(bad);
      else if (off !== BYTES) end(`echo has ${off} bytes, want ${BYTES}`);
      else end(null);
    });
    req.on('error', (e) => end(`error ${e.message}`));
    req.on('close', () => end(req.rstCode ? `reset ${req.rstCode} after ${off} bytes` :
      `closed after ${off} bytes`));
  }
});
