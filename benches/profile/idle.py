"""Holds N1, then N2 idle HTTP/1.1 keep-alive connections to HOST:PORT (each after
one GET / and its whole response) and prints the RSS slope of process PID per
connection, measured once edge reports them all parked (its admin listener at
ADMIN, host:port). Usage: idle.py HOST PORT plain|tls N1 N2 PID ADMIN"""
import asyncio
import ssl
import sys
import time
import urllib.request

host, port, kind, n1, n2, pid, admin = sys.argv[1:8]
port, n1, n2, pid = int(port), int(n1), int(n2), int(pid)
REQUEST = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
held = []


def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS")


async def one(ctx):
    r, w = await asyncio.open_connection(host, port, ssl=ctx)
    w.write(REQUEST)
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:80]!r}")
    held.append(w)


async def parked(count, deadline=30.0):
    """Polls edge's proxy_parked_connections until it reaches `count`."""
    url = f"http://{admin}/metrics"
    end = time.monotonic() + deadline
    value = None
    while time.monotonic() < end:
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        for line in page.decode().splitlines():
            if line.startswith("proxy_parked_connections "):
                value = float(line.split()[1])
        if value is not None and value >= count:
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"only {value} of {count} connections parked after {deadline} s")


async def fill(count, ctx):
    gate = asyncio.Semaphore(20)

    async def guarded():
        async with gate:
            await one(ctx)

    await asyncio.gather(*(guarded() for _ in range(count)))


async def main():
    ctx = None
    if kind == "tls":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    await fill(n1, ctx)
    await parked(n1)
    rss1 = rss()
    await fill(n2 - n1, ctx)
    await parked(n2)
    rss2 = rss()
    slope = (rss2 - rss1) / (n2 - n1)
    print(f"{kind}: {n1} conns {rss1} B, {n2} conns {rss2} B -> {slope:.0f} B/conn", flush=True)
    for w in held:
        w.close()


asyncio.run(main())
