"""IMAP scenario: the relay's IMAP server vs a private Dovecot, over copies of one Maildir.

    .venv/bin/python -m bench.run --imap-only            # this scenario alone
    .venv/bin/python -m bench.run --imap-only --quick    # 10 clients, shorter cells, 1,000 IDLE

One test Maildir (bench/imap_data.py: 1,500 messages of 2-50 KB, deterministic) is built
once and copied for each server start. Servers run one at a time:

* ``dovecot`` — Debian's dovecot-imapd, a private instance (bench/peers/dovecot.py) on
  127.0.0.1:<free port>, maildir:<copy>, its defaults otherwise (one imap process per
  connection);
* ``relay`` — ``relay serve`` with only an ``[listen] imap`` endpoint, ``[delivery]
  enabled = false`` (bench/peers/relay_imap.py), the copy at
  ``<data_dir>/mail/bench.test/bench/``.

Per server: a *cold* pass (one connection: first SELECT, FETCH 1:* of flags and the three
headers, each SEARCH once — timed, so the cost of indexing a fresh Maildir shows), then for
each client count a *mix* cell (each client loops SELECT / FETCH headers / FETCH body / STORE
/ UID SEARCH, bench/imap_load.py) and, unless ``op_seconds`` is 0, one cell per operation
alone (its own operations/s). Then the server is restarted on a fresh copy for the *IDLE
capacity* test: ``idle`` connections (LOGIN, SELECT INBOX, IDLE) held ``idle_hold`` seconds
while the server's memory is read: the sum of VmRSS and of Pss (smaps_rollup) over its
process tree (relay: supervisor + workers; Dovecot: master + every child), and its CPU use
during the hold.

Results are in the run's JSON under ``"imap"`` and in the Markdown report (render_markdown).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from bench.util import BenchError

USER = "bench@bench.test"
PASSWORD = "bench-password"
SERVERS = ("relay", "dovecot")
TARGET_RATIO = 0.5          # relay ops/s >= 0.5 x Dovecot's
TARGET_IDLE = 5000          # concurrent IDLE connections ...
TARGET_IDLE_MB = 500        # ... in less than this RSS (sum over the relay's processes)


def log(msg: str) -> None:
    import sys
    print(msg, file=sys.stderr, flush=True)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat), root first."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p != root and not Path(f"/proc/{p}").exists():
            continue
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def memory(pids: list[int]) -> dict:
    """Sum of VmRSS (/proc/<pid>/status) and Pss (/proc/<pid>/smaps_rollup) over ``pids``, MB;
    plus the process count and the largest single RSS."""
    rss = pss = 0
    biggest = 0
    n = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        v = int(line.split()[1])
                        rss += v
                        biggest = max(biggest, v)
                        n += 1
                        break
        except (OSError, ValueError):
            continue
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
        except (OSError, ValueError):
            pass
    return {"processes": n, "rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1),
            "largest_rss_mb": round(biggest / 1024, 1), "cpu_seconds": cpu_seconds(pids)}


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of ``pids``: utime + stime of each, plus cutime + cstime (the children each
    has reaped: Dovecot's per-connection imap processes that have exited), seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        except (OSError, ValueError, IndexError):
            pass
    return round(total / tick, 2)


# ------------------------------------------------------------------ running

def make_peer(name: str, maildir: Path, connections: int, keep: bool):
    if name == "relay":
        from bench.peers.relay_imap import RelayImapPeer
        return RelayImapPeer(maildir, USER, PASSWORD, connections=connections, keep=keep)
    if name == "dovecot":
        from bench.peers.dovecot import DovecotPeer
        return DovecotPeer(maildir, USER, PASSWORD, connections=connections, keep=keep)
    raise ValueError(name)


def cold_pass(host: str, port: int) -> dict:
    """One connection on a freshly started server: the first SELECT (indexing), a FETCH of
    every message's flags and three headers, each SEARCH once; seconds per step."""
    import asyncio
    from bench.imap_load import HEADER_FIELDS, SEARCHES, Conn, ImapProtocolError, _exists, _run

    async def go():
        out = {}
        c = await Conn.open(host, port, 300)
        try:
            await c.login(USER, PASSWORD)
            steps = [("select", b"SELECT INBOX"), ("fetch_all_headers", b"FETCH 1:* " + HEADER_FIELDS)]
            steps += [(f"search_{k}", b"UID SEARCH " + crit) for k, crit in SEARCHES]
            for name, cmd in steps:
                t = time.perf_counter()
                _, ut = await c.command(cmd)
                out[name + "_s"] = round(time.perf_counter() - t, 4)
                if name == "select":
                    out["exists"] = _exists(ut)
            await c.command(b"LOGOUT")
        except ImapProtocolError as exc:
            out["error"] = str(exc)
        finally:
            c.close()
        return out
    try:
        return _run(go())
    except Exception as exc:       # connect errors etc.
        return {"error": str(exc)}


