"""End-to-end scenario: load generator -> server -> smtp-sink on 127.0.0.2, until the queue
is empty.

    smtp-source (C, -s sessions, -d) -> relay  --MX lookup (dnsmasq on 127.0.0.1)--> smtp-sink 127.0.0.2
    smtp-source                      -> Postfix --relayhost [127.0.0.2]:port-------> smtp-sink 127.0.0.2
    smtp-source                      -> relay  --smarthost 127.0.0.2:port----------> smtp-sink 127.0.0.2

Targets (each started on its own, warmed up, measured, stopped):

* ``relay`` — ``[delivery] nameservers = ["127.0.0.1:<dnsmasq port>"]``, ``port = <sink
  port>``, no smarthost: every delivery resolves ``sink.test`` through the relay's MX
  resolver (cached per worker for the records' TTL, 300 s) against a private dnsmasq
  (bench/peers/dns.py) that answers ``sink.test MX 10 mx.sink.test``,
  ``mx.sink.test A 127.0.0.2``.
* ``postfix`` — the private Postfix of bench/peers/postfix.py with ``relayhost =
  [127.0.0.2]:<sink port>``. Postfix would look MX records up through the system
  resolver (off loopback here), so it gets a relayhost instead and skips the MX lookup:
  an advantage to Postfix.
* ``relay_smarthost`` — the like-for-like figure: the relay with ``[delivery] smarthost =
  "127.0.0.2:<sink port>"`` (no MX lookup either; nameservers on a dead loopback port).

Per cell: ``smtp-source`` sends ``messages`` (bounded by ``send_seconds``); t0 is just
before it starts. *Acceptance* = accepted ÷ (time until smtp-source has exited, i.e. all
250s received). *End to end* = accepted ÷ (time until the sink has counted every accepted
message AND the server's queue is empty), polled every 20 ms once smtp-source is done
(bounded by ``drain_seconds``; a cell that does not drain in time is marked incomplete
and its rate is delivered ÷ the bound). The sink is Postfix's ``smtp-sink`` with ``-c``
(running counters, flushed after every message; read from its stdout file). The queue:
Postfix's queue directories (file count), the relay's LMDB envelope count through a
read-only environment (``relay queue list --json`` once at the end to confirm).
"""
from __future__ import annotations

import copy
import statistics
import time

from bench.loadgen import LoadConfig, run_load
from bench.peers.postfix import PostfixPeer, run_smtp_source
from bench.peers.relay import RelayPeer
from bench.util import BenchError, port_open

KB = 1024
SINK_HOST = "127.0.0.2"
TARGETS = ("relay", "postfix", "relay_smarthost")
ROUTES = {
    "relay": "MX lookup (loopback dnsmasq) -> 127.0.0.2",
    "postfix": "relayhost [127.0.0.2] (no MX lookup)",
    "relay_smarthost": "smarthost 127.0.0.2 (no MX lookup)",
}
POLL = 0.02
DOUBLE_ATTEMPT = "removed by the operator during delivery"


def log(msg: str) -> None:
    import sys
    print(msg, file=sys.stderr, flush=True)


def cell_key(size: int, sessions: int, reuse: bool) -> str:
    return f"{size // KB}KB/s{sessions}/{'reuse' if reuse else 'noreuse'}"


def make_peer(name: str, opts):
    if name == "relay":
        return RelayPeer(keep=opts.keep_tmp, route="mx", sink_host=SINK_HOST)
    if name == "relay_smarthost":
        return RelayPeer(keep=opts.keep_tmp, route="smarthost", sink_host=SINK_HOST)
    if name == "postfix":
        return PostfixPeer(keep=opts.keep_tmp, extra=opts.postfix_extra, sink_host=SINK_HOST)
    raise ValueError(name)


def wait_drained(peer, target: int, timeout: float) -> tuple[bool, float | None, float | None]:
    """Poll until the sink has counted ``target`` messages and the queue is empty (bounded).

    Returns (done, time the sink reached the target, time the queue was seen empty), the
    times as time.monotonic() values."""
    deadline = time.monotonic() + timeout
    t_sink = t_empty = None
    while True:
        now = time.monotonic()
        if t_sink is None and peer.sink_count() >= target:
            t_sink = now
        if t_sink is not None:
            q = peer.queue_len()
            if q == 0 or q is None:        # None: queue unreadable (flagged by the caller)
                t_empty = now
                return True, t_sink, t_empty
        if now >= deadline:
            return False, t_sink, t_empty
        time.sleep(POLL)


