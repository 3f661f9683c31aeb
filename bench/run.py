"""The one benchmark run: relay vs Postfix vs aiosmtpd (fsync) side by side, plus the
smtp-source -> smtp-sink loopback ceiling, with ratios computed within this run. The
relay relays what it accepts (like Postfix); relay_queue_only, the same relay with
delivery off, is compared with aiosmtpd, which stores and relays nothing.

    .venv/bin/python -m bench.run            # full matrix (make bench)
    .venv/bin/python -m bench.run --quick    # 10 KB, 50 sessions, reuse on
    .venv/bin/python -m bench.run --servers postfix,aiosmtpd_fsync --json-only
    .venv/bin/python -m bench.run --imap-only      # relay IMAP vs a private Dovecot

Servers run one at a time (the machine is small and shared); for every cell each
server gets the same load twice: ``smtp-source`` (Postfix's C load generator,
for throughput) and our ``bench.loadgen`` (per-message latency, and throughput
with PIPELINING when advertised). Results go to bench/results/<timestamp>.json
and .md. Then the end-to-end scenario (bench/e2e.py) and the IMAP scenario
(bench/imap.py: relay vs Dovecot over one Maildir, plus IDLE capacity). See
bench/README.md for how to read them.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import functools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import e2e
from bench import imap as imap_scenario
from bench.loadgen import LoadConfig, run_load
from bench.peers.aiosmtpd_fsync import AiosmtpdPeer
from bench.peers.postfix import PostfixPeer, SmtpSink, ensure_postfix, run_smtp_source
from bench.peers.relay import RelayPeer
from bench.util import REPO, RESULTS, BenchError, acquire_run_lock, port_open, reap_stale

SERVERS = {"relay": RelayPeer, "postfix": PostfixPeer, "aiosmtpd_fsync": AiosmtpdPeer,
           # accepts and queues, relays nothing: the like-for-like peer of aiosmtpd_fsync
           "relay_queue_only": functools.partial(RelayPeer, relaying=False)}
# (relay variant, peer) pairs whose ratios are reported; the relay relays to its sink
# like Postfix, and relay_queue_only, like aiosmtpd, only stores.
RATIO_PAIRS = (("relay", "postfix"), ("relay", "aiosmtpd_fsync"),
               ("relay_queue_only", "aiosmtpd_fsync"))
RATIO_FIELDS = ("msgs_per_s_smtp_source", "msgs_per_s_loadgen", "p50_loadgen", "p99_loadgen")
CEILING = "ceiling"          # smtp-source/loadgen -> smtp-sink (no disk, no fsync)
KB = 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cell_key(size: int, sessions: int, reuse: bool) -> str:
    return f"{size // KB}KB/s{sessions}/{'reuse' if reuse else 'noreuse'}"


def budget(size: int, max_messages: int) -> int:
    """Messages per measurement: fewer for big messages (time bound applies as well)."""
    if size >= 100 * KB:
        return max(100, max_messages // 4)
    return max_messages


def _accounted(target) -> int | None:
    fn = getattr(target, "accounted", None)
    return fn() if fn else None


def _account(target, tool: str, res: dict, before, after) -> None:
    """Cross-check after settling: the server must account for every 250 counted — as a
    message delivered to the sink or still in its queue (Postfix, relay), or as a stored
    file (aiosmtpd). A shortfall means a 250 without a message: printed and recorded."""
    if before is None or after is None:
        return
    ok = res.get("messages_ok", res.get("ok", 0)) or 0
    res["accounted"] = after - before
    if after - before < ok:
        res["accounting_error"] = f"{ok} accepted but only {after - before} delivered, queued or stored"
        log(f"[{target.name}] WARNING {tool}: {res['accounting_error']}")


def _run_cell(target, size: int, sessions: int, reuse: bool, messages: int,
              max_seconds: float, settle) -> dict:
    out: dict = {}
    a0 = _accounted(target)
    try:
        src = run_smtp_source(target.host, target.port, sessions=sessions, messages=messages,
                              size=size, reuse=reuse, time_limit=max_seconds)
        out["smtp_source"] = src.to_dict()
    except BenchError as exc:
        out["smtp_source"] = {"error": str(exc)}
    out["queued_after_smtp_source"] = settle()
    a1 = _accounted(target)
    _account(target, "smtp-source", out["smtp_source"], a0, a1)
    res = run_load(LoadConfig(host=target.host, port=target.port, sessions=sessions,
                              messages=messages, size=size, reuse=reuse, time_limit=max_seconds))
    out["loadgen"] = res.to_dict()
    out["queued_after_loadgen"] = settle()
    _account(target, "loadgen", out["loadgen"], a1, _accounted(target))
    return out


def _brief(r: dict) -> str:
    s = r.get("smtp_source", {})
    g = r.get("loadgen", {})
    src = f"{s['msgs_per_s']:.0f} msg/s" if "msgs_per_s" in s else "error"
    if s.get("error"):
        src += f" ({s['error'][:80]})"
    lg = (f"{g['msgs_per_s']:.0f} msg/s p50 {_ms(g.get('p50_ms'))} p99 {_ms(g.get('p99_ms'))} ms"
          if g else "-")
    if g.get("failures"):
        lg += f" failures {g['failures']}"
    return f"smtp-source {src}; loadgen {lg}"


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def measure_server(name: str, cells: list[tuple[int, int, bool]], opts, results: dict,
                   status: dict) -> None:
    """Start one server, run every cell against it, stop it (always).

    ``results[cell][name]`` receives one dict per cell; ``status[name]`` the outcome."""
    if name == CEILING:
        peer = SmtpSink()
    elif name == "postfix":
        peer = PostfixPeer(keep=opts.keep_tmp, extra=opts.postfix_extra)
    else:
        peer = SERVERS[name](keep=opts.keep_tmp)
    settle = getattr(peer, "settle", lambda: 0)
    t0 = time.monotonic()
    spent = status.get(name, {}).get("seconds", 0.0)
    try:
        with peer:
            status[name] = {"status": "ok", "port": peer.port}
            log(f"[{name}] listening on {peer.host}:{peer.port}; warming up")
            run_load(LoadConfig(host=peer.host, port=peer.port, sessions=10, messages=100,
                                size=10 * KB, time_limit=10))
            settle()
            for size, sessions, reuse in cells:
                key = cell_key(size, sessions, reuse)
                if not port_open(peer.host, peer.port, 2.0):
                    raise BenchError(f"{name} stopped answering on {peer.host}:{peer.port} before {key}")
                r = _run_cell(peer, size, sessions, reuse, budget(size, opts.max_messages),
                              opts.max_seconds, settle)
                results.setdefault(key, {})[name] = r
                log(f"[{name}] {key}: {_brief(r)}")
            if hasattr(peer, "delivery"):
                status[name]["delivery_to_sink"] = peer.delivery
                status[name]["delivered_to_sink"] = peer.delivered()
    except BenchError as exc:
        status[name] = {"status": "failed", "error": str(exc)}
        log(f"[{name}] NOT MEASURED: {exc}")
    except Exception as exc:  # a harness bug: keep the other servers' results
        import traceback
        status[name] = {"status": "failed", "error": f"harness error: {exc!r}"}
        log(f"[{name}] harness error (server stopped):\n{traceback.format_exc()}")
    status[name]["seconds"] = round(spent + time.monotonic() - t0, 1)


MEDIAN_FIELDS = {"smtp_source": ("msgs_per_s", "seconds", "messages_ok"),
                 "loadgen": ("msgs_per_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms", "ok")}


def combine_rounds(runs: list[dict]) -> dict:
    """Several rounds of one cell/server: medians of the figures, failures summed."""
    if len(runs) == 1:
        return runs[0]
    out = copy.deepcopy(runs[0])
    for tool, fields in MEDIAN_FIELDS.items():
        vals = [r.get(tool) or {} for r in runs]
        if tool not in out:
            continue
        for f in fields:
            xs = [v[f] for v in vals if v.get(f) is not None and not v.get("error")]
            out[tool][f] = statistics.median(xs) if xs else None
        out[tool]["rounds"] = [{f: v.get(f) for f in fields} | ({"error": v["error"]} if v.get("error") else {})
                               for v in vals]
        if tool == "loadgen":
            total: dict = {}
            for v in vals:
                for k, n in (v.get("failures") or {}).items():
                    total[k] = total.get(k, 0) + n
            out[tool]["failures"] = total
    return out


# ------------------------------------------------------------------ ratios & report

def _get(results: dict, key: str, server: str, tool: str, field: str):
    v = results.get(key, {}).get(server, {}).get(tool, {})
    if tool == "smtp_source" and (v.get("error") or not v.get("messages_ok")):
        return None
    if tool == "loadgen" and not v.get("ok"):
        return None
    return v.get(field)


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def compute_ratios(results: dict) -> dict:
    ratios = {}
    for key in results:
        r = {}
        for mine, other in RATIO_PAIRS:
            def ratio(tool: str, field: str) -> float | None:
                return _ratio(_get(results, key, mine, tool, field),
                              _get(results, key, other, tool, field))
            r[f"{mine}/{other}"] = {
                "msgs_per_s_smtp_source": ratio("smtp_source", "msgs_per_s"),
                "msgs_per_s_loadgen": ratio("loadgen", "msgs_per_s"),
                "p50_loadgen": ratio("loadgen", "p50_ms"),
                "p99_loadgen": ratio("loadgen", "p99_ms"),
            }
        ratios[key] = r
    return ratios


def geomean(values) -> float | None:
    vals = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _f(v, fmt="{:.0f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def render_markdown(doc: dict) -> str:
    results = doc["results"]
    order = ([] if doc["options"].get("e2e_only") or doc["options"].get("imap_only") else
             [s for s in doc["options"]["servers"]] + ([CEILING] if doc["options"]["ceiling"] else []))
    L = []
    L.append(f"# relay benchmark {doc['started']}")
    h = doc["host"]
    L.append("")
    L.append(f"Host: {h['cpus']} CPUs, {h['kernel']}, Python {h['python']}, Postfix {h['postfix']}, "
             f"aiosmtpd {h['aiosmtpd']}, relay rev {h['git_rev']}. "
             + (f"Per measurement: at most {doc['options']['max_messages']} messages "
                f"({budget(100 * KB, doc['options']['max_messages'])} at 100 KB) or "
                f"{doc['options']['max_seconds']:.0f} s" if results else
                "End to end only" if doc.get("e2e") and not doc.get("imap") else
                "IMAP only" if doc.get("imap") and not doc.get("e2e") else "No acceptance matrix")
             + (f"; medians of {doc['options']['repeat']} interleaved rounds"
                if doc["options"].get("repeat", 1) > 1 else "")
             + f". Wall time {doc['seconds']:.0f} s.")
    L.append("")
    if doc["options"].get("postfix_extra_main_cf"):
        L.append(f"Postfix main.cf overrides (not defaults!): {doc['options']['postfix_extra_main_cf']}")
        L.append("")
    if results:
        _acceptance_markdown(doc, order, L)
    if doc.get("e2e"):
        L += e2e.render_markdown(doc["e2e"])
    if doc.get("imap"):
        L += imap_scenario.render_markdown(doc["imap"])
    return "\n".join(L)


def _acceptance_markdown(doc: dict, order: list[str], L: list[str]) -> None:
    results, ratios, status = doc["results"], doc["ratios"], doc["servers"]
    L.append("Every 250 counted is durable: Postfix, the relay and the aiosmtpd handler fsync "
             "before replying 250. The ceiling is smtp-sink (no disk).")
    L.append("")
    rst = status.get("relay", {})
    if rst.get("status") == "ok":
        if rst.get("delivered_to_sink"):
            L.append(f"relay: relayed to an smtp-sink via [delivery] smarthost, like Postfix "
                     f"({rst['delivered_to_sink']} messages delivered during the run).")
        else:
            L.append("relay: delivered nothing during the run (" +
                     ("[delivery] smarthost set to an smtp-sink" if rst.get("delivery_to_sink")
                      else "no [delivery] support") +
                     "): it only queued, while Postfix also delivered.")
        L.append("")
    L.append("After each measurement every server must account for each 250 counted (delivered "
             "to its sink, still queued, or stored); shortfalls are listed as WARNINGs.")
    L.append("")
    warnings = [(key, name, tool, per[name][tool]["accounting_error"])
                for key, per in results.items() for name in per for tool in ("smtp_source", "loadgen")
                if (per[name].get(tool) or {}).get("accounting_error")]
    for key, name, tool, err in warnings:
        L.append(f"**WARNING** {name} {key} [{tool}]: {err}")
    if warnings:
        L.append("")
    for name in order:
        st = status.get(name, {})
        if st.get("status") != "ok":
            L.append(f"**{name}: not measured** — {st.get('error', 'not run').splitlines()[0]}")
            L.append("")
    L.append("## Per server")
    L.append("")
    L.append("Throughput from smtp-source (no pipelining) and from loadgen (pipelined when "
             "advertised); latency = loadgen, MAIL sent to 250 after the data. "
             "'% ceil' = smtp-source msg/s as a share of smtp-source -> smtp-sink.")
    L.append("")
    L.append("| size | sessions | reuse | server | msg/s [smtp-source] | % ceil | msg/s [loadgen] | "
             "p50 ms [loadgen] | p99 ms [loadgen] | not 250 [loadgen] |")
    L.append("|---:|---:|:--:|---|---:|---:|---:|---:|---:|---|")
    for key, per in results.items():
        size, sess, reuse = key.split("/")
        ceil = _get(results, key, CEILING, "smtp_source", "msgs_per_s")
        for name in order:
            if name not in per:
                continue
            src = per[name].get("smtp_source", {})
            g = per[name].get("loadgen", {})
            sv = _get(results, key, name, "smtp_source", "msgs_per_s")
            src_txt = _f(sv) if not src.get("error") else ("err" if sv is None else _f(sv) + " (err)")
            pct = _f(_ratio(sv, ceil), "{:.0%}") if name != CEILING else "—"
            fails = g.get("failures") or {}
            fail_txt = ", ".join(f"{k}×{v}" for k, v in fails.items()) or "0"
            mode = "" if g.get("pipelining_used") else " (no PIPELINING)"
            L.append(f"| {size} | {sess[1:]} | {'yes' if reuse == 'reuse' else 'no'} | {name} | {src_txt} | "
                     f"{pct} | {_f(g.get('msgs_per_s'))}{mode} | {_f(g.get('p50_ms'), '{:.1f}')} | "
                     f"{_f(g.get('p99_ms'), '{:.1f}')} | {fail_txt} |")
    L.append("")
    L.append("## Ratios (relay ÷ peer, same cell, same run)")
    L.append("")
    L.append("Throughput ratio > 1: the relay accepts more messages per second. Latency ratio < 1: "
             "the relay answers faster.")
    L.append("")
    L.append("| size | sessions | reuse | relay/postfix msg/s [smtp-source] | msg/s [loadgen] | p50 [loadgen] | "
             "p99 [loadgen] | relay/aiosmtpd msg/s [smtp-source] | msg/s [loadgen] | p50 [loadgen] | p99 [loadgen] |")
    L.append("|---:|---:|:--:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fmt = "{:.2f}"
    for key, r in ratios.items():
        size, sess, reuse = key.split("/")
        a, b = r["relay/postfix"], r["relay/aiosmtpd_fsync"]
        L.append(f"| {size} | {sess[1:]} | {'yes' if reuse == 'reuse' else 'no'} | "
                 + " | ".join(_f(x[k], fmt) for x in (a, b) for k in
                              ("msgs_per_s_smtp_source", "msgs_per_s_loadgen", "p50_loadgen", "p99_loadgen"))
                 + " |")
    gm = doc["geomean"]
    L.append("| **geomean** | | | "
             + " | ".join(_f(gm[p][k], fmt) for p in ("relay/postfix", "relay/aiosmtpd_fsync") for k in
                          RATIO_FIELDS)
             + " |")
    L.append("")
    like = "relay_queue_only/aiosmtpd_fsync"
    if any(any(v is not None for v in r.get(like, {}).values()) for r in ratios.values()):
        L.append("Like for like with aiosmtpd, which stores and relays nothing: the relay with "
                 "`[delivery] enabled = false` (relay_queue_only: accepts and queues only).")
        L.append("")
        L.append("| size | sessions | reuse | relay_queue_only/aiosmtpd msg/s [smtp-source] | "
                 "msg/s [loadgen] | p50 [loadgen] | p99 [loadgen] |")
        L.append("|---:|---:|:--:|---:|---:|---:|---:|")
        for key, r in ratios.items():
            size, sess, reuse = key.split("/")
            L.append(f"| {size} | {sess[1:]} | {'yes' if reuse == 'reuse' else 'no'} | "
                     + " | ".join(_f(r[like][k], fmt) for k in RATIO_FIELDS) + " |")
        L.append("| **geomean** | | | " + " | ".join(_f(gm[like][k], fmt) for k in RATIO_FIELDS)
                 + " |")
        L.append("")


# ------------------------------------------------------------------ main

def host_info() -> dict:
    def cmd(*args):
        try:
            return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  timeout=10, cwd=REPO).stdout.decode().strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    try:
        from importlib.metadata import version
        aiosmtpd_v = version("aiosmtpd")
    except Exception:
        aiosmtpd_v = "?"
    pf = cmd("/usr/sbin/postconf", "-d", "-h", "mail_version")
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "postfix": pf or "?", "aiosmtpd": aiosmtpd_v,
            "git_rev": cmd("git", "rev-parse", "--short", "HEAD") or "uncommitted"}


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only 10 KB, 50 sessions, reuse on")
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help="comma-separated subset of %(default)s")
    ap.add_argument("--no-ceiling", action="store_true", help="skip smtp-source -> smtp-sink")
    ap.add_argument("--json-only", action="store_true",
                    help="print only the JSON document on stdout and write only the .json file")
    ap.add_argument("--sessions", default="1,10,50")
    ap.add_argument("--sizes", default="1,10,100", help="message sizes in KB")
    ap.add_argument("--reuse", choices=("both", "on", "off"), default="both")
    ap.add_argument("--max-messages", type=int, default=2000,
                    help="per measurement (a quarter of it at >= 100 KB)")
    ap.add_argument("--max-seconds", type=float, default=15.0, help="per measurement")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds over all servers (interleaved); figures are medians over rounds")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for <timestamp>.json/.md")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the peers' temp dirs (debugging)")
    g = ap.add_argument_group("end-to-end scenario (bench/e2e.py)")
    g.add_argument("--no-e2e", action="store_true", help="skip the end-to-end scenario")
    g.add_argument("--e2e-only", action="store_true", help="only the end-to-end scenario")
    g.add_argument("--e2e-servers", default=",".join(e2e.TARGETS),
                   help="comma-separated subset of %(default)s (relay: MX lookup via a loopback "
                        "dnsmasq; relay_smarthost: smarthost; postfix: relayhost)")
    g.add_argument("--e2e-sessions", default="10,50", help="inbound sessions (--quick: 50)")
    g.add_argument("--e2e-sizes", default="10", help="message sizes in KB")
    g.add_argument("--e2e-messages", type=int, default=5000, help="messages per cell")
    g.add_argument("--e2e-seconds", type=float, default=60.0,
                   help="per cell: at most this long sending, then at most this long draining")
    g = ap.add_argument_group("IMAP scenario (bench/imap.py): relay vs a private Dovecot")
    g.add_argument("--no-imap", action="store_true", help="skip the IMAP scenario")
    g.add_argument("--imap-only", action="store_true", help="only the IMAP scenario")
    g.add_argument("--imap-servers", default=",".join(imap_scenario.SERVERS),
                   help="comma-separated subset of %(default)s")
    g.add_argument("--imap-clients", default=None, help="concurrent clients per cell (default 10,50; --quick: 10)")
    g.add_argument("--imap-seconds", type=float, default=None,
                   help="seconds per mix cell (default 15; --quick: 10)")
    g.add_argument("--imap-op-seconds", type=float, default=None,
                   help="seconds per single-operation cell, 0 = none (default 6; --quick: 4)")
    g.add_argument("--imap-max-ops", type=int, default=500_000, help="operations per cell at most")
    g.add_argument("--imap-messages", type=int, default=1500, help="messages in the test Maildir")
    g.add_argument("--imap-idle", type=int, default=None,
                   help="IDLE connections held by the relay, 0 = no IDLE test (default 5000; --quick: 1000)")
    g.add_argument("--imap-idle-dovecot", type=int, default=None,
                   help="IDLE connections for Dovecot (default: as --imap-idle)")
    g.add_argument("--imap-idle-hold", type=float, default=10.0, help="seconds the IDLE connections are held")
    g.add_argument("--imap-idle-ramp", type=float, default=600.0,
                   help="at most this long to set the IDLE connections up")
    ap.add_argument("--postfix-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra main.cf setting for the private Postfix (experiments; default: none, "
                         "e.g. in_flow_delay=0); recorded in the results")
    a = ap.parse_args(argv)
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    a.postfix_extra = {}
    for kv in a.postfix_set:
        k, sep, v = kv.partition("=")
        if not sep or not k.strip():
            ap.error(f"--postfix-set wants KEY=VALUE, not {kv!r}")
        a.postfix_extra[k.strip()] = v.strip()
    bad = [s for s in a.servers if s not in SERVERS]
    if bad:
        ap.error(f"unknown server(s) {bad}; choose from {list(SERVERS)}")
    if a.quick:
        a.sessions, a.sizes, a.reuse = "50", "10", "on"
        a.e2e_sessions, a.e2e_sizes = "50", "10"
    q = a.quick
    a.imap_clients = a.imap_clients or ("10" if q else "10,50")
    a.imap_seconds = a.imap_seconds if a.imap_seconds is not None else (10.0 if q else 15.0)
    a.imap_op_seconds = a.imap_op_seconds if a.imap_op_seconds is not None else (4.0 if q else 6.0)
    a.imap_idle = a.imap_idle if a.imap_idle is not None else (1000 if q else imap_scenario.TARGET_IDLE)
    a.imap_idle_dovecot = a.imap_idle_dovecot if a.imap_idle_dovecot is not None else a.imap_idle
    if a.no_e2e and a.e2e_only:
        ap.error("--no-e2e and --e2e-only exclude each other")
    if a.imap_only and (a.no_imap or a.e2e_only):
        ap.error("--imap-only excludes --no-imap and --e2e-only")
    try:
        a.imap_clients_list = [int(x) for x in a.imap_clients.split(",")]
    except ValueError:
        ap.error("--imap-clients wants numbers, e.g. 10,50")
    if (min(a.imap_clients_list) < 1 or a.imap_seconds <= 0 or a.imap_op_seconds < 0
            or a.imap_idle < 0 or a.imap_idle_dovecot < 0 or a.imap_messages < 100
            or a.imap_idle_hold <= 0 or a.imap_idle_ramp <= 0 or a.imap_max_ops < 1):
        ap.error("--imap-* values must be positive (--imap-messages >= 100)")
    a.imap_servers = [] if (a.no_imap or a.e2e_only) else \
        [s.strip() for s in a.imap_servers.split(",") if s.strip()]
    bad = [s for s in a.imap_servers if s not in imap_scenario.SERVERS]
    if bad:
        ap.error(f"unknown IMAP server(s) {bad}; choose from {list(imap_scenario.SERVERS)}")
    if a.imap_only:
        a.no_e2e = True
    a.e2e_targets = [] if a.no_e2e else [s.strip() for s in a.e2e_servers.split(",") if s.strip()]
    bad = [s for s in a.e2e_targets if s not in e2e.TARGETS]
    if bad:
        ap.error(f"unknown e2e server(s) {bad}; choose from {list(e2e.TARGETS)}")
    a.e2e_drain_seconds = a.e2e_seconds
    a.e2e_sessions_list = [int(x) for x in a.e2e_sessions.split(",")]
    a.e2e_sizes_list = [int(x) * KB for x in a.e2e_sizes.split(",")]
    if a.e2e_messages < 1 or a.e2e_seconds <= 0 or min(a.e2e_sessions_list) < 1:
        ap.error("--e2e-messages, --e2e-seconds and --e2e-sessions must be positive")
    a.sessions_list = [int(x) for x in a.sessions.split(",")]
    a.sizes_list = [int(x) * KB for x in a.sizes.split(",")]
    a.reuse_list = {"both": [True, False], "on": [True], "off": [False]}[a.reuse]
    if a.max_messages < 1 or a.max_seconds <= 0 or min(a.sessions_list) < 1 or a.repeat < 1:
        ap.error("--max-messages, --max-seconds, --sessions and --repeat must be positive")
    return a


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    opts = parse_args(argv)
    # SIGTERM tears down like Ctrl-C (peers are context managers).
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with SIGINT ignored
    cells = [] if opts.e2e_only or opts.imap_only else [
        (size, s, reuse) for size in opts.sizes_list for s in opts.sessions_list for reuse in opts.reuse_list]
    # the IMAP relay target follows --servers, like the end-to-end targets
    imap_servers = [s for s in opts.imap_servers if s != "relay" or "relay" in opts.servers]
    try:
        acquire_run_lock()
        reap_stale(log)       # leftovers of a run that was killed (-9) before its teardown
        if cells or opts.e2e_targets:
            ensure_postfix(log)   # smtp-source/smtp-sink are needed whatever the server set
    except BenchError as exc:
        log(f"bench: {exc}")
        return 2
    e2e_cells = [(size, s, True) for size in opts.e2e_sizes_list for s in opts.e2e_sessions_list]
    # e2e targets follow --servers: relay and relay_smarthost need "relay", postfix "postfix"
    e2e_targets = [t for t in opts.e2e_targets if t.split("_")[0] in opts.servers]
    started = _dt.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    t0 = time.monotonic()
    rounds: list[dict] = []
    e2e_rounds: list[dict] = []
    status: dict = {}
    e2e_status: dict = {}
    imap_doc: dict = {}
    order = [] if opts.e2e_only or opts.imap_only else \
        list(opts.servers) + ([] if opts.no_ceiling else [CEILING])
    if cells:
        log(f"bench: {len(cells)} cell(s) x {order}"
            + (f" x {opts.repeat} rounds" if opts.repeat > 1 else "")
            + f"; up to {opts.max_messages} messages or {opts.max_seconds:.0f}s per measurement")
    if e2e_targets:
        log(f"bench: end to end: {len(e2e_cells)} cell(s) x {e2e_targets}; up to {opts.e2e_messages} "
            f"messages, {opts.e2e_seconds:.0f}s sending + {opts.e2e_drain_seconds:.0f}s draining per cell")
    try:
        for rnd in range(opts.repeat):
            if opts.repeat > 1:
                log(f"bench: round {rnd + 1}/{opts.repeat}")
            rounds.append({cell_key(*c): {} for c in cells})
            for name in order:
                if status.get(name, {}).get("status", "ok") != "ok":
                    continue          # failed in an earlier round: do not retry
                measure_server(name, cells, opts, rounds[-1], status)
            e2e_rounds.append({cell_key(*c): {} for c in e2e_cells})
            for name in e2e_targets:
                if e2e_status.get(name, {}).get("status", "ok") != "ok":
                    continue
                e2e.measure_target(name, e2e_cells, opts, e2e_rounds[-1], e2e_status)
        if imap_servers:
            opts.imap_servers = imap_servers
            log(f"bench: IMAP: {imap_servers}, clients {opts.imap_clients_list}, mix {opts.imap_seconds:.0f}s"
                + (f" + each operation alone {opts.imap_op_seconds:.0f}s" if opts.imap_op_seconds else "")
                + f" per cell; IDLE {opts.imap_idle} (Dovecot {opts.imap_idle_dovecot}) held "
                f"{opts.imap_idle_hold:.0f}s")
            imap_scenario.run_scenario(opts, imap_doc)
    except KeyboardInterrupt:
        log("bench: interrupted; servers stopped; writing partial results")
        status["interrupted"] = {"status": "interrupted"}
    results: dict = {}
    for c in cells:
        key = cell_key(*c)
        results[key] = {}
        for name in order:
            runs = [r[key][name] for r in rounds if name in r.get(key, {})]
            if runs:
                results[key][name] = combine_rounds(runs)
    e2e_results: dict = {}
    for c in e2e_cells if e2e_targets else []:
        key = cell_key(*c)
        e2e_results[key] = {}
        for name in e2e_targets:
            runs = [r[key][name] for r in e2e_rounds if name in r.get(key, {})]
            if runs:
                e2e_results[key][name] = e2e.combine_rounds(runs)
    ratios = compute_ratios(results)
    gm = {f"{a}/{b}": {k: geomean(r[f"{a}/{b}"][k] for r in ratios.values()) for k in RATIO_FIELDS}
          for a, b in RATIO_PAIRS}
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "host": host_info(),
        "options": {"servers": opts.servers, "ceiling": not opts.no_ceiling, "quick": opts.quick,
                    "sessions": opts.sessions_list, "sizes": opts.sizes_list, "reuse": opts.reuse_list,
                    "max_messages": opts.max_messages, "max_seconds": opts.max_seconds,
                    "repeat": opts.repeat, "e2e_only": opts.e2e_only, "imap_only": opts.imap_only,
                    "postfix_extra_main_cf": opts.postfix_extra},
        "servers": status,
        "results": results,
        "ratios": ratios,
        "geomean": gm,
        "e2e": {
            "options": {"targets": e2e_targets, "sizes": opts.e2e_sizes_list,
                        "sessions": opts.e2e_sessions_list, "reuse": [True],
                        "messages": opts.e2e_messages, "send_seconds": opts.e2e_seconds,
                        "drain_seconds": opts.e2e_drain_seconds, "sink_host": e2e.SINK_HOST,
                        "load_generator": "smtp-source", "sink": "smtp-sink -c"},
            "servers": e2e_status,
            "results": e2e_results,
            "ratios": e2e.compute_ratios(e2e_results),
        } if e2e_targets else None,
        "imap": imap_doc or None,
    }
    if imap_doc:
        from bench.peers.dovecot import dovecot_version
        doc["host"]["dovecot"] = dovecot_version()
        imap_doc.setdefault("ratios", imap_scenario.compute_ratios(imap_doc.get("results", {})))
    opts.out.mkdir(parents=True, exist_ok=True)
    jpath = opts.out / f"{stamp}.json"
    jpath.write_text(json.dumps(doc, indent=2) + "\n")
    if opts.json_only:
        print(json.dumps(doc, indent=2))
        log(f"bench: wrote {jpath}")
    else:
        md = render_markdown(doc)
        mpath = opts.out / f"{stamp}.md"
        mpath.write_text(md)
        print(md)
        log(f"bench: wrote {jpath} and {mpath}")
    if "interrupted" in status:
        return 130
    failed = [n for n in order if status.get(n, {}).get("status") != "ok"]
    failed += [f"e2e {n}" for n in e2e_targets if e2e_status.get(n, {}).get("status") != "ok"]
    if imap_doc:
        failed += [f"imap {n}" for n in imap_servers
                   if imap_doc.get("servers", {}).get(n, {}).get("status") != "ok"
                   or imap_doc.get("idle", {}).get(n, {}).get("status", "ok") != "ok"]
    if failed:
        log(f"bench: NOT MEASURED: {', '.join(failed)} (see above); exit status 1")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