def measure_load(name: str, opts, maildir: Path, results: dict, status: dict) -> None:
    """Start ``name``, cold pass, every (clients, op) cell; stop it (always)."""
    from bench.imap_load import ImapLoadConfig, OPS, run_ops
    from bench.util import port_open
    st = status.setdefault(name, {})
    t0 = time.monotonic()
    try:
        with make_peer(name, maildir, max(opts.imap_clients_list) + 50, opts.keep_tmp) as peer:
            st.update(status="ok", port=peer.port)
            if getattr(peer, "check", None):
                st["check"] = peer.check
            log(f"[imap {name}] listening on {peer.host}:{peer.port}; cold pass")
            st["memory_start"] = memory(peer.pids())
            st["cold"] = cold_pass(peer.host, peer.port)
            log(f"[imap {name}] cold: {st['cold']}")
            ops = ["mix"] + (list(OPS) if opts.imap_op_seconds > 0 else [])
            for clients in opts.imap_clients_list:
                for op in ops:
                    key = f"c{clients}/{op}"
                    if not port_open(peer.host, peer.port, 2.0):
                        raise BenchError(f"{name} stopped answering IMAP on {peer.host}:{peer.port} before {key}")
                    secs = opts.imap_seconds if op == "mix" else opts.imap_op_seconds
                    cpu0 = cpu_seconds(peer.pids())
                    r = run_ops(ImapLoadConfig(host=peer.host, port=peer.port, user=USER,
                                               password=PASSWORD, clients=clients, op=op,
                                               time_limit=secs, max_ops=opts.imap_max_ops)).to_dict()
                    r["server_cpu_seconds"] = round(cpu_seconds(peer.pids()) - cpu0, 2)
                    results.setdefault(key, {})[name] = r
                    log(f"[imap {name}] {key}: {brief(r)}")
            st["memory_after_load"] = memory(peer.pids())
            if getattr(peer, "log_tail", None):
                st["log_tail"] = peer.log_tail(8)
    except BenchError as exc:
        st.update(status="failed", error=str(exc))
        log(f"[imap {name}] NOT MEASURED: {exc}")
    except Exception as exc:  # a harness bug: keep the other server's results
        import traceback
        st.update(status="failed", error=f"harness error: {exc!r}")
        log(f"[imap {name}] harness error (server stopped):\n{traceback.format_exc()}")
    st["seconds"] = round(st.get("seconds", 0) + time.monotonic() - t0, 1)