def run_cell(peer, size: int, sessions: int, reuse: bool, messages: int, send_seconds: float,
             drain_seconds: float, name: str = "") -> dict:
    out: dict = {"route": peer.route_text(), "messages_requested": messages}
    q0 = peer.queue_len()
    if q0:
        done, _, _ = wait_drained(peer, 0, 30)       # leftovers of an earlier cell
        q0 = peer.queue_len()
        if q0:
            out["backlog_at_start"] = q0
    if q0 is None:
        out["queue_unreadable"] = True
    s0 = peer.sink_count()
    dq = getattr(peer, "dns_queries", lambda: None)
    d0 = dq()
    log0 = peer.log_size() if hasattr(peer, "log_count") else None
    t0 = time.monotonic()
    try:
        src = run_smtp_source(peer.host, peer.port, sessions=sessions, messages=messages, size=size,
                              reuse=reuse, time_limit=send_seconds)
    except BenchError as exc:
        out["error"] = str(exc)
        return out
    t_done = time.monotonic()
    out["smtp_source"] = src.to_dict()
    if src.error:
        out["error"] = src.error
    n = src.messages_ok
    out["accepted"] = n
    out["accept_seconds"] = t_done - t0
    out["accept_msgs_per_s"] = n / (t_done - t0) if n else 0.0
    ok, t_sink, t_empty = wait_drained(peer, s0 + n + (q0 or 0), drain_seconds)
    delivered = peer.sink_count() - s0
    out["delivered"] = delivered
    out["complete"] = ok
    if t_sink is not None:
        out["sink_seconds"] = t_sink - t0
    if ok and n:
        out["e2e_seconds"] = t_empty - t0
        out["e2e_msgs_per_s"] = n / (t_empty - t0)
        out["drain_after_accept_seconds"] = t_empty - t_done
    else:
        out["e2e_seconds"] = time.monotonic() - t0
        out["e2e_msgs_per_s"] = min(delivered, n) / out["e2e_seconds"] if n else 0.0
    left = peer.queue_count() if hasattr(peer, "queue_count") else peer.queue_len()
    out["left_in_queue"] = left
    if d0 is not None:
        out["dns_queries"] = dq() - d0
    if log0 is not None:
        # the relay's scheduler logs this when a second attempt of an already delivered
        # (and removed) message finishes: the trace of a double delivery
        out["relay_log_removed_during_delivery"] = peer.log_count(DOUBLE_ATTEMPT, log0)
    if not ok:
        out["accounting_error"] = (f"not drained within {drain_seconds:.0f}s after the load: "
                                   f"{delivered} of {n} delivered, {left} still queued")
    elif delivered > n + (q0 or 0):
        out["duplicates"] = delivered - n - (q0 or 0)
        out["accounting_error"] = (f"the sink counted {delivered} messages for {n} accepted: "
                                   f"{out['duplicates']} delivered twice")
        if out.get("relay_log_removed_during_delivery"):
            out["accounting_error"] += (f" (relay log: {out['relay_log_removed_during_delivery']}x "
                                        f"'{DOUBLE_ATTEMPT}')")
    elif left:
        out["accounting_error"] = f"sink has all {n} but {left} still listed in the queue"
    if out.get("accounting_error"):
        log(f"[e2e {name or peer.name}] WARNING: {out['accounting_error']}")
    if not ok:                                       # give it a bounded chance to catch up
        wait_drained(peer, s0 + n, 30)
    return out


def brief(r: dict) -> str:
    if "accept_msgs_per_s" not in r:
        return "error: " + r.get("error", "?")[:100]
    s = (f"{r['accepted']} accepted at {r['accept_msgs_per_s']:.0f} msg/s; end to end "
         f"{r['e2e_msgs_per_s']:.0f} msg/s ({r['e2e_seconds']:.2f}s, {r['delivered']} at the sink")
    if r.get("dns_queries") is not None:
        s += f", {r['dns_queries']} DNS queries"
    s += ")" + ("" if r["complete"] else " INCOMPLETE")
    return s


