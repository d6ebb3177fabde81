"""WebSocket through edge with the real `websockets` library, both ends.

  serve           an echo server on 127.0.0.1 (port 0); prints {"port": N} and
                  serves until killed. A text message "close CODE REASON" is
                  answered by closing with that code and reason instead.
  echo URL        connects (wss:// trusting --ca), echoes a text message, then
                  --size bytes of binary each way, then asks the server to
                  close with 4001 "bye"; prints what came back.
  idle URL        connects, echoes once, then sends nothing and waits (up to
                  --wait seconds) for the connection to be closed under it.

Keepalive pings are off on both ends, so an idle tunnel is really idle.
"""

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import sys
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

MAX = 64 * 1024 * 1024


async def echo(ws):
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("close "):
                _, code, reason = message.split(" ", 2)
                await ws.close(int(code), reason)
                return
            await ws.send(message)
    except ConnectionClosed:
        pass


async def run_server():
    async with serve(echo, "127.0.0.1", 0, ping_interval=None, max_size=MAX) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Future()


def client_ssl(args):
    if not args.url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=args.ca)
    return ctx


async def run_echo(args):
    out = {}
    async with connect(
        args.url, ssl=client_ssl(args), ping_interval=None, max_size=MAX, open_timeout=10
    ) as ws:
        out["status"] = ws.response.status_code
        out["via"] = ws.response.headers.get("via")
        await ws.send("hello through edge")
        out["text"] = await ws.recv()
        if args.size:
            payload = os.urandom(args.size)
            await ws.send(payload)
            back = await ws.recv()
            out["big_sent"] = len(payload)
            out["big_received"] = len(back)
            out["big_intact"] = hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
        await ws.send("close 4001 bye")
        try:
            await ws.recv()
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        out["close_code"] = ws.close_code
        out["close_reason"] = ws.close_reason
    print(json.dumps(out), flush=True)


async def run_idle(args):
    out = {}
    async with connect(
        args.url, ssl=client_ssl(args), ping_interval=None, max_size=MAX, open_timeout=10
    ) as ws:
        await ws.send("before idle")
        out["text"] = await ws.recv()
        started = time.monotonic()
        try:
            await asyncio.wait_for(ws.wait_closed(), args.wait)
            out["closed"] = True
        except asyncio.TimeoutError:
            out["closed"] = False
        out["waited_s"] = round(time.monotonic() - started, 3)
        out["close_code"] = ws.close_code
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "echo", "idle"])
    p.add_argument("url", nargs="?")
    p.add_argument("--ca")
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--wait", type=float, default=30.0)
    args = p.parse_args()
    if args.mode == "serve":
        asyncio.run(run_server())
    elif args.mode == "echo":
        asyncio.run(run_echo(args))
    else:
        asyncio.run(run_idle(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
