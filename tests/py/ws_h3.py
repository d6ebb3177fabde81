"""A WebSocket over HTTP/3 (RFC 9220 extended CONNECT) with aioquic.

  ws_h3.py HOST PORT CA PATH

Connects over QUIC (ALPN h3), waits for the server's SETTINGS and reports its
SETTINGS_ENABLE_CONNECT_PROTOCOL, opens `CONNECT :protocol websocket`, sends a
text message in a (masked) WebSocket frame and reads the echo, sends 1 MiB of
binary and reads it back, then asks the echo server (tests/py/ws_echo.py) to
close with 4001 "bye" and reads the close frame. Prints one JSON line with what
it saw. The frames are ws_h2.py's.
"""

import asyncio
import json
import os
import struct
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection, Setting
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset

from ws_h2 import frame, parse

TIMEOUT = 10.0


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.stream = None
        self.status = None
        self.headers = {}
        self.data = b""
        self.ended = None
        self.changed = asyncio.Event()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.ended = f"connection closed: {event.error_code} {event.reason_phrase}"
        elif isinstance(event, StreamReset) and event.stream_id == self.stream:
            self.ended = f"stream reset: {event.error_code}"
        for ev in self.h3.handle_event(event):
            if getattr(ev, "stream_id", None) != self.stream:
                continue
            if isinstance(ev, HeadersReceived):
                self.headers = {k.decode(): v.decode() for k, v in ev.headers}
                self.status = int(self.headers[":status"])
            elif isinstance(ev, DataReceived):
                self.data += ev.data
            if getattr(ev, "stream_ended", False):
                self.ended = self.ended or "stream ended"
        self.changed.set()

    async def until(self, done):
        while not done():
            if self.ended:
                raise ConnectionError(self.ended)
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), TIMEOUT)

    def send(self, payload, end_stream=False):
        self.h3.send_data(self.stream, payload, end_stream=end_stream)
        self.transmit()

    async def next_frame(self):
        got = None

        def parsed():
            nonlocal got
            got = parse(self.data)
            return got is not None

        await self.until(parsed)
        opcode, payload, self.data = got
        return opcode, payload


async def main():
    host, port, ca, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.load_verify_locations(ca)
    config.server_name = "localhost"
    async with connect(host, port, configuration=config, create_protocol=Client) as c:
        await c.until(lambda: c.h3.received_settings is not None)
        out = {"enable_connect_protocol": c.h3.received_settings.get(Setting.ENABLE_CONNECT_PROTOCOL, 0)}
        c.stream = c._quic.get_next_available_stream_id()
        c.h3.send_headers(c.stream, [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":path", path.encode()),
            (b":authority", f"localhost:{port}".encode()),
            (b"sec-websocket-version", b"13"),
        ])
        c.transmit()
        try:
            await c.until(lambda: c.status is not None)
        except ConnectionError as e:
            out["error"] = str(e)
            print(json.dumps(out), flush=True)
            return 0
        out["status"] = c.status
        out["via"] = c.headers.get("via")
        if c.status != 200:
            print(json.dumps(out), flush=True)
            return 0
        c.send(frame(0x1, b"hello over h3"))
        opcode, payload = await c.next_frame()
        out["text"] = payload.decode()
        big = os.urandom(1024 * 1024)
        c.send(frame(0x2, big))
        opcode, payload = await c.next_frame()
        out["big_intact"] = opcode == 0x2 and payload == big
        c.send(frame(0x1, b"close 4001 bye"))
        opcode, payload = await c.next_frame()
        if opcode == 0x8 and len(payload) >= 2:
            out["close_code"] = struct.unpack(">H", payload[:2])[0]
            out["close_reason"] = payload[2:].decode()
            # The closing handshake's answer, and the end of our half (a TCP
            # client's FIN); then the backend closes, and the stream ends.
            c.send(frame(0x8, payload[:2]), end_stream=True)
        try:
            await c.until(lambda: False)
        except (ConnectionError, asyncio.TimeoutError) as e:
            out["ended"] = str(e) if isinstance(e, ConnectionError) else "timeout"
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(asyncio.wait_for(main(), 60)))
