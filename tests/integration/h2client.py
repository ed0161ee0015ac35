"""A small synchronous HTTP/2 client for the HTTP/2 CONNECT tests (test_h2.py): TLS to the proxy
(python's ssl module, ALPN h2, verifying against the test CA), framing by the `h2` library.

One H2Client is one connection. Streams are opened with connect() (":method CONNECT" and
":authority" only, RFC 9113 section 8.5) or request() (any header list, e.g. a GET or an extended
CONNECT); send() / end() / reset() queue data, END_STREAM and RST_STREAM; pump() does one bounded
round of socket I/O (non-blocking: it always reads what arrives while it writes) and records, per
stream, the response headers, the data, END_STREAM and RST_STREAM, and on the connection the
peer's SETTINGS and a GOAWAY. wait(pred) pumps until pred() is true (bounded).

Received data is acknowledged (WINDOW_UPDATE) only when the test takes it with read(): a stream
the test does not read is a slow reader, whose window the proxy sees exhausted.

Two departures from h2 4.1's defaults, both for what the tests must be able to send or see:
outbound header validation is off (h2 4.1 insists on :scheme and :path even for CONNECT, and
tests send deliberately odd requests), and a received GOAWAY does not close h2's state machine
(h2 4.1 does; RFC 9113 section 6.8 lets streams up to the GOAWAY's last stream id go on).
Loopback only; every wait is bounded."""

import collections
import select
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

FEED_LIMIT = 1 << 20  # stop framing queued data while this much waits for the socket


class _Connection(h2.connection.H2Connection):
    """h2's connection with the two changes described above."""

    ignore_stream_limit = False

    def _receive_goaway_frame(self, frame):
        ev = h2.events.ConnectionTerminated()
        ev.error_code = h2.errors._error_code_from_int(frame.error_code)
        ev.last_stream_id = frame.last_stream_id
        ev.additional_data = frame.additional_data or None
        return [], [ev]

    @property
    def open_outbound_streams(self):
        # send_headers refuses to exceed the peer's SETTINGS_MAX_CONCURRENT_STREAMS; a test
        # that checks the proxy's own enforcement sets ignore_stream_limit.
        if self.ignore_stream_limit:
            return 0
        return super().open_outbound_streams


class Stream:
    def __init__(self, sid):
        self.id = sid
        self.headers = None  # [(name, value)] of the response (str), None until it arrives
        self.status = None  # int
        self.end_on_headers = False  # END_STREAM was set on the response HEADERS
        self.data = bytearray()  # received, not yet read()
        self.unacked = 0  # flow-controlled bytes received and not yet acknowledged
        self.received = 0  # total data bytes received
        self.data_frames = 0  # DATA frames received (empty ones included)
        self.ended = False  # the peer's END_STREAM
        self.reset = None  # error code (int) of an RST_STREAM from the peer
        self.outq = collections.deque()  # memoryviews queued by send()
        self.end_queued = False  # end() after the queued data
        self.end_sent = False
        self.reset_sent = None

    def header(self, name):
        """The value of response header name (lower case), None when absent."""
        vals = [v for k, v in (self.headers or []) if k == name]
        assert len(vals) <= 1, f"stream {self.id}: header {name} repeated: {vals}"
        return vals[0] if vals else None

    @property
    def closed(self):
        return self.reset is not None or self.reset_sent is not None or (
            self.ended and self.end_sent)

    def __repr__(self):
        return (f"<stream {self.id} status={self.status} received={self.received} "
                f"buffered={len(self.data)} ended={self.ended} reset={self.reset} "
                f"end_sent={self.end_sent} queued={sum(len(m) for m in self.outq)}>")


