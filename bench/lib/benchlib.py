#!/usr/bin/env python3
"""Helpers for bench/run.sh (stdlib only).

Subcommands:
  ports N                       print N free loopback TCP ports, one per line
  probe URL [--header H]        one GET (http or https, certificate not checked);
                                exit 0 on a 200 that carries header H (if given)
  cpu PID                       user and system clock ticks of PID and its descendants
  rss PID                       VmRSS KiB of PID and its descendants, summed
  threads PID                   how many processes and threads PID's tree has
  record ...                    parse one load-generator output, append a JSON line
  report ...                    medians, ratios and the markdown report
"""
import argparse
import json
import os
import re
import socket
import ssl
import statistics
import sys
import urllib.parse

PROXIES = ["switchyard", "nginx", "haproxy", "switchyard-base"]

SCENARIOS = [
    # name, title, what
    ("small", "small keep-alive",
     "wrk, 64 keep-alive connections, 1 thread, GET / (3-byte body)"),
    ("body16k", "16 KiB body", "wrk, 64 keep-alive connections, GET /16k"),
    ("tls", "TLS HTTP/1.1", "wrk over https, 64 keep-alive connections, GET /"),
    ("h2", "HTTP/2 over TLS", "h2load -c 64 -m 10 -t 1, GET /"),
    ("close", "new connection per request",
     "wrk, 16 connections, `Connection: close`, GET /"),
    ("rate", "fixed rate",
     "oha at a fixed request rate, latency corrected for coordinated omission, 64 keep-alive connections"),
    ("tlsrate", "fixed rate over TLS",
     "oha at the same fixed rate over https (HTTP/1.1), latency corrected, 64 keep-alive connections"),
    ("flip", "weight flips (switchyard only)",
     "small keep-alive load while the admin socket flips the green weight 0/100/50 every 10 ms; "
     "the same load without flips runs right before it as the baseline"),
    ("idle", "idle keep-alive connections",
     "RSS of the proxy (all its processes) with N idle keep-alive connections, each after one request"),
    ("tlsidle", "idle TLS keep-alive connections",
     "the same over https (HTTP/1.1 by ALPN): RSS with N idle TLS keep-alive connections"),
    ("h2idle", "idle HTTP/2 connections",
     "the same over https with HTTP/2 by ALPN: RSS with N idle HTTP/2 connections, each after "
     "one request on stream 1"),
]
SCENARIO_NAMES = [s[0] for s in SCENARIOS]
# memory scenarios (no load): a table of their own, no latency rows or ratios
IDLE_SCENARIOS = {name: title for name, title, _ in SCENARIOS
                  if name in ("idle", "tlsidle", "h2idle")}


# --------------------------------------------------------------------- procfs

def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2:].split()
        ppid = int(rest[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid):
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pid):
    """(user, system) clock ticks of PID and its descendants."""
    user = system = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2:].split()
        # fields after "(comm)": state=0 ppid=1 ... utime=11 stime=12
        user += int(rest[11])
        system += int(rest[12])
    return user, system


def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def describe(pid):
    """'N process(es), M thread(s)' for PID and its descendants."""
    procs = threads = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("Threads:"):
                        threads += int(line.split()[1])
                        procs += 1
        except OSError:
            continue
    return f"{procs} process{'es' if procs != 1 else ''}, {threads} thread{'s' if threads != 1 else ''}"


# --------------------------------------------------------------------- small tools

def cmd_ports(args):
    socks = []
    for _ in range(args.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
    for s in socks:
        s.close()


def cmd_probe(args):
    u = urllib.parse.urlsplit(args.url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        raw = socket.create_connection((u.hostname, port), timeout=args.timeout)
        if u.scheme == "https":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            sock = ctx.wrap_socket(raw, server_hostname=args.sni or u.hostname)  # no SNI for an IP
        else:
            sock = raw
        with sock:
            sock.settimeout(args.timeout)
            path = u.path or "/"
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{port}\r\n"
                         "Connection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, ssl.SSLError) as e:
        print(f"probe {args.url}: {type(e).__name__}: {e}")
        return 1
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        print(f"probe {args.url}: bad response {lines[0]!r}")
        return 1
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if status != 200:
        print(f"probe {args.url}: status {status}")
        return 1
    if args.header and args.header.lower() not in headers:
        print(f"probe {args.url}: 200 without header {args.header}")
        return 1
    print(f"probe {args.url}: 200")
    return 0


# --------------------------------------------------------------------- parsers

_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text):
    m = re.match(r"([\d.]+)\s*(us|µs|ms|s)$", text.strip())
    if not m:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text):
    m = re.search(r"^WRKJSON (\{.*\})\s*$", text, re.M)
    if not m:
        raise ValueError("no WRKJSON line in wrk output")
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    errors = {k[4:]: d[k] for k in ("err_connect", "err_read", "err_write",
                                    "err_timeout", "err_status") if d[k]}
    return {
        "requests": d["requests"],
        "seconds": secs,
        "rps": d["requests"] / secs if secs > 0 else None,
        "mean_ms": d["mean_us"] / 1000,
        "p50_ms": d["p50_us"] / 1000,
        "p90_ms": d["p90_us"] / 1000,
        "p99_ms": d["p99_us"] / 1000,
        "p999_ms": d["p999_us"] / 1000,
        "errors": sum(errors.values()),
        "error_detail": errors,
    }


