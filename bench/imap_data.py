"""The IMAP scenario's test mailbox: one Maildir, generated once, copied for each server.

    build_maildir(path, count=1500)   # deterministic (fixed seed): same bytes every time

Messages of realistic shape: 2-4 Received lines, Date, From (one of SENDERS), To, some Cc,
Subject (some RFC 2047 encoded), Message-ID, some In-Reply-To/References, List-Id or
X-Mailer on some; bodies of plain text words, sizes spread log-uniformly over 2-50 KB;
about 15 % multipart/alternative (text + HTML) and 8 % multipart/mixed with a base64
attachment. Dates run from 2024-01-01 over ~18 months in message order; each file's mtime
is its Date (Maildir's INTERNALDATE, which SEARCH SINCE uses). Lines end in CRLF, as the
relay's own local delivery writes them.

Layout: the relay's (and Dovecot's, Courier's) Maildir: ``cur/`` ``new/`` ``tmp/``, file
names ``<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>:2,<flags>`` (mda/maildir.py); most
messages are in cur/ (90 % of the older ones \\Seen, some \\Flagged / \\Answered), the
newest 5 % unseen and the newest NEW_COUNT in new/. Plus two empty Maildir++ folders
(.Sent, .Archive) so LIST has something to show.

The SEARCH keys the load uses (SEARCH_FROM, SEARCH_SUBJECT, SEARCH_SINCE) each match a
known share of the messages: ``info.json`` beside cur/ records the counts.

Cached under bench/results/cache/maildir-<version>-<count>/ (git-ignored) and reused.
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import random
import shutil
from pathlib import Path

from bench.util import RESULTS

VERSION = 2
SEED = 20261125
NEW_COUNT = 20
HOST = "bench"

SENDERS = [("Alice Martin", "alice@example.org"), ("Bob Chen", "bob.chen@example.com"),
           ("Carla Rossi", "carla@rossi.example"), ("David Okafor", "d.okafor@example.net"),
           ("Eva Novak", "eva.novak@example.cz"), ("Fatima Zahra", "fz@example.ma"),
           ("GitHub", "notifications@github.example"), ("Hiro Tanaka", "hiro@example.jp"),
           ("Ines Duarte", "ines@example.pt"), ("Jonas Berg", "jonas.berg@example.se"),
           ("Karin Vogel", "karin@vogel.example.de"), ("Lars Eriksen", "lars@example.no"),
           ("Mailing List", "dev-list@lists.example.org"), ("Nadia Haddad", "nadia@example.lb"),
           ("Oscar Lind", "oscar@example.fi"), ("Priya Raman", "priya.raman@example.in"),
           ("Quentin Moreau", "q.moreau@example.fr"), ("Rosa Jimenez", "rosa@example.es"),
           ("Support Desk", "support@vendor.example"), ("Tomasz Nowak", "tomasz@example.pl")]
SUBJECT_WORDS = ["meeting", "report", "invoice", "schedule", "review", "release", "budget",
                 "update", "question", "notes", "draft", "contract", "travel", "build", "deploy",
                 "incident", "roadmap", "feedback", "agenda", "minutes", "proposal", "ticket"]
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there been one all we their has would when if "
         "so what out up more about into them can only other new some could time these two may "
         "first then do any like my now over such our man me even most made after also did many "
         "before must through back years where much your way well down should because each just "
         "those people how too little state good very make world still own see men work long get "
         "here between both life being under never day same another know while last might us great "
         "old year off come since against go came right used take three server mail queue message "
         "delivery relay mailbox folder account index search fetch store flags protocol latency").split()

# the load's SEARCH keys (bench/imap_load.py) and what they should match
SEARCH_FROM = "alice"            # 1 sender of 20
SEARCH_SUBJECT = "invoice"       # 1 subject word of 22 (first word), plus mentions
SEARCH_SINCE = "1-Jan-2025"      # the last third or so


def default_path(count: int) -> Path:
    return RESULTS / "cache" / f"maildir-v{VERSION}-{count}"


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = _words(rng, rng.randint(6, 13))
        line = line[0].upper() + line[1:] + "."
        if rng.random() < 0.1:
            line += "\r\n"          # paragraph break
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def _subject(rng: random.Random, i: int) -> tuple[str, str]:
    """(header value, decoded text)"""
    w = rng.choice(SUBJECT_WORDS)
    s = f"{w.capitalize()}: {_words(rng, rng.randint(2, 6))} #{i}"
    if rng.random() < 0.15:
        s = "Re: " + s
    if rng.random() < 0.07:   # RFC 2047 encoded-word
        s += " — ünïcödé"
        return f"=?UTF-8?B?{base64.b64encode(s.encode()).decode()}?=", s
    return s, s


def _message(rng: random.Random, i: int, date: _dt.datetime, size: int) -> tuple[bytes, dict]:
    name, addr = rng.choice(SENDERS)
    host = addr.split("@")[1]
    datestr = date.strftime("%a, %d %b %Y %H:%M:%S +0000")
    h = []
    h.append(f"Return-Path: <{addr}>")
    h.append("Delivered-To: bench@bench.test")
    for k in range(rng.randint(2, 4)):
        h.append(f"Received: from mx{k}.{host} (mx{k}.{host} [192.0.2.{rng.randint(1, 254)}])\r\n"
                 f"\tby mail{k}.bench.test with ESMTPS id {rng.getrandbits(48):012X}\r\n"
                 f"\tfor <bench@bench.test>; {datestr}")
    h.append(f"Date: {datestr}")
    h.append(f"From: {name} <{addr}>")
    h.append("To: Bench User <bench@bench.test>")
    if rng.random() < 0.3:
        cn, ca = rng.choice(SENDERS)
        h.append(f"Cc: {cn} <{ca}>")
    subject, subject_text = _subject(rng, i)
    h.append(f"Subject: {subject}")
    h.append(f"Message-ID: <{rng.getrandbits(64):016x}.{i}@{host}>")
    if rng.random() < 0.25:
        ref = f"<{rng.getrandbits(64):016x}@{host}>"
        h.append(f"In-Reply-To: {ref}")
        h.append(f"References: {ref}")
    if "list" in addr or rng.random() < 0.1:
        h.append("List-Id: Developers <dev.lists.example.org>")
    if rng.random() < 0.4:
        h.append(f"X-Mailer: {rng.choice(['Thunderbird 115.3', 'Apple Mail (2.3731)', 'Mutt 2.2.9', 'Outlook 16.0'])}")
    h.append("MIME-Version: 1.0")
    head = "\r\n".join(h) + "\r\n"
    room = max(300, size - len(head))
    kind = rng.random()
    if kind < 0.08:                      # multipart/mixed with an attachment
        b = f"=_mixed_{i:05d}"
        att = rng.randbytes(int(room * 0.6 * 3 / 4))
        att64 = base64.encodebytes(att).decode().replace("\n", "\r\n")
        body = (f"Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n"
                f"This is a multi-part message in MIME format.\r\n--{b}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                f"{_text(rng, int(room * 0.35))}--{b}\r\n"
                f"Content-Type: application/pdf; name=\"report-{i}.pdf\"\r\n"
                f"Content-Disposition: attachment; filename=\"report-{i}.pdf\"\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n"
                f"{att64}--{b}--\r\n")
    elif kind < 0.23:                    # multipart/alternative: text + HTML
        b = f"=_alt_{i:05d}"
        text = _text(rng, int(room * 0.45))
        html = "<html><body>\r\n" + "".join(f"<p>{line}</p>\r\n" for line in text.split("\r\n")
                                           if line) + "</body></html>\r\n"
        body = (f"Content-Type: multipart/alternative; boundary=\"{b}\"\r\n\r\n--{b}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                f"{text}--{b}\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n{html}--{b}--\r\n")
    else:
        body = ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                + _text(rng, room))
    return (head + body).encode(), {"from": f"{name} <{addr}>", "subject": subject_text}


def build_maildir(path: Path, count: int = 1500, seed: int = SEED) -> dict:
    """Write the Maildir at ``path`` (replaced if present); returns its info dict."""
    rng = random.Random(seed)
    tmp = path.with_name(path.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp",
                ".Archive/cur", ".Archive/new", ".Archive/tmp"):
        (tmp / sub).mkdir(parents=True)
    start = _dt.datetime(2024, 1, 1, 8, 0, tzinfo=_dt.timezone.utc)
    span = 545 * 86400
    since = _dt.datetime(2025, 1, 1, tzinfo=_dt.timezone.utc)
    info = {"version": VERSION, "seed": seed, "count": count, "bytes": 0, "new": 0, "unseen": 0,
            "flagged": 0, "multipart": 0, "from_matches": 0, "subject_matches": 0,
            "since_matches": 0, "min_size": None, "max_size": 0,
            "search": {"from": SEARCH_FROM, "subject": SEARCH_SUBJECT, "since": SEARCH_SINCE}}
    for i in range(count):
        date = start + _dt.timedelta(seconds=int(span * i / count) + rng.randint(0, 3600))
        size = int(2048 * (25 ** rng.random()))        # log-uniform 2 KB .. 50 KB
        msg, meta = _message(rng, i, date, size)
        ts = int(date.timestamp())
        flags = ""
        newest = i >= count - max(NEW_COUNT, count // 20)
        if not newest:
            letters = set()
            if rng.random() < 0.9:
                letters.add("S")
            if rng.random() < 0.05:
                letters.add("F")
            if rng.random() < 0.1:
                letters.add("R")
            flags = "".join(sorted(letters))
        name = f"{ts}.M{rng.randint(0, 999999)}P{4000 + i}Q{i}.{HOST},S={len(msg)}"
        if i >= count - NEW_COUNT:
            dest = tmp / "new" / name
            info["new"] += 1
        else:
            dest = tmp / "cur" / f"{name}:2,{flags}"
        dest.write_bytes(msg)
        os.utime(dest, (ts, ts))
        info["bytes"] += len(msg)
        info["min_size"] = len(msg) if info["min_size"] is None else min(info["min_size"], len(msg))
        info["max_size"] = max(info["max_size"], len(msg))
        info["unseen"] += "S" not in flags
        info["flagged"] += "F" in flags
        head = msg.split(b"\r\n\r\n", 1)[0].lower()
        info["multipart"] += b"content-type: multipart/" in head
        info["from_matches"] += SEARCH_FROM in meta["from"].lower()
        info["subject_matches"] += SEARCH_SUBJECT in meta["subject"].lower()
        info["since_matches"] += date.date() >= since.date()
    (tmp / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return info


def ensure_maildir(count: int = 1500, log=print) -> tuple[Path, dict]:
    """The cached test Maildir for ``count`` messages, built on first use."""
    path = default_path(count)
    try:
        info = json.loads((path / "info.json").read_text())
        if info.get("version") == VERSION and info.get("count") == count:
            return path, info
    except (OSError, ValueError):
        pass
    log(f"imap: building the test Maildir ({count} messages) in {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, build_maildir(path, count)


def copy_maildir(src: Path, dest: Path) -> None:
    """Copy the Maildir (cur/new/tmp and folders, mtimes kept; info.json left out)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("info.json"))


if __name__ == "__main__":
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    p, inf = ensure_maildir(n)
    print(p)
    print(json.dumps(inf, indent=1))
