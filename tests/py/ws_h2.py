"""A WebSocket over HTTP/2 (RFC 8441 extended CONNECT) with python-hyper `h2`.

  ws_h2.py HOST PORT CA PATH

Connects with TLS (ALPN h2), checks the server's SETTINGS_ENABLE_CONNECT_PROTOCOL,
opens `CONNECT :protocol websocket`, sends a text message in a (masked) WebSocket
frame and reads the echo, sends 1 MiB of binary and reads it back, then asks the
echo server to close with 4001 "bye" and reads the close frame. Prints one JSON
line with what it saw.
"""

import json
import os
import socket
import ssl
import struct
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings


def frame(opcode, payload):
    """A masked client frame, FIN set."""
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def parse(buf):
    """One unmasked server frame from the front of buf: (opcode, payload, rest) or None."""
    if len(buf) < 2:
        return None
    opcode = buf[0] & 0x0F
    n = buf[1] & 0x7F
    at = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack(">H", buf[2:4])[0]
        at = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack(">Q", buf[2:10])[0]
        at = 10
    if len(buf) < at + n:
        return None
    return opcode, buf[at:at + n], buf[at + n:]


class Client:
    def __init__(self, host, port, ca):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((host, port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()
        self.settings = {}
        self.status = None
        self.headers = {}
        self.data = b""
        self.ended = False

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("edge closed the connection")
        for ev in self.conn.receive_data(chunk):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                for code, s in ev.changed_settings.items():
                    self.settings[int(code)] = s.new_value
            elif isinstance(ev, h2.events.ResponseReceived):
                self.headers = {k.decode(): v.decode() for k, v in ev.headers}
                self.status = int(self.headers[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.data += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                self.ended = True
        self.flush()

    def send(self, stream, payload):
        while payload:
            window = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size)
            if window == 0:
                self.pump()
                continue
            self.conn.send_data(stream, payload[:window])
            payload = payload[window:]
            self.flush()

    def next_frame(self):
        while True:
            got = parse(self.data)
            if got:
                opcode, payload, self.data = got
                return opcode, payload
            if self.ended:
                raise ConnectionError("stream ended")
            self.pump()


def main():
    host, port, ca, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = Client(host, port, ca)
    while h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL not in c.settings:
        c.pump()
    out = {"enable_connect_protocol": c.settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL]}
    stream = c.conn.get_next_available_stream_id()
    c.conn.send_headers(stream, [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "https"),
        (":path", path),
        (":authority", f"localhost:{port}"),
        ("sec-websocket-version", "13"),
    ])
    c.flush()
    while c.status is None:
        c.pump()
    out["status"] = c.status
    out["via"] = c.headers.get("via")
    if c.status != 200:
        print(json.dumps(out), flush=True)
        return 0
    c.send(stream, frame(0x1, b"hello over h2"))
    opcode, payload = c.next_frame()
    out["text"] = payload.decode()
    big = os.urandom(1024 * 1024)
    c.send(stream, frame(0x2, big))
    opcode, payload = c.next_frame()
    out["big_intact"] = opcode == 0x2 and payload == big
    c.send(stream, frame(0x1, b"close 4001 bye"))
    opcode, payload = c.next_frame()
    if opcode == 0x8 and len(payload) >= 2:
        out["close_code"] = struct.unpack(">H", payload[:2])[0]
        out["close_reason"] = payload[2:].decode()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
