"""Hostile HTTP/2 clients against edge (python-hyper `h2` plus raw sockets).

Each mode attacks one connection and prints one JSON line saying how the
connection ended and when:

  nopreface  connect (TLS with ALPN h2, or h2c after the 24-byte preface) and
             never send the first SETTINGS frame
  noping     a normal h2c connection that never answers the shutdown PING
  flood      PING and SETTINGS frames sent without ever reading the replies
  resets     HEADERS then RST_STREAM after a short pause, for many streams
  zerowindow initial window 0, many streams of large responses, never a
             WINDOW_UPDATE
  lateframes the stream rules after an early answer (h2spec 8.1, 8.1.2.6)
  closedstreams DATA on reset and closed streams, pseudo-headers in trailers
             (h2spec 5.1/8, 5.1/11, 8.1.2.1/3)
"""

import argparse
import json
import select
import socket
import ssl
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class Frames:
    """Splits the server's byte stream into frames on its own, so GOAWAY and PING
    are seen even where python h2 refuses a frame (for a stream it reset)."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        out = []
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                break
            out.append((self.buf[3], self.buf[4], self.buf[9:9 + n]))
            self.buf = self.buf[9 + n:]
        return out


def goaway_code(payload):
    return int.from_bytes(payload[4:8], "big")


def wait_closed(sock, deadline):
    """Reads (and discards) until the peer closes; seconds waited, or None."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError, OSError):
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
    return None