def measure_target(name: str, cells: list[tuple[int, int, bool]], opts, results: dict,
                   status: dict) -> None:
    """Start one e2e target, warm it up (100 messages, drained; primes the relay's MX cache),
    run every cell, stop it (always)."""
    t0 = time.monotonic()
    spent = status.get(name, {}).get("seconds", 0.0)
    try:
        peer = make_peer(name, opts)
        with peer:
            if not getattr(peer, "delivery", True):
                raise BenchError("the relay has no [delivery] support: nothing to measure end to end")
            status[name] = {"status": "ok", "port": peer.port, "route": peer.route_text()}
            log(f"[e2e {name}] listening on {peer.host}:{peer.port}; {peer.route_text()}; warming up")
            s0 = peer.sink_count()
            w = run_load(LoadConfig(host=peer.host, port=peer.port, sessions=10, messages=100,
                                    size=10 * KB, time_limit=10))
            status[name]["warmup"] = {"ok": w.ok, "failures": w.failures}
            if not wait_drained(peer, s0 + w.ok, 30)[0]:
                raise BenchError(f"warm-up did not drain: {peer.sink_count() - s0} of {w.ok} "
                                 f"delivered to the sink within 30 s (queue {peer.queue_len()})")
            if getattr(peer, "dns_queries", None) and peer.dns_queries() is not None:
                status[name]["dns_queries_warmup"] = peer.dns_queries()
            for size, sessions, reuse in cells:
                key = cell_key(size, sessions, reuse)
                if not port_open(peer.host, peer.port, 2.0):
                    raise BenchError(f"{name} stopped answering on {peer.host}:{peer.port} before {key}")
                r = run_cell(peer, size, sessions, reuse, opts.e2e_messages, opts.e2e_seconds,
                             opts.e2e_drain_seconds, name)
                results.setdefault(key, {})[name] = r
                log(f"[e2e {name}] {key}: {brief(r)}")
    except BenchError as exc:
        status[name] = {"status": "failed", "error": str(exc)}
        log(f"[e2e {name}] NOT MEASURED: {exc}")
    except Exception as exc:  # a harness bug: keep the other targets' results
        import traceback
        status[name] = {"status": "failed", "error": f"harness error: {exc!r}"}
        log(f"[e2e {name}] harness error (server stopped):\n{traceback.format_exc()}")
    status[name]["seconds"] = round(spent + time.monotonic() - t0, 1)


MEDIAN_FIELDS = ("accepted", "accept_seconds", "accept_msgs_per_s", "e2e_seconds", "e2e_msgs_per_s",
                 "drain_after_accept_seconds", "sink_seconds", "delivered", "dns_queries")


def combine_rounds(runs: list[dict]) -> dict:
    if len(runs) == 1:
        return runs[0]
    out = copy.deepcopy(runs[0])
    for f in MEDIAN_FIELDS:
        xs = [r[f] for r in runs if r.get(f) is not None]
        out[f] = statistics.median(xs) if xs else None
    out["complete"] = all(r.get("complete") for r in runs)
    out["duplicates"] = sum(r.get("duplicates", 0) for r in runs)
    out["rounds"] = [{f: r.get(f) for f in MEDIAN_FIELDS + ("complete",)} for r in runs]
    errs = [r["accounting_error"] for r in runs if r.get("accounting_error")]
    if errs:
        out["accounting_error"] = "; ".join(errs)
    return out


def _rate(results: dict, key: str, name: str, field: str):
    r = results.get(key, {}).get(name) or {}
    if not r.get("accepted") or (field == "e2e_msgs_per_s" and not r.get("complete")):
        return None
    return r.get(field)


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def compute_ratios(results: dict) -> dict:
    out = {}
    for key in results:
        out[key] = {f"{a}/postfix": {
            "e2e_msgs_per_s": _ratio(_rate(results, key, a, "e2e_msgs_per_s"),
                                     _rate(results, key, "postfix", "e2e_msgs_per_s")),
            "accept_msgs_per_s": _ratio(_rate(results, key, a, "accept_msgs_per_s"),
                                        _rate(results, key, "postfix", "accept_msgs_per_s"))}
            for a in ("relay", "relay_smarthost")}
    return out


TARGET_CELL = "10KB/s50/reuse"      # the target: e2e relay >= 2 x Postfix here
TARGET_RATIO = 2.0