def measure_idle(name: str, n: int, opts, maildir: Path, idle: dict) -> None:
    """A fresh server; ``n`` connections in IDLE, held; memory and CPU during the hold."""
    from bench.imap_load import run_idle
    t0 = time.monotonic()
    out: dict = {"requested": n}
    idle[name] = out
    try:
        with make_peer(name, maildir, n, opts.keep_tmp) as peer:
            out["memory_before"] = memory(peer.pids())
            log(f"[imap {name}] IDLE: opening {n} connections (LOGIN, SELECT INBOX, IDLE), "
                f"at most {opts.imap_idle_ramp:.0f}s, then holding them {opts.imap_idle_hold:.0f}s")
            r = run_idle(peer.host, peer.port, USER, PASSWORD, n, hold=opts.imap_idle_hold,
                         ramp_seconds=opts.imap_idle_ramp, sample=lambda: memory(peer.pids()),
                         sample_times=(0.2, 1.0), progress=lambda m: log(f"[imap {name}] IDLE: {m}"))
            out.update(r.to_dict())
            out["memory_after"] = memory(peer.pids())
            if len(r.samples) >= 2 and r.samples[-1]["at_seconds"] > r.samples[0]["at_seconds"]:
                a, b = r.samples[0], r.samples[-1]
                out["cpu_percent_during_hold"] = round(
                    100 * (b["cpu_seconds"] - a["cpu_seconds"]) / (b["at_seconds"] - a["at_seconds"]), 1)
            if r.samples:
                held = r.samples[-1]
                out["rss_mb"] = held["rss_mb"]
                out["pss_mb"] = held["pss_mb"]
                out["processes"] = held["processes"]
                if r.established:
                    out["rss_kb_per_connection"] = round(
                        (held["rss_mb"] - out["memory_before"]["rss_mb"]) * 1024 / r.established, 1)
                    out["pss_kb_per_connection"] = round(
                        (held["pss_mb"] - out["memory_before"]["pss_mb"]) * 1024 / r.established, 1)
            if r.ramp_seconds and r.established:
                out["setups_per_s"] = round(r.established / r.ramp_seconds, 1)
            out["status"] = "ok"
            log(f"[imap {name}] IDLE: {idle_brief(out)}")
            if getattr(peer, "log_tail", None):
                out["log_tail"] = peer.log_tail(8)
    except BenchError as exc:
        out.update(status="failed", error=str(exc))
        log(f"[imap {name}] IDLE NOT MEASURED: {exc}")
    except Exception as exc:
        import traceback
        out.update(status="failed", error=f"harness error: {exc!r}")
        log(f"[imap {name}] IDLE harness error (server stopped):\n{traceback.format_exc()}")
    out["seconds"] = round(time.monotonic() - t0, 1)


def run_scenario(opts, doc: dict | None = None) -> dict:
    """The whole IMAP scenario; fills and returns ``doc``, the ``"imap"`` part of the run's
    JSON (filled in place, so an interrupted run keeps what was measured)."""
    from bench.imap_data import ensure_maildir
    from bench.peers.dovecot import dovecot_version, ensure_dovecot
    t0 = time.monotonic()
    servers = list(opts.imap_servers)
    doc = {} if doc is None else doc
    doc.update({"options": {"servers": servers, "clients": opts.imap_clients_list,
                             "mix_seconds": opts.imap_seconds, "op_seconds": opts.imap_op_seconds,
                             "max_ops": opts.imap_max_ops, "messages": opts.imap_messages,
                             "idle": opts.imap_idle, "idle_dovecot": opts.imap_idle_dovecot,
                             "idle_hold": opts.imap_idle_hold, "idle_ramp": opts.imap_idle_ramp},
                 "servers": {}, "results": {}, "idle": {}, "ratios": {}, "checks": []})
    if "dovecot" in servers:
        try:
            ensure_dovecot(log)
            doc["dovecot_version"] = dovecot_version()
        except BenchError as exc:
            doc["servers"]["dovecot"] = {"status": "failed", "error": str(exc)}
            log(f"[imap dovecot] NOT MEASURED: {exc}")
            servers.remove("dovecot")
    maildir, info = ensure_maildir(opts.imap_messages, log)
    doc["maildir"] = info
    try:
        for name in servers:
            measure_load(name, opts, maildir, doc["results"], doc["servers"])
        for name in servers:
            n = opts.imap_idle_dovecot if name == "dovecot" else opts.imap_idle
            if n > 0 and doc["servers"].get(name, {}).get("status") == "ok":
                measure_idle(name, n, opts, maildir, doc["idle"])
    finally:
        doc["ratios"] = compute_ratios(doc["results"])
        doc["checks"] = consistency(doc, info)
        doc["seconds"] = round(time.monotonic() - t0, 1)
    return doc


# ------------------------------------------------------------------ figures

def brief(r: dict) -> str:
    if r.get("error"):
        return "error: " + r["error"][:200]
    ops = r.get("ops", {})
    parts = [f"{k} {v['ops_per_s']:.0f}/s p50 {v['p50_ms']} p99 {v['p99_ms']} ms"
             for k, v in ops.items() if v.get("count")]
    s = f"{r['total_ops_per_s']:.0f} ops/s (" + "; ".join(parts) + ")"
    if r.get("failures"):
        s += f" failures {r['failures']} {r['failure_samples'][:2]}"
    if r.get("anomalies"):
        s += f" anomalies {r['anomalies']} {r['anomaly_samples'][:2]}"
    return s


