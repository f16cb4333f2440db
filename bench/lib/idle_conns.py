#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to HOST:PORT (with --tls: over TLS,
HTTP/1.1 by ALPN, the certificate not checked; with --h2: HTTP/2 over TLS by
ALPN), send one request on each, read its response, then hold them all open
(stdlib only; the HTTP/2 request is written by hand with HPACK's static table).

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


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_SETTINGS, H2_PING, H2_GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
H2_END_STREAM, H2_ACK = 0x1, 0x1


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + \
        stream.to_bytes(4, "big") + payload


def hpack_literal(index, value):
    """A literal field without indexing, its name from the static table (index < 15),
    its value raw (shorter than 127 bytes)."""
    value = value.encode()
    return bytes([index, len(value)]) + value


async def h2_get(reader, writer, host, port, path, timeout):
    """GET PATH on stream 1 of a new HTTP/2 connection; returns the status (200 when the
    response's :status is the static table's 200, else 0) once the stream has ended."""
    block = b"\x82\x87"  # :method GET, :scheme https
    block += b"\x84" if path == "/" else hpack_literal(4, path)
    block += hpack_literal(1, f"{host}:{port}")  # :authority
    writer.write(H2_PREFACE + h2_frame(H2_SETTINGS, 0, 0) +
                 h2_frame(H2_HEADERS, H2_END_STREAM | 0x4, 1, block))
    status = None
    while True:
        head = await asyncio.wait_for(reader.readexactly(9), timeout)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7fffffff
        payload = await asyncio.wait_for(reader.readexactly(length), timeout)
        if kind == H2_SETTINGS and not flags & H2_ACK:
            writer.write(h2_frame(H2_SETTINGS, H2_ACK, 0))
        elif kind == H2_PING and not flags & H2_ACK:
            writer.write(h2_frame(H2_PING, H2_ACK, 0, payload))
        elif kind == H2_GOAWAY:
            raise ValueError("GOAWAY before the response")
        elif stream == 1 and kind == H2_HEADERS and status is None:
            # PADDED and PRIORITY flags shift the block; a server's response has neither
            # here, and anything else only reads as "not 200".
            status = 200 if payload[:1] == b"\x88" else 0
        if stream == 1 and kind in (H2_DATA, H2_HEADERS) and flags & H2_END_STREAM:
            return status or 0


async def one(host, port, path, sem, timeout, tls, h2):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls), timeout)
            if h2:
                status = await h2_get(reader, writer, host, port, path, timeout)
                return (reader, writer, status)
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
    ap.add_argument("--h2", action="store_true", help="HTTP/2 over TLS, by ALPN")
    args = ap.parse_args()
    tls = None
    if args.tls or args.h2:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["h2" if args.h2 else "http/1.1"])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    t0 = time.monotonic()
    sem = asyncio.Semaphore(args.concurrency)
    results = await asyncio.gather(*(one(args.host, args.port, args.path, sem, args.timeout,
                                         tls, args.h2)
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