def _f(v, fmt="{:.0f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def render_markdown(e2e: dict) -> list[str]:
    results, ratios, status, o = e2e["results"], e2e["ratios"], e2e["servers"], e2e["options"]
    L = ["## End to end (load generator -> server -> smtp-sink on 127.0.0.2, until the queue is empty)", ""]
    L.append(f"smtp-source (C, no pipelining) sends up to {o['messages']} messages per cell "
             f"(at most {o['send_seconds']:.0f} s of sending, then at most {o['drain_seconds']:.0f} s "
             "to drain). *accept* = accepted ÷ time until smtp-source had every 250; *end to end* "
             "= accepted ÷ time until the sink (Postfix's smtp-sink, counted with `-c`) had every "
             "message AND the server's queue was empty (polled every 20 ms). Each server got a "
             "100-message warm-up first (which also fills the relay's MX cache).")
    L.append("")
    for name in o["targets"]:
        st = status.get(name, {})
        if st.get("status") == "ok":
            dq = (f" ({st['dns_queries_warmup']} DNS queries during start-up and warm-up)"
                  if st.get("dns_queries_warmup") is not None else "")
            L.append(f"* `{name}`: {st.get('route', ROUTES.get(name, ''))}{dq}")
        else:
            L.append(f"* **`{name}`: not measured** — {st.get('error', 'not run').splitlines()[0]}")
    L.append("")
    L.append("Postfix resolves through the system resolver (off loopback here), so it relays via "
             "`relayhost = [127.0.0.2]:port` and **skips the MX lookup** — an advantage to Postfix; "
             "`relay` does a real MX lookup (cached for the records' 300 s TTL), `relay_smarthost` "
             "is the like-for-like figure.")
    L.append("")
    warnings = [(k, n, r["accounting_error"]) for k, per in results.items() for n, r in per.items()
                if r.get("accounting_error")]
    for k, n, err in warnings:
        L.append(f"**WARNING** e2e {n} {k}: {err}")
    if warnings:
        L.append("")
    L.append("| size | sessions | reuse | server | accepted | msg/s accept [smtp-source] | "
             "msg/s end-to-end | e2e s | drain after last 250 s | delivered | left queued | DNS queries |")
    L.append("|---:|---:|:--:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, per in results.items():
        size, sess, reuse = key.split("/")
        for name in o["targets"]:
            r = per.get(name)
            if r is None:
                continue
            if "accept_msgs_per_s" not in r:
                L.append(f"| {size} | {sess[1:]} | {'yes' if reuse == 'reuse' else 'no'} | {name} | "
                         f"err | | | | | | | |")
                continue
            e2e = _f(r.get("e2e_msgs_per_s")) + ("" if r.get("complete") else " (incomplete)")
            L.append(f"| {size} | {sess[1:]} | {'yes' if reuse == 'reuse' else 'no'} | {name} | "
                     f"{r['accepted']} | {_f(r['accept_msgs_per_s'])} | {e2e} | "
                     f"{_f(r.get('e2e_seconds'), '{:.2f}')} | {_f(r.get('drain_after_accept_seconds'), '{:.2f}')} | "
                     f"{r.get('delivered')} | {_f(r.get('left_in_queue'))} | "
                     f"{_f(r.get('dns_queries')) if name == 'relay' else '—'} |")
    L.append("")
    L.append("| size | sessions | reuse | relay/postfix msg/s end-to-end | relay/postfix msg/s accept | "
             "relay_smarthost/postfix end-to-end | relay_smarthost/postfix accept |")
    L.append("|---:|---:|:--:|---:|---:|---:|---:|")
    for key, r in ratios.items():
        size, sess, reuse = key.split("/")
        a, b = r["relay/postfix"], r["relay_smarthost/postfix"]
        L.append(f"| {size} | {sess[1:]} | {'yes' if reuse == 'reuse' else 'no'} | "
                 f"{_f(a['e2e_msgs_per_s'], '{:.2f}')} | {_f(a['accept_msgs_per_s'], '{:.2f}')} | "
                 f"{_f(b['e2e_msgs_per_s'], '{:.2f}')} | {_f(b['accept_msgs_per_s'], '{:.2f}')} |")
    L.append("")
    t = ratios.get(TARGET_CELL, {}).get("relay/postfix", {}).get("e2e_msgs_per_s")
    if TARGET_CELL in ratios:
        verdict = ("n/a" if t is None else ("**met**" if t >= TARGET_RATIO else "**not met**"))
        L.append(f"Target (10 KB, 50 sessions: relay end-to-end msg/s >= {TARGET_RATIO:.0f}x Postfix's, "
                 f"relay with MX lookup): {_f(t, '{:.2f}')}x — {verdict}.")
        L.append("")
    return L
