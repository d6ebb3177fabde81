"""Handshakes that fail on purpose, for the handshake-failure metrics.

Usage: handshake_fail.py --host 127.0.0.1 --port PORT --mode MODE
  tls-alpn   TLS over TCP offering only ALPN "foo" (no protocol in common)
  quic-alpn  QUIC offering only ALPN "foo"
Prints one JSON line {"mode", "failed": bool, "error": str}.
"""

import argparse
import asyncio
import json
import socket
import ssl

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

TIMEOUT = 10.0


def tls_alpn(host, port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["foo"])
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return {"failed": False, "error": ""}
    except (ssl.SSLError, OSError) as e:
        return {"failed": True, "error": str(e)}


async def quic_alpn(host, port):
    config = QuicConfiguration(is_client=True, alpn_protocols=["foo"])
    config.verify_mode = ssl.CERT_NONE
    config.server_name = "localhost"
    try:
        async with connect(host, port, configuration=config, wait_connected=True):
            return {"failed": False, "error": ""}
    except Exception as e:  # aioquic raises ConnectionError on a close
        return {"failed": True, "error": repr(e)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", required=True, choices=["tls-alpn", "quic-alpn"])
    a = p.parse_args()
    if a.mode == "tls-alpn":
        out = tls_alpn(a.host, a.port)
    else:
        out = asyncio.run(asyncio.wait_for(quic_alpn(a.host, a.port), TIMEOUT))
    out["mode"] = a.mode
    print(json.dumps(out))


if __name__ == "__main__":
    main()
