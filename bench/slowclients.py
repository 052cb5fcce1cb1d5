"""Slow clients: hold N connections to a server that are slow to send, or slow to read.

--mode send (slow senders, the default): each client opens a connection and sends
"GET / HTTP/1.1" plus headers one byte at a time, one byte every --interval seconds
(jittered), for --duration seconds, then stops by itself.

--mode read (slow readers): each client sends one whole `GET --path` at once (a large
response, e.g. /big?16 for 16 MiB) and then reads it at --rate bytes per second (one read of
--rate bytes a second, jittered; the socket's receive buffer is shrunk to 4 KiB and the
stream reader's to --rate, so the server, not the client, holds the rest). A response read to
its end is counted and the request sent again on a new connection.

Either way, a connection the server closes is counted and reopened, so the pressure stays at
N. Prints one JSON line when the clients are connected and one of counters at the end.
stdlib only; traffic goes to the given loopback address.

    python slowclients.py --host 127.0.0.1 --port 8000 --conns 200 --interval 1.5 --duration 30
    python slowclients.py --port 8000 --mode read --path '/big?16' --rate 1024 --conns 50
"""
import socket
import argparse
import asyncio
import json
import random
import signal
import sys
import time


async def _connect_failed(stats, e):
    stats["connect_errors"] += 1
    stats["last_error"] = repr(e)
    await asyncio.sleep(0.5)


def _opened(stats):
    stats["opened"] += 1
    stats["open_now"] += 1


async def _close(writer, stats):
    stats["open_now"] -= 1
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout=1)
    except Exception:
        pass


async def client(i, a, stats, ctl, ready):
    req = (f"GET /?slow={i} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
           f"User-Agent: slowclient\r\nX-Padding: {'p' * 64}\r\n\r\n").encode()
    first = True
    while time.monotonic() < ctl['stop_at']:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(a.host, a.port), timeout=5)
        except (OSError, asyncio.TimeoutError) as e:
            await _connect_failed(stats, e)
            continue
        _opened(stats)
        if first:
            first = False
            ready.append(i)
        closed_by_server = False
        try:
            pos = 0
            while time.monotonic() < ctl['stop_at']:
                writer.write(req[pos:pos + 1])
                await writer.drain()
                stats["bytes_sent"] += 1
                pos += 1
                if pos == len(req):
                    # a whole request went out (after a very long time); answers are read below
                    stats["requests_sent"] += 1
                    pos = 0
                try:
                    data = await asyncio.wait_for(
                        reader.read(65536),
                        timeout=a.interval * random.uniform(0.67, 1.33))
                    if not data:
                        closed_by_server = True
                        break
                    stats["bytes_received"] += len(data)
                    if data.startswith(b"HTTP/1.") and b" 408 " in data[:16]:
                        stats["timeouts_408"] += 1
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, OSError):
            closed_by_server = True
        finally:
            await _close(writer, stats)
        if closed_by_server:
            stats["closed_by_server"] += 1


async def reader_client(i, a, stats, ctl, ready):
    """Sends one request for a large response and reads it at a.rate bytes per second."""
    req = (f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
           f"User-Agent: slowreader-{i}\r\n\r\n").encode()
    first = True
    while time.monotonic() < ctl['stop_at']:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connecting, so that the advertised window stays small: the server's kernel
        # buffers then hold little, and the server itself holds the rest of the response.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (a.host, a.port)), timeout=5)
            reader, writer = await asyncio.open_connection(sock=sock, limit=max(a.rate, 256))
        except (OSError, asyncio.TimeoutError) as e:
            sock.close()
            await _connect_failed(stats, e)
            continue
        _opened(stats)
        closed_by_server = False
        try:
            writer.write(req)
            await writer.drain()
            stats["requests_sent"] += 1
            got_any = False
            tail = b""
            while time.monotonic() < ctl['stop_at']:
                try:
                    data = await asyncio.wait_for(reader.read(a.rate), timeout=10)
                except asyncio.TimeoutError:
                    stats["read_stalls_10s"] += 1
                    continue
                if not data:
                    closed_by_server = True
                    break
                stats["bytes_received"] += len(data)
                if not got_any:
                    got_any = True
                    if first:
                        first = False
                        ready.append(i)
                tail = (tail + data)[-5:]
                if tail == b"0\r\n\r\n":
                    # the last chunk of a chunked response (the body is all b"b")
                    stats["responses_completed"] += 1
                    break
                await asyncio.sleep(random.uniform(0.67, 1.33))
        except (ConnectionError, OSError):
            closed_by_server = True
        finally:
            await _close(writer, stats)
        if closed_by_server:
            stats["closed_by_server"] += 1


async def main(a):
    stats = dict(opened=0, open_now=0, connect_errors=0, closed_by_server=0, bytes_sent=0,
                 bytes_received=0, requests_sent=0, timeouts_408=0, responses_completed=0,
                 read_stalls_10s=0, last_error=None)
    ready = []
    ctl = {"stop_at": time.monotonic() + a.duration}
    # SIGTERM ends the run early (the counters are still printed)
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM, lambda: ctl.update(stop_at=0.0))
    tasks = []
    for i in range(a.conns):
        run = reader_client if a.mode == "read" else client
        tasks.append(asyncio.create_task(run(i, a, stats, ctl, ready)))
        await asyncio.sleep(a.ramp / a.conns)
    announced = False
    t0 = time.monotonic()
    while time.monotonic() < ctl["stop_at"]:
        if not announced and (len(ready) == a.conns or time.monotonic() - t0 > 5):
            print(json.dumps({"event": "connected", "open_now": stats["open_now"],
                              "connect_errors": stats["connect_errors"]}), flush=True)
            announced = True
        await asyncio.sleep(0.05)
    # clients notice the stop within one read timeout (<= 1.33 x interval, or a second)
    await asyncio.wait(tasks, timeout=a.interval * 1.5 + 2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats["event"] = "done"
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--interval", type=float, default=1.5, help="seconds between bytes")
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--ramp", type=float, default=0.5, help="seconds to open all connections")
    ap.add_argument("--mode", choices=("send", "read"), default="send",
                    help="send: trickle request headers; read: read a large response slowly")
    ap.add_argument("--path", default="/big?16", help="read mode: the large response's path")
    ap.add_argument("--rate", type=int, default=1024, help="read mode: bytes read per second")
    a = ap.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("slowclients: loopback only")
    asyncio.run(main(a))
