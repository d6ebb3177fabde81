"""Hostile HTTP/3 and QUIC clients (aioquic, raw UDP) for tests/tests/quic_hostile.rs.

Usage: quic_hostile.py MODE --host H --port P [--ca CA.pem] [options]

Modes (each prints one JSON line):
  reserved   a reserved frame (type 0x21, declared length 2^30) on a request
             stream (--on request) or on the control stream (--on control),
             then --bytes of payload, paced by flow control. Reports how it
             ended: {"outcome", "error_code", "sent", "secs"}.
  headers    --streams request streams, each a HEADERS frame declaring
             --header-len bytes of static QPACK references, streamed.
             Reports {"streams": [{"status", "stop_sending", "reset", "sent"}],
             "terminated", "secs"}.
  flood      --count raw QUIC v1 Initials (each from a fresh aioquic client,
             so each has its own DCID), none ever completed, from --sources
             loopback addresses. Reports response packet counts by type and
             bytes sent/received: {"sent", "responses": {"initial", "handshake",
             "retry", "other"}, "bytes_in", "bytes_out"}.
  hold       --count connections from --local (an address), held until stdin
             closes. Reports {"connected", "refused", "other"} once all settled.
"""

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

CHUNK = 64 * 1024
IN_FLIGHT = 1024 * 1024


def config(args):
    c = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    if args.ca:
        c.load_verify_locations(args.ca)
    else:
        c.verify_mode = ssl.CERT_NONE
    c.max_data = 1 << 30
    c.max_stream_data = 1 << 30
    return c


class Client(QuicConnectionProtocol):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.h3 = None
        self.events = []
        self.terminated = None
        self.connected = asyncio.get_running_loop().create_future()
        self.changed = asyncio.Event()

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted) and not self.connected.done():
            self.connected.set_result(True)
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            if not self.connected.done():
                self.connected.set_result(False)
        self.events.append(event)
        if self.h3 is not None and isinstance(event, (StreamDataReceived, StreamReset)):
            try:
                for e in self.h3.handle_event(event):
                    self.events.append(e)
            except Exception:  # a stream we wrote raw bytes on may confuse it
                pass
        self.changed.set()

    def pending(self, sid):
        stream = self._quic._streams.get(sid)
        return 0 if stream is None else len(stream.sender._buffer)


async def open_client(args, local=("0.0.0.0", 0)):
    loop = asyncio.get_running_loop()
    quic = QuicConnection(configuration=config(args))
    _, proto = await loop.create_datagram_endpoint(
        lambda: Client(quic), local_addr=local
    )
    proto.connect((args.host, args.port))
    ok = await asyncio.wait_for(proto.connected, 10)
    return proto, ok


def stream_ended(proto, sid):
    """How the server ended our stream or connection, if it did."""
    if proto.terminated is not None:
        return "connection_closed", proto.terminated.error_code
    for e in proto.events:
        if isinstance(e, StopSendingReceived) and e.stream_id == sid:
            return "stop_sending", e.error_code
        if isinstance(e, StreamReset) and e.stream_id == sid:
            return "reset", e.error_code
    return None