def parse_h2load(text):
    m = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", text)
    if not m:
        raise ValueError("no 'finished in' line in h2load output")
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    done, succeeded, failed, errored, timeout = (int(r.group(i)) for i in (3, 4, 5, 6, 7))
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    c4, c5 = (int(s.group(3)), int(s.group(4))) if s else (0, 0)
    t = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    errors = {k: v for k, v in (("failed", failed), ("errored", errored),
                                ("timeout", timeout), ("4xx", c4), ("5xx", c5)) if v}
    return {
        "requests": done,
        "seconds": secs,
        "rps": float(m.group(3)),
        "mean_ms": _ms(t.group(3)) if t else None,
        "p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None,
        "errors": failed + errored + timeout + c4 + c5,
        "error_detail": errors,
        "succeeded": succeeded,
    }


def parse_oha(text):
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in oha output")
    d = json.loads(text[start:])
    summ = d.get("summary", {})
    pct = d.get("latencyPercentiles", {}) or {}
    codes = d.get("statusCodeDistribution", {}) or {}
    errs = {k: v for k, v in (d.get("errorDistribution", {}) or {}).items()
            if "deadline" not in k}  # requests cut by -z's end are not the proxy's errors
    ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
    non2xx = sum(v for k, v in codes.items() if not str(k).startswith("2"))
    nerr = sum(errs.values())
    total = sum(codes.values()) + nerr
    secs = summ.get("total")

    def sec2ms(v):
        return None if v is None else v * 1000

    detail = {}
    if non2xx:
        detail["non-2xx"] = non2xx
    for k, v in errs.items():
        detail[k[:60]] = v
    return {
        "requests": total,
        "seconds": secs,
        "rps": summ.get("requestsPerSec"),
        "mean_ms": sec2ms(summ.get("average")),
        "p50_ms": sec2ms(pct.get("p50")),
        "p90_ms": sec2ms(pct.get("p90")),
        "p99_ms": sec2ms(pct.get("p99")),
        "p999_ms": sec2ms(pct.get("p99.9")),
        "errors": non2xx + nerr,
        "error_detail": detail,
        "succeeded": ok,
    }


PARSERS = {"wrk": parse_wrk, "h2load": parse_h2load, "oha": parse_oha}