def connect(args, alpn_h2=True):
    sock = socket.create_connection((args.host, args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if args.tls:
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.set_alpn_protocols(["h2"] if alpn_h2 else ["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    return sock


def h2_conn(settings=None):
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    if settings:
        conn.update_settings(settings)
    return conn


SCHEME = "http"


def headers(path, authority="localhost"):
    return [(":method", "GET"), (":scheme", SCHEME), (":authority", authority), (":path", path)]


def nopreface(args):
    sock = connect(args)
    if not args.tls:
        sock.sendall(PREFACE)
    waited = wait_closed(sock, time.monotonic() + args.wait)
    return {"closed": waited is not None, "after": waited}


def badpreface(args):
    sock = connect(args)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    sock.settimeout(5)
    data = b""
    try:
        while True:
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except OSError:
        pass
    frames = Frames().feed(data)
    goaway = [goaway_code(p) for kind, _, p in frames if kind == 0x7]
    return {"http1": data.startswith(b"HTTP/1."), "goaway": goaway[0] if goaway else None,
            "bytes": len(data)}


def noping(args):
    sock = connect(args)
    conn = h2_conn()
    conn.send_headers(conn.get_next_available_stream_id(), headers("/"), end_stream=True)
    # A response still in flight when the shutdown starts keeps h2 waiting for
    # the PING ACK (with no stream open it closes at once).
    conn.send_headers(conn.get_next_available_stream_id(), headers(args.path), end_stream=True)
    sock.sendall(conn.data_to_send())
    frames = Frames()
    status, goaway_at, pings, start = None, None, 0, time.monotonic()
    deadline = start + args.wait
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            data = b""
        if not data:
            closed_at = time.monotonic()
            return {"status": status, "closed": True, "pings": pings,
                    "goaway": goaway_at is not None,
                    "after_goaway": None if goaway_at is None else closed_at - goaway_at}
        for kind, flags, _ in frames.feed(data):
            if kind == 0x7 and goaway_at is None:
                goaway_at = time.monotonic()
            elif kind == 0x6 and not flags & 0x1:
                pings += 1
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            events = []
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 1:
                status = dict(ev.headers).get(":status")
        out = conn.data_to_send()
        if status is None or goaway_at is None and pings == 0:
            # Until the shutdown starts, behave; from then on never ACK anything.
            sock.sendall(out)
    return {"status": status, "closed": False, "pings": pings, "goaway": goaway_at is not None}


def flood(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((args.host, args.port))
    sock.sendall(PREFACE + frame(0x4, 0, 0, b""))
    sock.setblocking(False)
    ping = frame(0x6, 0, 0, b"\0" * 8)
    settings = frame(0x4, 0, 0, struct.pack(">HI", 0x3, 100))
    chunk = (ping + settings) * 256
    start, sent, pending = time.monotonic(), 0, b""
    deadline = start + args.wait
    while time.monotonic() < deadline:
        if not pending:
            pending = chunk
        try:
            n = sock.send(pending)
            sent += n
            pending = pending[n:]
        except BlockingIOError:
            select.select([], [sock], [sock], 0.1)
        except OSError:
            return {"closed": True, "after": time.monotonic() - start, "sent": sent}
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return {"closed": True, "after": time.monotonic() - start, "sent": sent}
    return {"closed": False, "sent": sent}


def drain_events(sock, conn, frames, report):
    """Reads what is there without blocking; False once the connection ended."""
    while True:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return True
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            report["closed"] = True
            return False
        for kind, _, payload in frames.feed(data):
            if kind == 0x7:
                report["goaway"] = goaway_code(payload)
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return True
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                report["responses"] += 1
        try:
            sock.sendall(conn.data_to_send())
        except OSError:
            report["closed"] = True
            return False


def resets(args):
    sock = connect(args)
    conn = h2_conn()
    sock.sendall(conn.data_to_send())
    report = {"sent": 0, "responses": 0, "goaway": None, "closed": False}
    frames = Frames()
    start = time.monotonic()
    while report["sent"] < args.streams and not report["closed"]:
        ids = []
        try:
            for _ in range(min(args.batch, args.streams - report["sent"])):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers(args.path), end_stream=True)
                ids.append(sid)
            sock.sendall(conn.data_to_send())
            time.sleep(args.pause)
            for sid in ids:
                conn.reset_stream(sid, error_code=8)
            sock.sendall(conn.data_to_send())
        except (h2.exceptions.ProtocolError, OSError):
            break
        report["sent"] += len(ids)
        if not drain_events(sock, conn, frames, report):
            break
    # After the last batch: how does the connection end?
    deadline = time.monotonic() + args.wait
    while not report["closed"] and time.monotonic() < deadline:
        select.select([sock], [], [], 0.2)
        drain_events(sock, conn, frames, report)
    report["elapsed"] = time.monotonic() - start
    return report


def zerowindow(args):
    sock = connect(args)
    conn = h2_conn({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    for _ in range(args.streams):
        conn.send_headers(conn.get_next_available_stream_id(), headers(args.path), end_stream=True)
    sock.sendall(conn.data_to_send())
    report = {"responses": 0, "resets": 0, "reset_codes": [], "goaway": None, "closed": False}
    start = time.monotonic()
    deadline = start + args.wait
    sock.settimeout(0.2)
    while time.monotonic() < deadline and report["resets"] < args.streams:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            data = b""
        if not data:
            report["closed"] = True
            break
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            events = []
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                report["responses"] += 1
            elif isinstance(ev, h2.events.StreamReset):
                report["resets"] += 1
                report["reset_codes"].append(ev.error_code)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                report["goaway"] = ev.error_code
        out = conn.data_to_send()
        # Acknowledge SETTINGS and PINGs, never any WINDOW_UPDATE of our own
        # (python h2 sends none unless told to).
        sock.sendall(out)
    report["elapsed"] = time.monotonic() - start
    if args.hold:
        # Keep the connection open, so only edge's own timer can free the upstreams.
        time.sleep(args.hold)
    return report


LATE_CASES = ["long", "short", "split", "trailers_no_es"]


def lateframes(args):
    """h2spec's stream rules when the answer comes before the request body is
    complete: a POST declaring content-length 4, the response read to its end,
    then the rest of the request broken one way per case. Each case on a new
    connection, `runs` times; reports the error code the server answered with
    (RST_STREAM on the stream, or GOAWAY), None when it answered none."""
    out = {}
    for case in LATE_CASES:
        codes = []
        for _ in range(args.runs):
            sock = connect(args)
            conn = h2_conn()
            post = [(":method", "POST"), (":scheme", SCHEME), (":authority", "localhost"),
                    (":path", args.path), ("content-length", "4")]
            conn.send_headers(1, post)
            sock.sendall(conn.data_to_send())
            frames, ended, code = Frames(), False, None
            sock.settimeout(0.2)
            end = time.monotonic() + 5
            sent = False
            while time.monotonic() < end and code is None:
                if ended and not sent:
                    if case == "long":
                        late = frame(0x0, 0x1, 1, b"12345")
                    elif case == "short":
                        late = frame(0x0, 0x1, 1, b"12")
                    elif case == "split":
                        late = frame(0x0, 0x0, 1, b"123") + frame(0x0, 0x1, 1, b"456")
                    else:  # trailers_no_es
                        late = frame(0x1, 0x4, 1, conn.encoder.encode([("x-trailer", "1")]))
                    sock.sendall(late)
                    sent = True
                    end = time.monotonic() + 2
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                for kind, flags, payload in frames.feed(data):
                    if kind in (0x0, 0x1) and flags & 0x1:
                        ended = True
                    elif kind == 0x3 and sent:
                        rst = int.from_bytes(payload[:4], "big")
                        code = rst if rst != 0 else code
                    elif kind == 0x7:
                        code = goaway_code(payload)
            codes.append(code)
            sock.close()
        out[case] = codes
    return out


CLOSED_CASES = ["data_after_rst", "data_after_close", "trailer_pseudo"]


def closedstreams(args):
    """h2spec 5.1/8, 5.1/11 and 8.1.2.1/3: DATA on a stream the client reset,
    DATA on a stream whose exchange ended both ways, and trailers carrying a
    pseudo-header. Each case on a new connection, `runs` times; reports the
    error code of the server's RST_STREAM on stream 1 or GOAWAY, None when it
    answered neither (a response alone is no answer)."""
    out = {}
    for case in CLOSED_CASES:
        codes = []
        for _ in range(args.runs):
            sock = connect(args)
            conn = h2_conn()
            if case == "data_after_close":
                conn.send_headers(1, headers(args.path), end_stream=True)
            else:
                post = [(":method", "POST"), (":scheme", SCHEME), (":authority", "localhost"),
                        (":path", args.path)]
                conn.send_headers(1, post)
            sock.sendall(conn.data_to_send())
            if case == "data_after_rst":
                sock.sendall(frame(0x3, 0x0, 1, struct.pack(">I", 0x8))
                             + frame(0x0, 0x1, 1, b"test"))
            elif case == "trailer_pseudo":
                block = conn.encoder.encode([(":method", "POST"), ("x-trailer", "1")])
                sock.sendall(frame(0x0, 0x0, 1, b"test") + frame(0x1, 0x5, 1, block))
            frames, code, sent = Frames(), None, case != "data_after_close"
            sock.settimeout(0.2)
            end = time.monotonic() + 3
            while time.monotonic() < end and code is None:
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                for kind, flags, payload in frames.feed(data):
                    if kind in (0x0, 0x1) and flags & 0x1 and not sent:
                        # The response ended: the stream is closed both ways.
                        sock.sendall(frame(0x0, 0x1, 1, b"test"))
                        sent = True
                        end = time.monotonic() + 2
                    elif kind == 0x3 and sent:
                        code = int.from_bytes(payload[:4], "big")
                    elif kind == 0x7:
                        code = goaway_code(payload)
            codes.append(code)
            sock.close()
        out[case] = codes
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["nopreface", "badpreface", "noping", "flood", "resets", "zerowindow", "lateframes",
                                    "closedstreams"])
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--ca")
    p.add_argument("--wait", type=float, default=30.0)
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--pause", type=float, default=0.02)
    p.add_argument("--path", default="/slow/2000")
    p.add_argument("--hold", type=float, default=0.0)
    args = p.parse_args()
    global SCHEME
    SCHEME = "https" if args.tls else "http"
    out = globals()[args.mode](args)
    out["mode"] = args.mode
    print(json.dumps(out))


if __name__ == "__main__":
    main()
