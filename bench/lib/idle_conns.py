#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to HOST:PORT (with --tls: over TLS,
HTTP/1.1 by ALPN, the certificate not checked), send one request on each, read
its response, then hold them all open (stdlib only).

Used by bench/run.sh for the idle-memory scenario. When every connection has
been tried, a JSON line {"opened":N,"failed":M,...} is written to --ready-file
(and stdout); the script then holds the connections until --hold seconds have
passed or it receives SIGTERM/SIGINT, and exits. Bounded in time throughout.
"""
import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import time


async def one(host, port, path, sem, timeout, tls):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls), timeout)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "User-Agent: switchyard-bench-idle\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status = int(head.split(b" ", 2)[1])
            length = None
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if length is not None:
                await asyncio.wait_for(reader.readexactly(length), timeout)
            elif chunked:
                while True:
                    size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                    size = int(size_line.split(b";")[0].strip(), 16)
                    await asyncio.wait_for(reader.readexactly(size + 2), timeout)
                    if size == 0:
                        break
            return (reader, writer, status)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            return exc


async def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("-n", "--connections", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=256,
                    help="connections being opened at once (listen backlog friendly)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per connection step")
    ap.add_argument("--hold", type=float, default=60.0, help="max seconds to hold")
    ap.add_argument("--ready-file", default=None)
    ap.add_argument("--tls", action="store_true",
                    help="TLS, HTTP/1.1 by ALPN (the bench's certificate is self-signed)")
    args = ap.parse_args()
    tls = None
    if args.tls:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1"])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    t0 = time.monotonic()
    sem = asyncio.Semaphore(args.concurrency)
    results = await asyncio.gather(*(one(args.host, args.port, args.path, sem, args.timeout,
                                         tls)
                                     for _ in range(args.connections)))
    conns = [r for r in results if isinstance(r, tuple)]
    errors = {}
    for r in results:
        if not isinstance(r, tuple):
            key = type(r).__name__
            errors[key] = errors.get(key, 0) + 1
    non200 = sum(1 for r in conns if r[2] != 200)
    # A connection the peer already closed is not "held": check after a pause.
    await asyncio.sleep(0.5)
    alive = sum(1 for r in conns if not r[0].at_eof())
    report = {"requested": args.connections, "opened": len(conns), "alive": alive,
              "non200": non200, "failed": args.connections - len(conns), "errors": errors,
              "open_seconds": round(time.monotonic() - t0, 3)}
    line = json.dumps(report)
    print(line, flush=True)
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.replace(tmp, args.ready_file)
    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    for _, writer, _ in conns:
        writer.transport.abort()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