def cmd_record(args):
    rec = {"round": args.round, "scenario": args.scenario, "proxy": args.proxy,
           "tool": args.tool}
    if args.tool == "na":
        rec.update(ok=False, note=args.note or "n/a")
    elif args.tool == "idle":
        with open(args.output) as f:
            d = json.loads(f.read().strip().splitlines()[-1])
        rec.update(ok=True, idle=d, rss_base_kib=args.rss_base, rss_kib=args.rss,
                   connections=d.get("alive", d.get("opened")))
        held = rec["connections"] or 0
        rec["kib_per_conn"] = ((args.rss - args.rss_base) / held) if held else None
        if args.note:
            rec["note"] = args.note
    else:
        try:
            with open(args.output, errors="replace") as f:
                text = f.read()
            rec.update(PARSERS[args.tool](text))
            rec["ok"] = True
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            rec.update(ok=False, note=f"could not parse {args.tool} output: {e}")
        if rec.get("ok") and args.cpu_ticks is not None and rec.get("requests"):
            cpu_s = args.cpu_ticks / args.clk_tck
            rec["cpu_s"] = cpu_s
            rec["cpu_us_per_req"] = cpu_s * 1e6 / rec["requests"]
            if args.cpu_sys_ticks is not None:
                rec["cpu_sys_us_per_req"] = args.cpu_sys_ticks / args.clk_tck * 1e6 / rec["requests"]
        if args.flip:
            try:
                with open(args.flip) as f:
                    rec["flip"] = json.loads(f.read().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError) as e:
                rec["flip"] = {"error": f"no flip summary: {e}"}
        if args.note:
            rec["note"] = (rec.get("note", "") + " " + args.note).strip()
    with open(args.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    brief = {k: rec.get(k) for k in ("scenario", "proxy", "rps", "cpu_us_per_req", "p99_ms",
                                      "errors", "rss_kib", "connections", "note") if rec.get(k) is not None}
    print("  " + json.dumps(brief, default=lambda x: round(x, 3)))


# --------------------------------------------------------------------- report

def med(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, kind):
    if v is None:
        return "n/a"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "ms":
        if v >= 100:
            return f"{v:.0f}"
        if v >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}" if v < 1 else f"{v:.2f}"
    if kind == "us":
        return f"{v:.1f}" if v < 100 else f"{v:.0f}"
    if kind == "ratio":
        return f"{v:.2f}"
    if kind == "kib":
        return f"{v:,.0f}"
    return str(v)


