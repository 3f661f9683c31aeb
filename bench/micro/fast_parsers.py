"""Micro-benchmark: compiled vs pure relay._fast, so "why is this compiled" has a number.

Drives only the public API of each twin with realistic bytes (DESIGN.md §8):
DataReader over a dot-stuffed 10 KB and 100 KB message fed in 64 KB chunks,
scan_headers over that message, parse_command over a typical transaction's command
lines, dot_stuff (outbound DATA octets) over the 10 KB and 100 KB messages. Reports MB/s (and calls/s) per implementation and the compiled/pure speed-up.
Never asserts timings.

    .venv/bin/python -m bench.micro.fast_parsers [--json] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from relay._fast import (  # noqa: E402
    cmdline_c,
    cmdline_py,
    data_c,
    data_py,
    headers_c,
    headers_py,
    outbound_c,
    outbound_py,
)

CHUNK = 64 * 1024
IMPLS = {"python": (data_py, cmdline_py, headers_py), "cython": (data_c, cmdline_c, headers_c)}
OUTBOUND = {"python": outbound_py, "cython": outbound_c}

HEADER = (
    b"Received: from mail.example.org (mail.example.org [192.0.2.25])\r\n"
    b"\tby mx.example.net (relay) with ESMTPS id 4VxYz12abc; Mon, 6 May 2024 10:00:00 +0000\r\n"
    b"Received: from [10.0.0.7] (unknown [198.51.100.4])\r\n"
    b"\tby mail.example.org (Postfix) with ESMTPSA id 9F1E2; Mon, 6 May 2024 09:59:59 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=s1;\r\n"
    b"\th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
    b"\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSwganVzdCBwYWRkaW5nIGZvciBhIGJlbmNo\r\n"
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: Bob Example <bob@example.net>\r\n"
    b"Subject: Quarterly figures and the minutes of Tuesday's meeting\r\n"
    b"Date: Mon, 6 May 2024 09:59:58 +0000\r\n"
    b"Message-ID: <20240506095958.4711@mail.example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="=_b1"\r\n'
    b"\r\n"
)
TEXT = (
    b"--=_b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Hi Bob,\r\n\r\n"
    b"please find attached the quarterly figures. The short version is below; the\r\n"
    b"details are in the spreadsheet, and the minutes follow at the end of this mail.\r\n"
    b"...and yes, this line starts with dots, so it is dot-stuffed on the wire.\r\n"
    b".\r\n"
)
B64_LINE = b"UEsDBBQABgAIAAAAIQBi7p1oXgEAAJAEAAATAAgCW0NvbnRlbnRfVHlwZXNdLnhtbCCiBAIooAAC\r\n"


def message(size: int) -> bytes:
    """A realistic unstuffed message of about `size` octets (headers, text, base64)."""
    body = bytearray(HEADER + TEXT)
    body += b"--=_b1\r\nContent-Type: application/octet-stream\r\n"
    body += b"Content-Transfer-Encoding: base64\r\n\r\n"
    while len(body) < size - 12:
        body += B64_LINE
    body += b"--=_b1--\r\n"
    return bytes(body)


def stuff(msg: bytes) -> bytes:
    """The DATA stream for `msg`: dot-stuffed (RFC 5321 §4.5.2) plus the terminator."""
    lines = msg.split(b"\r\n")
    assert lines[-1] == b""
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines[:-1]) + b"\r\n.\r\n"


COMMANDS = [
    b"EHLO client.example.org",
    b"MAIL FROM:<alice@example.org> SIZE=10240 BODY=8BITMIME",
    b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net",
    b"RCPT TO:<carol@example.net>",
    b"DATA",
    b"QUIT",
]


def rate(fn: Callable[[], Any], seconds: float) -> float:
    """Calls of fn per second: best of 5 rounds, each about seconds/5 long."""
    n = 1
    while True:  # calibrate so one round lasts about seconds/5
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt >= seconds / 50 or n >= 1 << 24:
            break
        n *= 4
    per_round = max(1, int(n * (seconds / 5) / max(dt, 1e-9)))
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(per_round):
            fn()
        best = min(best, (time.perf_counter() - t) / per_round)
    return 1.0 / best


def reader_job(module: Any, chunks: list[bytes], expected: bytes) -> Callable[[], None]:
    def job() -> None:
        reader = module.DataReader(10 * 1024 * 1024)
        for chunk in chunks:
            reader.feed(chunk)
        reader.body()

    job()
    check = module.DataReader(10 * 1024 * 1024)
    for chunk in chunks:
        check.feed(chunk)
    assert check.done and check.body() == expected, module.__name__
    return job


def run(seconds: float) -> list[dict]:
    rows = []
    for kb in (10, 100):
        msg = message(kb * 1024)
        stream = stuff(msg)
        chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
        row = {"bench": f"DataReader {kb} KB", "octets": len(stream), "unit": "MB/s"}
        for name, (data, _, _) in IMPLS.items():
            row[name] = rate(reader_job(data, chunks, msg), seconds) * len(stream) / 1e6
        rows.append(row)
    msg = message(10 * 1024)
    row = {"bench": "scan_headers 10 KB", "octets": len(msg), "unit": "calls/s"}
    for name, (_, _, headers) in IMPLS.items():
        row[name] = rate(lambda h=headers: h.scan_headers(msg), seconds)
    rows.append(row)
    octets = sum(len(c) + 2 for c in COMMANDS)
    row = {"bench": f"parse_command x{len(COMMANDS)}", "octets": octets, "unit": "calls/s"}
    for name, (_, cmdline, _) in IMPLS.items():
        parse = cmdline.parse_command
        row[name] = rate(lambda p=parse: [p(c) for c in COMMANDS], seconds) * len(COMMANDS)
    rows.append(row)
    for kb in (10, 100):
        msg = message(kb * 1024)
        row = {"bench": f"dot_stuff {kb} KB", "octets": len(msg), "unit": "MB/s"}
        for name, outbound in OUTBOUND.items():
            assert outbound.dot_stuff(msg) == stuff(msg), outbound.__name__
            row[name] = rate(lambda o=outbound: o.dot_stuff(msg), seconds) * len(msg) / 1e6
        rows.append(row)
    for row in rows:
        row["speedup"] = row["cython"] / row["python"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro.fast_parsers",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    args = ap.parse_args(argv)
    rows = run(args.seconds)
    if args.json:
        print(json.dumps({"chunk": CHUNK, "results": rows}, indent=2))
        return 0
    print(f"relay._fast micro-benchmark (64 KB chunks, best of 5, python {sys.version.split()[0]})\n")
    print(f"| {'benchmark':<20} | {'unit':<7} | {'python':>12} | {'cython':>12} | {'speed-up':>8} |")
    print(f"|{'-' * 22}|{'-' * 9}|{'-' * 14}|{'-' * 14}|{'-' * 10}|")
    for r in rows:
        print(f"| {r['bench']:<20} | {r['unit']:<7} | {r['python']:>12,.1f} | {r['cython']:>12,.1f} "
              f"| {r['speedup']:>7.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
