"""How edge's HTTP/2 encoder spells per-request-unique fields (python-hyper `h2`).

A value that is new on every request (the request id, the traceparent) only
churns the HPACK dynamic table: each insert evicts fields that would repeat.
Edge sends such fields as never-indexed literals. The two modes observe that
on both of edge's HTTP/2 sides and print one JSON line:

  client  N GETs one after another on one h2c connection to edge; for each
          response, its status and the fields that came never-indexed
  serve   an h2c (prior knowledge) origin on a free loopback port (printed as
          {"port": P}); every answer's body is JSON naming the request fields
          that came never-indexed
"""

import argparse
import json
import socket
import threading

import h2.config
import h2.connection
import h2.events
from hpack import NeverIndexedHeaderTuple


def never_indexed(headers):
    return sorted(
        (n.decode() if isinstance(n, bytes) else n)
        for n, _ in (h for h in headers if isinstance(h, NeverIndexedHeaderTuple))
    )


def client(args):
    sock = socket.create_connection((args.host, args.port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    answers = []
    for _ in range(args.n):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [(":method", "GET"), (":scheme", "http"), (":authority", args.authority), (":path", "/")],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("edge closed the connection")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    names = never_indexed(ev.headers)
                    status = dict(ev.headers).get(b":status", b"").decode()
                    answers.append({"status": status, "never_indexed": names})
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
            sock.sendall(conn.data_to_send())
    print(json.dumps({"answers": answers}))


def serve_one(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                body = json.dumps({"never_indexed": never_indexed(ev.headers)}).encode()
                conn.send_headers(
                    ev.stream_id,
                    [(":status", "200"), ("content-length", str(len(body))), ("cache-control", "no-store")],
                )
                conn.send_data(ev.stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())


def serve(_args):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    print(json.dumps({"port": lsock.getsockname()[1]}), flush=True)
    while True:
        sock, _ = lsock.accept()
        threading.Thread(target=serve_one, args=(sock,), daemon=True).start()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("client")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--n", type=int, default=50)
    c.add_argument("--authority", default="localhost")
    sub.add_parser("serve")
    args = p.parse_args()
    {"client": client, "serve": serve}[args.mode](args)


if __name__ == "__main__":
    main()
