"""Sends HTTP/3 requests, one after the other, on ONE QUIC connection (aioquic).

Usage: h3_requests.py --ca CA.pem --host 127.0.0.1 --port PORT --spec JSON
                      [--server-name NAME] [--insecure] [--peer-cert]
                      [--client-cert PEM --client-key PEM]
                      [--session-out FILE] [--session-in FILE]

JSON is a list of requests: {"method", "path", "headers": [[name, value]],
"big_header_bytes": N (adds an `x-big` header of N bytes), "body_bytes": N}.
Prints one JSON line: a list of results {"status", "headers", "body", "body_len",
"body_hex" (the bytes exactly), "interim", "reset", "error"}, where "reset" is the stream reset code when the server reset the
stream and "interim" lists the interim (1xx) heads before the final one, each
{"status", "headers"} ("status" and "headers" are the final head's). Exits
non-zero only if the connection itself could not be used.
--print-heads prints each response head as it arrives, one JSON line
{"head": STATUS, "headers": [...]}, before the results.

--server-name is sent as SNI and :authority (default localhost); --insecure skips
certificate verification; --peer-cert prints {"peer_certificate": {"subject",
"dns_names", "serial", "der"}, "results": [...]} instead, describing the certificate
the server sent ("serial" in lower-case hex, "der" the certificate in base64).
--client-cert/--client-key present a client certificate (mTLS).
--cipher-suites A,B offers those TLS 1.3 suites in that order (aioquic's names:
AES_128_GCM_SHA256, AES_256_GCM_SHA384, CHACHA20_POLY1305_SHA256) and prints
{"cipher_suite": NAME, "results": [...]}, the suite the server chose.
--flights SECONDS advertises 1,452-byte datagrams (so the server's path MTU
discovery runs), keeps the connection open SECONDS after the last response and
prints {"datagrams": [...], "results": [...]}: each datagram the server sent,
in order, as {"length": UDP payload bytes, "packets": [{"type", "frames":
[{"frame_type", "stream_id"?}]}]} (from aioquic's qlog).

TLS 1.3 session resumption and 0-RTT: --session-out FILE saves the session ticket
the server sends (waiting for one); --session-in FILE resumes with a saved ticket;
--early sends the requests without waiting for the handshake (in 0-RTT when the
ticket allows it); --hold-finished holds back everything the client would send
once the server has answered (its handshake Finished among it) until the first
response head arrives, so a response can only come from a server that answered
in 0.5-RTT, before the handshake completed. With any of these the output is
{"handshake": {"early_data_accepted", "session_resumed"}, "results": [...]}.
--record-first-flight FILE writes the datagrams sent before the server's first
answer (the ClientHello and any 0-RTT packets) as a JSON list of base64 strings,
for udp_replay.py to replay.
"""

import argparse
import base64
import asyncio
import json
import pickle
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamReset
from aioquic.quic.logger import QuicLogger
from aioquic.tls import CipherSuite
from cryptography import x509
from cryptography.hazmat.primitives import serialization