def idle_brief(o: dict) -> str:
    return (f"{o.get('established')}/{o['requested']} idling after {o.get('ramp_seconds')}s, "
            f"{o.get('alive_after_hold')} alive after {o.get('held_seconds')}s, {o.get('done_ok')} DONE ok; "
            f"RSS {o.get('rss_mb')} MB, PSS {o.get('pss_mb')} MB over {o.get('processes')} processes, "
            f"CPU {o.get('cpu_percent_during_hold')} % while held"
            + (f"; failures {o['failures']} {o['failure_samples'][:2]}" if o.get("failures") else ""))


def _ops(results: dict, key: str, name: str, op: str, field: str = "ops_per_s"):
    r = results.get(key, {}).get(name)
    if not r or r.get("error"):
        return None
    if op == "total":
        return r.get("total_ops_per_s") if field == "ops_per_s" else None
    v = r.get("ops", {}).get(op)
    if not v or not v.get("count"):
        return None
    return v.get(field)


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def compute_ratios(results: dict) -> dict:
    """relay ÷ dovecot per cell: ops/s per operation (and total), p50/p99 per operation."""
    from bench.imap_load import OPS
    out = {}
    for key in results:
        op = key.split("/", 1)[1]
        names = ("total",) + OPS if op == "mix" else (op,)
        out[key] = {o: {"ops_per_s": _ratio(_ops(results, key, "relay", o), _ops(results, key, "dovecot", o)),
                        "p50": _ratio(_ops(results, key, "relay", o, "p50_ms"),
                                      _ops(results, key, "dovecot", o, "p50_ms")),
                        "p99": _ratio(_ops(results, key, "relay", o, "p99_ms"),
                                      _ops(results, key, "dovecot", o, "p99_ms"))}
                    for o in names}
    return out


def consistency(doc: dict, info: dict) -> list[str]:
    """Warnings: SEARCH hit counts that differ between servers or from the Maildir's known
    counts, EXISTS not equal to the message count, failures and anomalies."""
    expected = {"from": info.get("from_matches"), "subject": info.get("subject_matches"),
                "unseen": info.get("unseen")}
    warn = []
    for key, per in doc["results"].items():
        for name, r in per.items():
            for k, hits in (r.get("search_counts") or {}).items():
                if len(hits) > 1:
                    warn.append(f"{name} {key}: UID SEARCH {k} gave different hit counts {hits}")
                if expected.get(k) is not None and hits and hits[0] != expected[k]:
                    warn.append(f"{name} {key}: UID SEARCH {k} found {hits[0]}, the Maildir has {expected[k]}")
            if r.get("exists") and r["exists"] != [info.get("count")]:
                warn.append(f"{name} {key}: SELECT INBOX reported EXISTS {r['exists']}, the Maildir has {info.get('count')}")
            if r.get("failures"):
                warn.append(f"{name} {key}: failures {r['failures']}: " + " | ".join(r.get("failure_samples", [])[:3]))
            if r.get("anomalies"):
                warn.append(f"{name} {key}: anomalies {r['anomalies']}: " + " | ".join(r.get("anomaly_samples", [])[:3]))
        since = {n: (r.get("search_counts") or {}).get("since") for n, r in per.items()}
        vals = {tuple(v) for v in since.values() if v}
        if len(vals) > 1:
            warn.append(f"{key}: UID SEARCH SINCE differs between servers: {since}")
    for name, o in doc.get("idle", {}).items():
        if o.get("status") == "ok":
            if o.get("established") != o["requested"]:
                warn.append(f"{name} IDLE: only {o.get('established')} of {o['requested']} connections reached IDLE")
            if o.get("alive_after_hold") != o.get("established"):
                warn.append(f"{name} IDLE: {o.get('established', 0) - o.get('alive_after_hold', 0)} connections "
                            "dropped while held")
            if o.get("done_ok") != o.get("alive_after_hold"):
                warn.append(f"{name} IDLE: DONE answered OK on {o.get('done_ok')} of {o.get('alive_after_hold')}")
            if o.get("failures"):
                warn.append(f"{name} IDLE: failures {o['failures']}: " + " | ".join(o.get("failure_samples", [])[:3]))
    for name, st in doc.get("servers", {}).items():
        if (st.get("cold") or {}).get("error"):
            warn.append(f"{name} cold pass: {st['cold']['error']}")
    return warn


