"""Replays recorded QUIC datagrams, as an on-path attacker would (0-RTT replay).

Usage: udp_replay.py --host 127.0.0.1 --port PORT --datagrams FILE [--times N]

FILE is a JSON list of base64 datagrams (h3_requests.py --record-first-flight).
Each of the N replays sends them all from a fresh UDP socket (a new source port:
a new connection to the server), every 200 ms until the server answers at least
one datagram, so the server has read the ClientHello and its 0-RTT packets; the
replayer can decrypt nothing and sends nothing more. Prints one JSON line:
{"answered": [1 per replay the server answered]}. Exits non-zero when a replay got
no answer within 5 s.
"""

import argparse
import base64
import json
import socket
import sys
import time

ANSWER_TIMEOUT = 5.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--datagrams", required=True)
    parser.add_argument("--times", type=int, default=1)
    args = parser.parse_args()
    with open(args.datagrams) as f:
        datagrams = [base64.b64decode(d) for d in json.load(f)]
    if not datagrams:
        sys.exit("udp_replay.py: no datagrams recorded")
    answered = []
    for _ in range(args.times):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((args.host, args.port))
            got = 0
            deadline = time.monotonic() + ANSWER_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if got == 0:
                    # Again until answered: the server routes Initials with
                    # this connection id to the original connection until that
                    # one is drained (quinn), and drops them.
                    for d in datagrams:
                        sock.send(d)
                sock.settimeout(min(left, 0.2))
                try:
                    sock.recv(65536)
                    got += 1
                    break
                except socket.timeout:
                    pass
            if got == 0:
                sys.exit("udp_replay.py: the server never answered a replay")
            answered.append(got)
    print(json.dumps({"answered": answered}))


if __name__ == "__main__":
    main()