async def settled(proto, sid, ended):
    """A stream stop may be the first sign of a connection close: wait for it briefly."""
    end = time.monotonic() + 2.0
    while proto.terminated is None and ended[0] != "connection_closed" and time.monotonic() < end:
        proto.changed.clear()
        try:
            await asyncio.wait_for(proto.changed.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    return stream_ended(proto, sid)


async def stream_until_stopped(proto, sid, head, total, deadline):
    """Writes `head` then `total` bytes on `sid`, paced by what the server acks."""
    quic = proto._quic
    quic.send_stream_data(sid, head)
    sent, chunk = 0, b"\x00" * CHUNK
    while sent < total and time.monotonic() < deadline:
        ended = stream_ended(proto, sid)
        if ended:
            return await settled(proto, sid, ended), sent
        if proto.pending(sid) > IN_FLIGHT:
            proto.changed.clear()
            proto.transmit()
            try:
                await asyncio.wait_for(proto.changed.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
            continue
        quic.send_stream_data(sid, chunk)
        sent += CHUNK
        proto.transmit()
        await asyncio.sleep(0)
    return stream_ended(proto, sid) or ("not_stopped", None), sent


async def reserved(args):
    proto, _ = await open_client(args)
    proto.h3 = H3Connection(proto._quic)
    proto.transmit()
    head = encode_uint_var(0x21) + encode_uint_var(1 << 30)
    if args.on == "control":
        sid = proto.h3._local_control_stream_id
    else:
        sid = proto._quic.get_next_available_stream_id()
    start = time.monotonic()
    (outcome, code), sent = await stream_until_stopped(
        proto, sid, head, args.bytes, start + args.deadline
    )
    print(json.dumps({"outcome": outcome, "error_code": code, "sent": sent,
                      "secs": round(time.monotonic() - start, 3)}))


async def headers(args):
    proto, _ = await open_client(args)
    proto.h3 = H3Connection(proto._quic)
    proto.transmit()
    # QPACK prefix (no dynamic table) then indexed static field ":method: GET".
    head = encode_uint_var(0x01) + encode_uint_var(args.header_len) + b"\x00\x00"
    start = time.monotonic()
    sids = [proto._quic.get_next_available_stream_id() for _ in range(args.streams)]
    for sid in sids:
        proto._quic.send_stream_data(sid, b"")  # opens it, so the next id differs
    jobs = [stream_until_stopped(proto, sid, head, args.header_len, start + args.deadline)
            for sid in sids]
    results = await asyncio.gather(*jobs)

    def status_of(sid):
        for e in proto.events:
            if getattr(e, "stream_id", None) == sid and hasattr(e, "headers"):
                return dict(e.headers).get(b":status", b"").decode() or None
        return None

    # The 431 may arrive just after the stop: wait for every stream's status, or
    # for the connection to end, within a deadline.
    end = time.monotonic() + 5.0
    while (proto.terminated is None and time.monotonic() < end
           and any(status_of(sid) is None for sid in sids)):
        proto.changed.clear()
        try:
            await asyncio.wait_for(proto.changed.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    out = []
    for sid, ((outcome, code), sent) in zip(sids, results):
        out.append({"outcome": outcome, "error_code": code, "sent": sent,
                    "status": status_of(sid)})
    print(json.dumps({"streams": out, "secs": round(time.monotonic() - start, 3),
                      "terminated": None if proto.terminated is None
                      else proto.terminated.error_code}))


def packet_type(data):
    if not data or not data[0] & 0x80:
        return "other"
    return {0: "initial", 1: "other", 2: "handshake", 3: "retry"}[(data[0] & 0x30) >> 4]


def flood(args):
    socks = []
    for i in range(args.sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
        s.setblocking(False)
        socks.append(s)
    counts = {"initial": 0, "handshake": 0, "retry": 0, "other": 0}
    bytes_in = bytes_out = 0

    def drain():
        nonlocal bytes_in
        for s in socks:
            while True:
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    break
                bytes_in += len(data)
                counts[packet_type(data)] += 1

    c = config(args)
    for i in range(args.count):
        quic = QuicConnection(configuration=c)
        quic.connect((args.host, args.port), now=time.monotonic())
        datagram = quic.datagrams_to_send(now=time.monotonic())[0][0]
        socks[i % len(socks)].sendto(datagram, (args.host, args.port))
        bytes_out += len(datagram)
        if i % 50 == 0:
            drain()
    end = time.monotonic() + args.settle
    while time.monotonic() < end:
        drain()
        time.sleep(0.02)
    print(json.dumps({"sent": args.count, "responses": counts,
                      "bytes_in": bytes_in, "bytes_out": bytes_out}))


async def hold(args):
    clients = []
    for _ in range(args.count):
        try:
            clients.append(await open_client(args, (args.local, 0)))
        except asyncio.TimeoutError:
            clients.append((None, False))
    out = {"connected": 0, "refused": 0, "other": 0}
    for proto, ok in clients:
        if ok:
            out["connected"] += 1
        elif proto is not None and proto.terminated is not None \
                and proto.terminated.error_code == 0x2:
            out["refused"] += 1
        else:
            out["other"] += 1
    print(json.dumps(out), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def zerowindow(args):
    """Opens `streams` GETs of `path` on a connection that grants the server no
    stream credit at all (initial window 0, never raised), then waits until the
    server resets every stream or the deadline passes."""
    loop = asyncio.get_running_loop()
    quic = QuicConnection(configuration=config(args))
    # Request streams (client-initiated bidi) get no window, and no
    # MAX_STREAM_DATA is ever sent; the server's control and QPACK streams
    # (unidirectional) keep theirs, so the connection itself works.
    quic._local_max_stream_data_bidi_local = 0
    quic._write_stream_limits = lambda *a, **k: None
    _, proto = await loop.create_datagram_endpoint(lambda: Client(quic), local_addr=("0.0.0.0", 0))
    proto.connect((args.host, args.port))
    if not await asyncio.wait_for(proto.connected, 10):
        print(json.dumps({"error": "handshake failed"}))
        return
    proto.h3 = H3Connection(proto._quic)
    sids = []
    for _ in range(args.streams):
        sid = proto._quic.get_next_available_stream_id()
        proto.h3.send_headers(sid, [
            (b":method", b"GET"), (b":scheme", b"https"),
            (b":authority", b"localhost"), (b":path", args.path.encode()),
        ], end_stream=True)
        sids.append(sid)
    proto.transmit()
    start = time.monotonic()
    print(json.dumps({"opened": len(sids)}), flush=True)

    def resets():
        return {e.stream_id: e.error_code for e in proto.events
                if isinstance(e, StreamReset) and e.stream_id in sids}

    end = start + args.deadline
    while len(resets()) < len(sids) and proto.terminated is None and time.monotonic() < end:
        proto.changed.clear()
        try:
            await asyncio.wait_for(proto.changed.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    r = resets()
    print(json.dumps({"reset": len(r), "codes": sorted(set(r.values())),
                      "secs": round(time.monotonic() - start, 3),
                      "terminated": None if proto.terminated is None
                      else proto.terminated.error_code}), flush=True)
    # Hold the connection open until told to go (stdin closes).
    await loop.run_in_executor(None, sys.stdin.read)


async def idle(args):
    """Opens `count` connections (handshake only, no request), reports how many
    connected, then waits until the server has closed them all (or the
    deadline) and reports how they ended."""
    clients = [await open_client(args, (args.local, 0)) for _ in range(args.count)]
    live = [p for p, ok in clients if ok]
    print(json.dumps({"connected": len(live)}), flush=True)
    end = time.monotonic() + args.deadline
    next_ping, uid = 0.0, 0
    while time.monotonic() < end and any(p.terminated is None for p in live):
        # PINGs keep the connections from idling out on either side: only the
        # server's overload guard may end them.
        if time.monotonic() >= next_ping:
            for p in live:
                if p.terminated is None:
                    uid += 1
                    p._quic.send_ping(uid)
                    p.transmit()
            next_ping = time.monotonic() + 2.0
        await asyncio.sleep(0.05)
    codes = sorted({p.terminated.error_code for p in live if p.terminated is not None})
    print(json.dumps({"terminated": sum(p.terminated is not None for p in live),
                      "codes": codes}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["reserved", "headers", "flood", "hold", "zerowindow", "idle"])
    p.add_argument("--path", default="/")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca")
    p.add_argument("--on", choices=["request", "control"], default="request")
    p.add_argument("--bytes", type=int, default=100 * 1024 * 1024)
    p.add_argument("--deadline", type=float, default=60.0)
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--header-len", type=int, default=16 * 1024 * 1024)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--sources", type=int, default=1)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--local", default="127.0.0.1")
    args = p.parse_args()
    if args.mode == "flood":
        return flood(args)
    asyncio.run({"reserved": reserved, "headers": headers, "hold": hold,
                 "zerowindow": zerowindow, "idle": idle}[args.mode](args))


if __name__ == "__main__":
    main()