# ------------------------------------------------------------------ report

def _f(v, fmt="{:.0f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def render_markdown(doc: dict) -> list[str]:
    from bench.imap_load import OPS
    o, results, ratios = doc["options"], doc["results"], doc["ratios"]
    info = doc.get("maildir", {})
    L = ["## IMAP (relay vs Dovecot, same Maildir)", ""]
    L.append(f"Maildir: {info.get('count')} messages, {info.get('bytes', 0) / 1e6:.1f} MB "
             f"({info.get('min_size')}-{info.get('max_size')} octets, {info.get('multipart')} multipart, "
             f"{info.get('unseen')} unseen, {info.get('new')} in new/), one copy per server start. "
             f"Dovecot {doc.get('dovecot_version', '?')}: private instance, its defaults (one imap "
             "process per connection, index files in the Maildir). The relay: `[listen] imap` only, "
             "`workers = 0`, `[delivery] enabled = false`. Client: bench/imap_load.py (asyncio, "
             "uvloop, raw IMAP), on the same 2 cores.")
    L.append("")
    L.append(f"*mix*: each client loops SELECT INBOX; FETCH 50 (FLAGS + 3 headers) at a random "
             f"window; FETCH one BODY.PEEK[]; STORE ±FLAGS (\Flagged); UID SEARCH (FROM / SUBJECT / "
             f"UNSEEN / SINCE in turn), {o['mix_seconds']:.0f} s per cell. The other rows: that "
             f"operation alone, every client repeating it ({o['op_seconds']:.0f} s per cell). "
             "Latency: command sent to tagged OK.")
    L.append("")
    for name in o["servers"] + [n for n in doc["servers"] if n not in o["servers"]]:
        st = doc["servers"].get(name, {})
        if st.get("status") != "ok":
            L.append(f"**{name}: not measured** — {st.get('error', 'not run').splitlines()[0]}")
            for line in st.get("error", "").splitlines()[1:6]:
                L.append(f"    {line}")
            L.append("")
    for w in doc.get("checks", []):
        L.append(f"**WARNING** imap {w}")
    if doc.get("checks"):
        L.append("")
    if results:
        L.append("| clients | operation | relay ops/s | p50 ms | p99 ms | dovecot ops/s | p50 ms | p99 ms | "
                 "relay/dovecot ops/s | p50 | p99 |")
        L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, per in results.items():
            clients, op = key.split("/", 1)
            rows = [("total", "mix: all")] + [(x, f"mix: {x}") for x in OPS] if op == "mix" else [(op, f"**{op}** alone")]
            for sub, label in rows:
                rr = ratios.get(key, {}).get(sub, {})
                cells = []
                for name in ("relay", "dovecot"):
                    cells += [_f(_ops(results, key, name, sub)),
                              _f(_ops(results, key, name, sub, "p50_ms"), "{:.2f}"),
                              _f(_ops(results, key, name, sub, "p99_ms"), "{:.1f}")]
                L.append(f"| {clients[1:]} | {label} | " + " | ".join(cells) + " | "
                         f"{_f(rr.get('ops_per_s'), '{:.2f}')} | {_f(rr.get('p50'), '{:.2f}')} | "
                         f"{_f(rr.get('p99'), '{:.2f}')} |")
        L.append("")
        cold = {n: st.get("cold") for n, st in doc["servers"].items() if st.get("cold")}
        if cold:
            L.append("Cold pass (fresh server, one connection; seconds): " + "; ".join(
                f"{n}: first SELECT {c.get('select_s')}, FETCH 1:* headers {c.get('fetch_all_headers_s')}, "
                f"SEARCH FROM {c.get('search_from_s')} / SUBJECT {c.get('search_subject_s')} / "
                f"UNSEEN {c.get('search_unseen_s')} / SINCE {c.get('search_since_s')}"
                for n, c in cold.items()) + ".")
            L.append("")
        mem = {n: st.get("memory_after_load") for n, st in doc["servers"].items() if st.get("memory_after_load")}
        if mem:
            L.append("Server memory after the load cells: " + "; ".join(
                f"{n}: RSS {m['rss_mb']} MB, PSS {m['pss_mb']} MB ({m['processes']} processes)"
                for n, m in mem.items()) + ".")
            L.append("")
    if doc.get("idle"):
        L.append(f"IDLE capacity (fresh server each): connections LOGIN, SELECT INBOX, IDLE (at most "
                 f"64 being set up at once, sources spread over 127.0.1.1-16), held "
                 f"{o['idle_hold']:.0f} s; memory = sum over the server's processes at the end of the hold "
                 "(RSS counts pages shared between processes once per process; PSS shares them out).")
        L.append("")
        L.append("| server | connections | idling | set-up s | alive after hold | DONE ok | RSS MB | PSS MB | "
                 "processes | PSS KB/conn | CPU % while held | before: RSS MB |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, x in doc["idle"].items():
            if x.get("status") != "ok":
                L.append(f"| {name} | {x['requested']} | not measured: {x.get('error', '?').splitlines()[0][:120]} "
                         "| | | | | | | | | |")
                continue
            L.append(f"| {name} | {x['requested']} | {x.get('established')} | {_f(x.get('ramp_seconds'), '{:.1f}')} | "
                     f"{x.get('alive_after_hold')} | {x.get('done_ok')} | {_f(x.get('rss_mb'))} | "
                     f"{_f(x.get('pss_mb'))} | {x.get('processes')} | {_f(x.get('pss_kb_per_connection'), '{:.1f}')} | "
                     f"{_f(x.get('cpu_percent_during_hold'))} | {_f((x.get('memory_before') or {}).get('rss_mb'))} |")
        L.append("")
    L += targets(doc)
    return L


def targets(doc: dict) -> list[str]:
    L = []
    mix = [(k, r["total"]["ops_per_s"]) for k, r in doc["ratios"].items() if k.endswith("/mix")]
    alone = [(k, r[k.split("/", 1)[1]]["ops_per_s"]) for k, r in doc["ratios"].items()
             if not k.endswith("/mix")]
    x2 = lambda v: _f(v, "{:.2f}x")     # noqa: E731
    if mix:
        txt = ", ".join(f"{k.split('/')[0][1:]} clients {x2(v)}" for k, v in mix)
        if any(v is None for _, v in mix):
            verdict = "n/a (a server was not measured)"
        else:
            verdict = "**met**" if all(v >= TARGET_RATIO for _, v in mix) else "**not met**"
        L.append(f"Target (relay IMAP ops/s >= {TARGET_RATIO}x Dovecot's): mix {txt} — {verdict}.")
        known = [(k, v) for k, v in alone if v is not None]
        if known:
            worst = min(known, key=lambda kv: kv[1])
            L.append(f"Per operation alone, lowest ratio: {worst[0]} {x2(worst[1])}; all: "
                     + ", ".join(f"{k} {x2(v)}" for k, v in alone) + ".")
        L.append("")
    x = doc.get("idle", {}).get("relay")
    if x:
        if x.get("status") != "ok":
            L.append(f"Target ({TARGET_IDLE} IDLE connections held in < {TARGET_IDLE_MB} MB RSS): "
                     "relay not measured.")
        else:
            held = x.get("alive_after_hold") or 0
            rss = x.get("rss_mb")
            ok = held >= TARGET_IDLE and rss is not None and rss < TARGET_IDLE_MB
            verdict = ("**met**" if ok else "**not met**") if x["requested"] >= TARGET_IDLE else \
                f"not evaluated (only {x['requested']} requested)"
            L.append(f"Target ({TARGET_IDLE} concurrent IDLE connections held in < {TARGET_IDLE_MB} MB RSS): "
                     f"relay held {held} in {_f(rss)} MB RSS (PSS {_f(x.get('pss_mb'))} MB) — {verdict}.")
        L.append("")
    return L