def table(headers, rows, align=None):
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    def line(cells):
        out = []
        for c, w, a in zip(cells, widths, align):
            c = str(c)
            out.append(c.ljust(w) if a == "l" else c.rjust(w))
        return "| " + " | ".join(out) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                         for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def cmd_report(args):
    recs = []
    with open(args.results) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    with open(args.meta) as f:
        meta = json.load(f)

    by = {}
    for r in recs:
        by.setdefault((r["scenario"], r["proxy"]), []).append(r)
    scen_present = [s for s in SCENARIO_NAMES if any(k[0] == s for k in by)]
    proxies = [p for p in PROXIES if any(k[1] == p for k in by)]

    out = []
    out.append(f"# switchyard load benchmark — {meta.get('date', '')}")
    out.append("")
    out.append("## Run")
    out.append("")
    out.append("```")
    out.append(meta.get("command", ""))
    out.append("```")
    out.append("")
    facts = [
        ("commit", meta.get("commit")),
        ("date (UTC)", meta.get("date")),
        ("host CPUs (nproc)", meta.get("nproc")),
        ("CPU model", meta.get("cpu_model")),
        ("kernel", meta.get("kernel")),
        ("load average at start", meta.get("loadavg")),
        ("pinning", meta.get("pinning")),
        ("workers", "{w} per proxy (switchyard workers = {w}, nginx worker_processes {w}, haproxy nbthread {w})".format(w=meta.get("workers", "1"))),
        ("rounds × duration", f"{meta.get('rounds')} × {meta.get('duration')} s per scenario and proxy"),
        ("proxies", ", ".join(meta.get("proxies", []))),
        ("tools", meta.get("versions")),
    ]
    for k, v in facts:
        out.append(f"- {k}: {v}")
    out.append("")

    rows = []
    for s in scen_present:
        if s in IDLE_SCENARIOS:
            continue
        for p in proxies:
            rs = by.get((s, p))
            if not rs:
                continue
            good = [r for r in rs if r.get("ok")]
            if not good:
                note = rs[0].get("note", "n/a")
                rows.append([s, p] + ["n/a"] * 9 + [note])
                continue
            errs = sum(r.get("errors") or 0 for r in good)
            details = {}
            for r in good:
                for k, v in (r.get("error_detail") or {}).items():
                    details[k] = details.get(k, 0) + v
            note = ", ".join(f"{k} {v}" for k, v in details.items())
            if len(good) < len(rs):
                note = (note + f"; {len(rs) - len(good)} round(s) failed").strip("; ")
            rps_vals = [r["rps"] for r in good if r.get("rps")]
            spread = "–"
            if len(rps_vals) > 1:
                spread = f"±{(max(rps_vals) - min(rps_vals)) / 2 / statistics.median(rps_vals) * 100:.0f}%"
            rows.append([s, p,
                         fmt(med(r.get("rps") for r in good), "int"), spread,
                         fmt(med(r.get("cpu_us_per_req") for r in good), "us"),
                         fmt(med(r.get("cpu_sys_us_per_req") for r in good), "us"),
                         fmt(med(r.get("mean_ms") for r in good), "ms"),
                         fmt(med(r.get("p50_ms") for r in good), "ms"),
                         fmt(med(r.get("p99_ms") for r in good), "ms"),
                         fmt(med(r.get("p999_ms") for r in good), "ms"),
                         f"{errs:,}", note])
    out.append("## Throughput, CPU and latency (medians over rounds)")
    out.append("")
    out.append(table(["scenario", "proxy", "req/s", "spread", "CPU µs/req", "of it kernel",
                      "mean ms", "P50 ms", "P99 ms", "P99.9 ms", "errors", "error detail"], rows,
                     ["l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "l"]))
    out.append("")
    out.append("CPU µs/req = proxy CPU time (user + system, all its threads and processes) "
               "during the run ÷ requests completed; of it kernel = the system-time part "
               "(socket calls, waking peers, TLS is user time). Spread = half the range of req/s over "
               "the rounds, relative to the median. Errors are summed over all rounds.")
    out.append("")

    # ratios, per round then median
    if "switchyard" in proxies and len(proxies) > 1:
        others = [p for p in proxies if p != "switchyard"]
        rrows = []
        for s in scen_present:
            if s in IDLE_SCENARIOS or s == "flip":
                continue
            row = [s]
            for o in others:
                for metric in ("rps", "cpu_us_per_req", "p99_ms"):
                    ratios = []
                    for r in by.get((s, "switchyard"), []):
                        if not r.get("ok"):
                            continue
                        for q in by.get((s, o), []):
                            if q.get("ok") and q["round"] == r["round"]:
                                a, b = r.get(metric), q.get(metric)
                                if a is not None and b:
                                    ratios.append(a / b)
                    row.append(fmt(med(ratios), "ratio"))
            rrows.append(row)
        heads = ["scenario"]
        for o in others:
            heads += [f"req/s ÷ {o}", f"CPU/req ÷ {o}", f"P99 ÷ {o}"]
        out.append("## Ratios switchyard ÷ baseline (median of per-round ratios)")
        out.append("")
        out.append(table(heads, rrows))
        out.append("")
        out.append("req/s > 1.0: switchyard serves more; CPU/req < 1.0: switchyard spends "
                   "less CPU per request; P99 < 1.0: switchyard's tail is shorter.")
        out.append("")

    def flip_base(rnd):
        """The no-flip baseline of round rnd: the run just before the flips, else `small`."""
        for key in (("flip-base", "switchyard"), ("small", "switchyard")):
            base = [q for q in by.get(key, []) if q.get("ok") and q["round"] == rnd]
            if base:
                return base
        return []

    if "flip" in scen_present:
        rs = [r for r in by.get(("flip", "switchyard"), [])]
        frows = []
        for r in sorted(rs, key=lambda x: x["round"]):
            base = flip_base(r["round"])
            if not r.get("ok"):
                frows.append([r["round"], "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", r.get("note", "")])
                continue
            fl = r.get("flip") or {}
            b = base[0]["rps"] if base else None
            frows.append([r["round"], fmt(b, "int"), fmt(r.get("rps"), "int"),
                          fmt(r["rps"] / b if b else None, "ratio"),
                          fmt(r.get("p99_ms"), "ms"),
                          f"{fl.get('ok', 'n/a')}/{fl.get('sent', 'n/a')}",
                          fmt(fl["sent"] / r["seconds"] if fl.get("sent") and r.get("seconds") else None, "int"),
                          f"{r.get('errors', 0):,}",
                          "; ".join(filter(None, [
                              ", ".join(f"{k} {v}" for k, v in (r.get("error_detail") or {}).items()),
                              f"first admin error: {fl['first_error']}" if fl.get("first_error") else "",
                              f"admin reply p50 {fl.get('reply_ms_p50')} ms, max {fl.get('reply_ms_max')} ms"
                              if fl.get("reply_ms_p50") is not None else "",
                              fl.get("error", ""), r.get("note", "")]))])
        ratios = []
        for r in rs:
            base = flip_base(r["round"])
            if r.get("ok") and base and base[0].get("rps") and r.get("rps"):
                ratios.append(r["rps"] / base[0]["rps"])
        if len(rs) > 1:
            good = [r for r in rs if r.get("ok")]
            frows.append(["median", "", fmt(med(r.get("rps") for r in good), "int"),
                          fmt(med(ratios), "ratio"), fmt(med(r.get("p99_ms") for r in good), "ms"),
                          "", "", f"{sum(r.get('errors') or 0 for r in good):,}", "errors: total"])
        out.append("## Weight flips every 10 ms under load (switchyard)")
        out.append("")
        out.append(table(["round", "req/s no flips", "req/s with flips", "ratio", "P99 ms",
                          "flips ok/sent", "flips/s", "errors", "notes"], frows,
                         ["r", "r", "r", "r", "r", "r", "r", "r", "l"]))
        out.append("")
        out.append("Errors = non-2xx responses plus socket errors reported by wrk. The "
                   "no-flip baseline is the same load run just before the flips, in the same round. "
                   "The flip loop sends the next command 10 ms after the previous one was due, or "
                   "as soon as its reply arrives if that is later: flips/s below 100 means the "
                   "admin replies took longer than 10 ms under load.")
        out.append("")

    for scen, title in IDLE_SCENARIOS.items():
        if scen not in scen_present:
            continue
        irows = []
        for p in proxies:
            rs = by.get((scen, p))
            if not rs:
                continue
            good = [r for r in rs if r.get("ok")]
            if not good:
                irows.append([p, "n/a", "n/a", "n/a", "n/a", rs[0].get("note", "")])
                continue
            notes = sorted({json.dumps(r["idle"].get("errors")) for r in good
                            if r["idle"].get("errors")})
            extra = [r.get("note") for r in good if r.get("note")]
            irows.append([p,
                          f"{med(r.get('connections') for r in good):,.0f}/"
                          f"{good[0]['idle'].get('requested'):,}",
                          fmt(med(r.get("rss_base_kib") for r in good), "kib"),
                          fmt(med(r.get("rss_kib") for r in good), "kib"),
                          fmt(med(r.get("kib_per_conn") for r in good), "ratio"),
                          "; ".join(["client errors " + n for n in notes] + extra)])
        out.append(f"## Memory with {title}")
        out.append("")
        out.append(table(["proxy", "connections held", "RSS before KiB", "RSS held KiB",
                          "KiB/conn", "notes"], irows, ["l", "r", "r", "r", "r", "l"]))
        out.append("")
    if any(s in scen_present for s in IDLE_SCENARIOS):
        out.append("RSS = VmRSS from /proc summed over the proxy's processes (nginx: master + "
                   "worker), read on a freshly started proxy, then again while the connections are held, "
                   "4.5 s after the last one opened.")
        out.append("")

    notes = meta.get("notes") or []
    if notes:
        out.append("## Notes")
        out.append("")
        for n in notes:
            out.append(f"- {n}")
        out.append("")
    out.append("## Scenarios")
    out.append("")
    out.append(table(["name", "what"], [[n, w.replace("|", "/")] for n, _, w in SCENARIOS
                                        if n in scen_present], ["l", "l"]))
    out.append("")
    text = "\n".join(out)
    print(text)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ports")
    p.add_argument("n", type=int)
    p = sub.add_parser("probe")
    p.add_argument("url")
    p.add_argument("--header")
    p.add_argument("--sni")
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("cpu")
    p.add_argument("pid", type=int)
    p = sub.add_parser("rss")
    p.add_argument("pid", type=int)
    p = sub.add_parser("threads")
    p.add_argument("pid", type=int)
    p = sub.add_parser("record")
    p.add_argument("--results", required=True)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--scenario", required=True)
    p.add_argument("--proxy", required=True)
    p.add_argument("--tool", required=True, choices=list(PARSERS) + ["idle", "na"])
    p.add_argument("--output")
    p.add_argument("--cpu-ticks", type=int)
    p.add_argument("--cpu-sys-ticks", type=int)
    p.add_argument("--clk-tck", type=int, default=100)
    p.add_argument("--rss-base", type=int)
    p.add_argument("--rss", type=int)
    p.add_argument("--flip")
    p.add_argument("--note")
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--markdown-out")
    args = ap.parse_args()
    if args.cmd == "ports":
        return cmd_ports(args)
    if args.cmd == "probe":
        return cmd_probe(args)
    if args.cmd == "cpu":
        print(*cpu_ticks(args.pid))
        return 0
    if args.cmd == "rss":
        print(rss_kib(args.pid))
        return 0
    if args.cmd == "threads":
        print(describe(args.pid))
        return 0
    if args.cmd == "record":
        return cmd_record(args)
    if args.cmd == "report":
        return cmd_report(args)
    return 2


if __name__ == "__main__":
    sys.exit(main() or 0)
