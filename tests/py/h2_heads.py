"""One HTTP/2 GET (Python h2), printing each response head the moment it
arrives, so a caller can act between an interim (1xx) head and the final one.

Usage: h2_heads.py --port PORT [--host 127.0.0.1] [--path /] [--authority A]
                   [--tls --ca CA.pem --server-name localhost]

Without --tls it speaks h2c with prior knowledge. Prints one JSON line per head,
{"head": STATUS, "headers": [[name, value], ...]}, then a last line
{"body": TEXT, "reset": CODE or null}. Exits non-zero on a connection error or
when no complete response comes within 10 s.
"""

import argparse
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events

TIMEOUT = 10.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--authority")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--ca")
    parser.add_argument("--server-name", default="localhost")
    args = parser.parse_args()
    sock = socket.create_connection((args.host, args.port), timeout=TIMEOUT)
    if args.tls:
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(sock, server_hostname=args.server_name)
    authority = args.authority or f"{args.server_name if args.tls else args.host}:{args.port}"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (":method", "GET"),
            (":scheme", "https" if args.tls else "http"),
            (":authority", authority),
            (":path", args.path),
        ],
        end_stream=True,
    )
    sock.sendall(conn.data_to_send())
    body = b""
    reset = None
    done = False
    while not done:
        data = sock.recv(65535)
        if not data:
            sys.exit("connection closed before the response ended")
        for event in conn.receive_data(data):
            if isinstance(event, (h2.events.InformationalResponseReceived, h2.events.ResponseReceived)):
                status = None
                fields = []
                for name, value in event.headers:
                    name, value = name.decode(), value.decode("utf-8", "replace")
                    if name == ":status":
                        status = int(value)
                    else:
                        fields.append([name, value])
                print(json.dumps({"head": status, "headers": fields}), flush=True)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                reset = event.error_code
                done = True
            elif isinstance(event, h2.events.StreamEnded):
                done = True
        sock.sendall(conn.data_to_send())
    print(json.dumps({"body": body.decode("utf-8", "replace"), "reset": reset}), flush=True)


if __name__ == "__main__":
    main()
