#!/usr/bin/env python3
"""Flip switchyard's green weight over its admin socket at a fixed interval
(stdlib only), bounded by --duration. Cycles through --weights (default
0,100,50), one command per line ("weight N"), one JSON reply line per command.
Prints a JSON summary: commands sent, ok replies, error replies, reconnects,
and the reply latency (median / max, ms). Ends with "weight --final".
"""
import argparse
import json
import signal
import socket
import sys
import time


class Admin:
    def __init__(self, path, timeout):
        self.path = path
        self.timeout = timeout
        self.sock = None
        self.buf = b""
        self.reconnects = 0

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s
        self.buf = b""

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def command(self, line):
        """Send one command, return the parsed reply (dict) or raise OSError/ValueError."""
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self._connect()
                self.sock.sendall(line.encode() + b"\n")
                while b"\n" not in self.buf:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise ConnectionResetError("admin socket closed")
                    self.buf += chunk
                reply, _, self.buf = self.buf.partition(b"\n")
                return json.loads(reply)
            except (OSError, ConnectionError):
                # The server may close after each command: reconnect once.
                self.close()
                self.reconnects += 1
                if attempt:
                    raise
        raise OSError("unreachable")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--interval", type=float, default=0.010)
    ap.add_argument("--weights", default="0,100,50")
    ap.add_argument("--final", default="50")
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    weights = [w.strip() for w in args.weights.split(",") if w.strip()]
    admin = Admin(args.socket, args.timeout)
    sent = ok = err = exc = 0
    first_error = None
    lat = []
    deadline = time.monotonic() + args.duration
    next_at = time.monotonic()
    i = 0
    while not stopping and time.monotonic() < deadline:
        cmd = f"weight {weights[i % len(weights)]}"
        i += 1
        t = time.monotonic()
        sent += 1
        try:
            reply = admin.command(cmd)
            lat.append(time.monotonic() - t)
            if isinstance(reply, dict) and reply.get("ok") is True:
                ok += 1
            else:
                err += 1
                if first_error is None:
                    first_error = reply
        except (OSError, ValueError) as e:
            exc += 1
            if first_error is None:
                first_error = f"{type(e).__name__}: {e}"
            time.sleep(0.1)  # the socket is not there: do not spin
        next_at += args.interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.monotonic()
    final = None
    try:
        final = admin.command(f"weight {args.final}")
    except (OSError, ValueError) as e:
        final = f"{type(e).__name__}: {e}"
    admin.close()
    lat.sort()
    summary = {
        "sent": sent, "ok": ok, "error_replies": err, "failures": exc,
        "reconnects": admin.reconnects, "first_error": first_error,
        "reply_ms_p50": round(lat[len(lat) // 2] * 1000, 3) if lat else None,
        "reply_ms_max": round(lat[-1] * 1000, 3) if lat else None,
        "final_reply": final,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