class H2Client:
    def __init__(self, port, ca, host="127.0.0.1", timeout=10.0, server_hostname="localhost",
                 stream_window=1 << 20, connection_window=64 << 20, alpn=("h2",)):
        """TLS to host:port, verified against ca; asserts that ALPN chose h2; sends the
        preface with SETTINGS_INITIAL_WINDOW_SIZE = stream_window and opens the connection
        window to connection_window. Waits (bounded) for the peer's SETTINGS."""
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(list(alpn))
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        self.alpn = self.sock.selected_alpn_protocol()
        self.tls_version = self.sock.version()
        self.local_addr = self.sock.getsockname()
        if self.alpn != "h2":
            self.sock.close()
            raise AssertionError(f"ALPN chose {self.alpn!r}, not h2")
        self.sock.setblocking(False)
        self.timeout = timeout
        self.streams = {}
        self.remote_settings = {}  # setting code (int) -> value, as the peer sent them
        self.settings_frames = 0
        self.goaways = []  # (error code, last stream id, debug data) of each GOAWAY, in order
        self.eof = False  # the TCP/TLS connection ended
        self.events = []  # every h2 event, in order (for diagnostics)
        self._out = bytearray()
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        self.conn = _Connection(cfg)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
                h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        if connection_window > 65535:
            self.conn.increment_flow_control_window(connection_window - 65535)
        self.wait(lambda: self.settings_frames > 0, timeout, "the proxy's SETTINGS")

    # ---- opening streams ------------------------------------------------------------------

    def request(self, headers, end=False, ignore_limit=False):
        """Open a stream with this header list ([(name, value)], sent as given); returns its
        id. ignore_limit: send it even beyond the peer's SETTINGS_MAX_CONCURRENT_STREAMS."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = Stream(sid)
        self.conn.ignore_stream_limit = ignore_limit
        try:
            self.conn.send_headers(sid, headers, end_stream=end)
        finally:
            self.conn.ignore_stream_limit = False
        self.streams[sid].end_sent = end
        self._flush()
        return sid

    def connect(self, authority, headers=(), ignore_limit=False):
        """A CONNECT stream to authority ("host:port"): :method and :authority, then headers."""
        return self.request([(":method", "CONNECT"), (":authority", authority)] + list(headers),
                            ignore_limit=ignore_limit)

    def tunnel(self, authority, headers=(), timeout=None):
        """connect() and wait for its 200; returns the stream id."""
        sid = self.connect(authority, headers)
        st = self.wait_response(sid, timeout)
        assert st.status == 200 and not st.end_on_headers, (
            f"CONNECT {authority}: {st!r} headers {st.headers}")
        return sid

    # ---- sending ----------------------------------------------------------------------------

    def send(self, sid, data, end=False):
        """Queue data (and END_STREAM after it when end) on stream sid; sent as flow control
        allows, during pump()."""
        st = self.streams[sid]
        if data:
            st.outq.append(memoryview(data))
        if end:
            st.end_queued = True
        self._feed()
        self._flush()

    def end(self, sid):
        self.send(sid, b"", end=True)

    def reset(self, sid, code=ErrorCodes.CANCEL):
        st = self.streams[sid]
        st.outq.clear()
        st.end_queued = False
        self.conn.reset_stream(sid, code)
        st.reset_sent = int(code)
        self._flush()

    def queued(self, sid):
        st = self.streams[sid]
        return sum(len(m) for m in st.outq) + (st.end_queued and not st.end_sent)

    def _feed(self):
        """Frame queued data, round-robin over the streams, as far as the flow-control windows
        and FEED_LIMIT allow."""
        progress = True
        while progress and len(self._out) < FEED_LIMIT:
            progress = False
            for st in self.streams.values():
                if st.reset is not None or st.reset_sent is not None or st.end_sent:
                    st.outq.clear()
                    continue
                if st.outq:
                    try:
                        win = self.conn.local_flow_control_window(st.id)
                    except h2.exceptions.StreamClosedError:
                        st.outq.clear()
                        continue
                    n = min(win, self.conn.max_outbound_frame_size, len(st.outq[0]))
                    if n > 0:
                        chunk = st.outq[0][:n]
                        st.outq[0] = st.outq[0][n:]
                        if not len(st.outq[0]):
                            st.outq.popleft()
                        self.conn.send_data(st.id, chunk.tobytes())
                        progress = True
                if not st.outq and st.end_queued and not st.end_sent:
                    self.conn.end_stream(st.id)
                    st.end_sent = True
                    progress = True
            self._out += self.conn.data_to_send()

    def _flush(self):
        self._out += self.conn.data_to_send()

    # ---- receiving --------------------------------------------------------------------------

    def read(self, sid, n=None):
        """Take (up to n of) the bytes received on sid, acknowledging them to the peer."""
        st = self.streams[sid]
        n = len(st.data) if n is None else min(n, len(st.data))
        out = bytes(st.data[:n])
        del st.data[:n]
        ack = st.unacked if not st.data else min(n, st.unacked)
        if ack:
            st.unacked -= ack
            self.conn.acknowledge_received_data(ack, sid)
            self._flush()
        return out

    def _handle(self, ev):
        self.events.append(ev)
        st = self.streams.get(getattr(ev, "stream_id", None) or -1)
        if isinstance(ev, h2.events.ResponseReceived) and st is not None:
            st.headers = list(ev.headers)
            st.status = int(dict(st.headers).get(":status", "0"))
            st.end_on_headers = ev.stream_ended is not None
        elif isinstance(ev, h2.events.DataReceived) and st is not None:
            st.data += ev.data
            st.received += len(ev.data)
            st.unacked += ev.flow_controlled_length
            st.data_frames += 1
        elif isinstance(ev, h2.events.StreamEnded) and st is not None:
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset) and st is not None:
            if ev.remote_reset:
                st.reset = int(ev.error_code)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_frames += 1
            for code, ch in ev.changed_settings.items():
                self.remote_settings[int(code)] = ch.new_value
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaways.append((int(ev.error_code), ev.last_stream_id, ev.additional_data))

    def pump(self, timeout=0.05):
        """One round of I/O: frame queued data, write what the socket takes, read and handle
        what arrived (waiting up to timeout for something to happen)."""
        self._feed()
        if self.eof:
            time.sleep(timeout)
            return
        want_write = bool(self._out)
        if self.sock.pending():
            r = [self.sock]
        else:
            r, _, _ = select.select([self.sock], [self.sock] if want_write else [], [], timeout)
        if self._out:
            try:
                n = self.sock.send(self._out[:262144])
                del self._out[:n]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
            except (BrokenPipeError, ConnectionResetError):
                self.eof = True
                return
        if not r:
            return
        for _ in range(64):  # a bounded batch, then write again
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            except (ssl.SSLError, ConnectionResetError, OSError):
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            for ev in self.conn.receive_data(data):
                self._handle(ev)
        self._flush()

    def wait(self, pred, timeout=None, what="condition"):
        """pump() until pred() is true; AssertionError after timeout (default: the client's)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"h2: no {what} within {timeout}s; {self.describe()}")
            if self.eof and not self._out:
                if pred():
                    break
                raise AssertionError(f"h2: connection closed before {what}; {self.describe()}")
            self.pump()
        return True

    def drain(self, timeout=None):
        """pump() until everything queued (data, END_STREAM, RST_STREAM, WINDOW_UPDATE) has
        been written to the socket: before a test waits on something other than this client."""
        self.wait(lambda: not self._out and not any(
            s.outq or (s.end_queued and not s.end_sent) for s in self.streams.values()
            if s.reset is None and s.reset_sent is None), timeout, "queued frames sent")

    def wait_response(self, sid, timeout=None):
        st = self.streams[sid]
        self.wait(lambda: st.headers is not None or st.reset is not None, timeout,
                  f"response on stream {sid}")
        return st

    def read_exact(self, sid, n, timeout=None):
        st = self.streams[sid]
        self.wait(lambda: len(st.data) >= n or st.ended or st.reset is not None, timeout,
                  f"{n} bytes on stream {sid}")
        assert len(st.data) >= n, f"wanted {n} bytes on stream {sid}: {st!r}"
        return self.read(sid, n)

    def read_to_end(self, sid, timeout=None):
        """Everything up to the peer's END_STREAM (AssertionError on RST_STREAM / timeout)."""
        st = self.streams[sid]
        out = bytearray()

        def done():
            out.extend(self.read(sid))
            return st.ended or st.reset is not None

        self.wait(done, timeout, f"END_STREAM on stream {sid}")
        out.extend(self.read(sid))
        assert st.reset is None, f"stream {sid} reset ({st.reset}) after {len(out)} bytes"
        return bytes(out)

    def describe(self):
        live = [s for s in self.streams.values() if not s.closed]
        return (f"eof={self.eof} goaways={self.goaways} streams={len(self.streams)} "
                f"open={len(live)} first open: {live[:3]} last events: {self.events[-5:]}")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