REQUEST_TIMEOUT = 10.0


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.streams = {}
        self.terminated = None
        self.handshake = None
        # --hold-finished: None (off), a list of held datagrams, or "released".
        self.held = None
        self.answered = False
        self.first_flight = []
        self.print_heads = False

    def datagram_received(self, data, addr):
        self.answered = True
        super().datagram_received(data, addr)

    def transmit(self):
        if isinstance(self.held, list) and self.answered:
            self._transmit_task = None
            self.held.extend(self._quic.datagrams_to_send(now=self._loop.time()))
            # Keep the timers running; what they make is held too.
            timer_at = self._quic.get_timer()
            if self._timer is not None and self._timer_at != timer_at:
                self._timer.cancel()
                self._timer = None
            if self._timer is None and timer_at is not None:
                self._timer = self._loop.call_at(timer_at, self._handle_timer)
            self._timer_at = timer_at
            return
        if not self.answered:
            # A peek: datagrams_to_send drains the queue, so send what it gives.
            self._transmit_task = None
            for data, addr in self._quic.datagrams_to_send(now=self._loop.time()):
                self.first_flight.append(data)
                self._transport.sendto(data, addr)
        super().transmit()

    def release(self):
        if isinstance(self.held, list):
            for data, addr in self.held:
                self._transport.sendto(data, addr)
            self.held = "released"
            self.transmit()

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            self.handshake = {
                "early_data_accepted": event.early_data_accepted,
                "session_resumed": event.session_resumed,
            }
        if isinstance(event, ConnectionTerminated):
            self.terminated = f"connection closed: {event.error_code} {event.reason_phrase}"
            for stream in self.streams.values():
                self._finish(stream, error=self.terminated)
            return
        if isinstance(event, StreamReset) and event.stream_id in self.streams:
            self._finish(self.streams[event.stream_id], reset=event.error_code)
        for h3_event in self.h3.handle_event(event):
            stream = self.streams.get(getattr(h3_event, "stream_id", None))
            if stream is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                self.release()
                status = None
                fields = []
                for name, value in h3_event.headers:
                    if name == b":status":
                        status = int(value)
                    else:
                        fields.append([name.decode(), value.decode("utf-8", "replace")])
                if self.print_heads:
                    print(json.dumps({"head": status, "headers": fields}), flush=True)
                if status is not None and 100 <= status < 200:
                    stream["interim"].append({"status": status, "headers": fields})
                elif stream["status"] is None:
                    stream["status"] = status
                    stream["headers"] = fields
                else:
                    # Trailers.
                    stream["headers"].extend(fields)
            elif isinstance(h3_event, DataReceived):
                stream["body"] += h3_event.data
            if getattr(h3_event, "stream_ended", False):
                self._finish(stream)

    @staticmethod
    def _finish(stream, reset=None, error=None):
        if stream["done"].done():
            return
        stream["reset"] = reset
        stream["error"] = error
        stream["done"].set_result(None)

    async def request(self, authority, spec):
        stream_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", spec.get("method", "GET").encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", spec.get("path", "/").encode()),
        ]
        for name, value in spec.get("headers", []):
            headers.append((name.encode(), value.encode()))
        if spec.get("big_header_bytes"):
            headers.append((b"x-big", b"a" * int(spec["big_header_bytes"])))
        body = b"\0" * int(spec.get("body_bytes", 0))
        stream = {
            "status": None,
            "headers": [],
            "interim": [],
            "body": b"",
            "reset": None,
            "error": None,
            "done": asyncio.get_running_loop().create_future(),
        }
        self.streams[stream_id] = stream
        self.h3.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        self.transmit()
        try:
            await asyncio.wait_for(asyncio.shield(stream["done"]), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            stream["error"] = f"no complete response within {REQUEST_TIMEOUT}s"
        return {
            "status": stream["status"],
            "headers": stream["headers"],
            "body": stream["body"].decode("utf-8", "replace"),
            "body_len": len(stream["body"]),
            "body_hex": stream["body"].hex(),
            "interim": stream["interim"],
            "reset": stream["reset"],
            "error": stream["error"],
        }


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ca", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--peer-cert", action="store_true")
    parser.add_argument("--client-cert")
    parser.add_argument("--client-key")
    parser.add_argument("--session-out")
    parser.add_argument("--session-in")
    parser.add_argument("--early", action="store_true")
    parser.add_argument("--hold-finished", action="store_true")
    parser.add_argument("--record-first-flight")
    parser.add_argument("--print-heads", action="store_true")
    parser.add_argument("--cipher-suites")
    parser.add_argument("--flights", type=float)
    args = parser.parse_args()
    report_handshake = args.session_out or args.session_in or args.early
    specs = json.loads(args.spec)

    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.load_verify_locations(args.ca)
    if args.client_cert:
        config.load_cert_chain(args.client_cert, args.client_key)
    if args.insecure:
        config.verify_mode = ssl.CERT_NONE
    config.server_name = args.server_name
    if args.cipher_suites:
        config.cipher_suites = [CipherSuite[n] for n in args.cipher_suites.split(",")]
    if args.flights is not None:
        config.max_datagram_size = 1452
        config.quic_logger = QuicLogger()
    tickets = []
    if args.session_in:
        with open(args.session_in, "rb") as f:
            config.session_ticket = pickle.load(f)
    authority = f"{args.server_name}:{args.port}"
    results = []
    async with connect(
        args.host,
        args.port,
        configuration=config,
        create_protocol=H3Client,
        wait_connected=not args.early,
        session_ticket_handler=tickets.append,
    ) as client:
        client.print_heads = args.print_heads
        if args.hold_finished:
            client.held = []
        peer = describe_certificate(client._quic.tls._peer_certificate)
        for spec in specs:
            results.append(await client.request(authority, spec))
        client.release()
        if args.flights:
            await asyncio.sleep(args.flights)
        if args.cipher_suites:
            suite = client._quic.tls.key_schedule.cipher_suite.name
        # aioquic's wait_connected only returns if it was waiting as the
        # handshake completed: wait only when it has not.
        if args.early and client.handshake is None:
            await client.wait_connected()
        if args.session_out:
            for _ in range(100):
                if tickets:
                    break
                await asyncio.sleep(0.05)
            if not tickets:
                raise RuntimeError("the server sent no session ticket")
            with open(args.session_out, "wb") as f:
                pickle.dump(tickets[-1], f)
    if args.record_first_flight:
        with open(args.record_first_flight, "w") as f:
            json.dump([base64.b64encode(d).decode() for d in client.first_flight], f)
    if args.flights is not None:
        print(json.dumps({"datagrams": datagrams(config.quic_logger), "results": results}))
    elif args.cipher_suites:
        print(json.dumps({"cipher_suite": suite, "results": results}))
    elif report_handshake:
        print(json.dumps({"handshake": client.handshake, "results": results}))
    elif args.peer_cert:
        print(json.dumps({"peer_certificate": peer, "results": results}))
    else:
        print(json.dumps(results))


def datagrams(logger):
    """The datagrams received, in order, each with the packets it carried."""
    got = []
    for event in logger.to_dict()["traces"][0]["events"]:
        if event["name"] == "transport:datagrams_received":
            got.append({"length": event["data"]["raw"][0]["payload_length"], "packets": []})
        elif event["name"] == "transport:packet_received" and got:
            frames = [
                {k: v for k, v in f.items() if k in ("frame_type", "stream_id")}
                for f in event["data"]["frames"]
            ]
            got[-1]["packets"].append({"type": event["data"]["header"]["packet_type"], "frames": frames})
    return got


def describe_certificate(cert):
    """Subject (RFC 4514) and DNS names of an x509 certificate, or None."""
    if cert is None:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns_names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "dns_names": dns_names,
        "serial": format(cert.serial_number, "x"),
        "der": base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(),
    }


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    except Exception as exc:  # report why the connection failed, then fail
        print(f"h3_requests.py: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
