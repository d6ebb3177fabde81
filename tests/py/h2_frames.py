"""Writes an HTTP/2 client's bytes to files, for a client that cannot speak h2
itself (openssl s_client sending them as TLS early data).

Usage: h2_frames.py --request FILE --close FILE [--method M] [--path P]
                    [--authority A] [--body-bytes N]

--request gets the connection preface, SETTINGS and one request on stream 1
(HEADERS, then DATA when --body-bytes is set); --close gets a GOAWAY, for after
the handshake: the server then closes once stream 1 is answered. Prints {} .
"""

import argparse
import json

import h2.config
import h2.connection


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--request", required=True)
    parser.add_argument("--close", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/")
    parser.add_argument("--authority", default="localhost")
    parser.add_argument("--body-bytes", type=int, default=0)
    args = parser.parse_args()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [
        (":method", args.method),
        (":scheme", "https"),
        (":authority", args.authority),
        (":path", args.path),
    ]
    body = b"x" * args.body_bytes
    if body:
        headers.append(("content-length", str(len(body))))
    conn.send_headers(1, headers, end_stream=not body)
    if body:
        conn.send_data(1, body, end_stream=True)
    with open(args.request, "wb") as f:
        f.write(conn.data_to_send())
    conn.close_connection()
    with open(args.close, "wb") as f:
        f.write(conn.data_to_send())
    print(json.dumps({}))


if __name__ == "__main__":
    main()
