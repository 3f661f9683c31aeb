"""Differential hypothesis tests: the twins agree on everything observable (DESIGN.md §5.4).

Inputs come from alphabets biased toward trouble (line ends of every kind, dots,
terminator look-alikes, NUL, 8-bit, long runs, verbs, keywords, path punctuation).
For DataReader the two twins are compared feed by feed under the same chunking; each
must agree with itself across chunkings; and both must agree with a third, declarative
oracle written from the RFC rules with bytes.find/split instead of a state machine.
Crash-freedom: only spec's exceptions may escape. Profiles: see conftest.py.
"""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from relay._fast import spec

from . import (
    CMDLINE_IMPLS,
    DATA_IMPLS,
    HEADERS_IMPLS,
    OUTBOUND_IMPLS,
    command_result,
    drive_reader,
    final,
    split_at,
)

# -- DataReader ---------------------------------------------------------------------

DATA_TOKENS = st.sampled_from(
    [b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"\r\n.\n",
     b"\n.\r\n", b".\r\n", b"\r\n..", b"\x00", b"\xff", b"\x80\xc3\xa9", b"a", b"Subject: x",
     b" ", b"\t", b"QUIT\r\n"]
)
LONG_RUN = st.builds(lambda c, n: c * n, st.sampled_from([b"x", b".", b"\r", b"\n", b"\r\n"]),
                     st.integers(1, 1500))
DATA_PIECE = st.one_of(DATA_TOKENS, DATA_TOKENS, DATA_TOKENS, st.binary(max_size=8), LONG_RUN)
STREAMS = st.lists(DATA_PIECE, max_size=60).map(b"".join)
MAX_SIZE = st.one_of(st.integers(0, 64), st.just(1_000_000))
MAX_LINE = st.one_of(st.integers(1, 40), st.just(spec.MAX_TEXT_LINE))


@st.composite
def chunked(draw: st.DrawFn, streams: st.SearchStrategy[bytes] = STREAMS) -> tuple[bytes, list[bytes]]:
    data = draw(streams)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return data, split_at(data, cuts)


def oracle(stream: bytes, max_size: int, max_line: int) -> tuple:
    """RFC 5321 §4.1.1.4/§4.5.2 restated with find/split (see data_py.py's docstring)."""
    if stream.startswith(b".\r\n"):
        consumed, content, done = 3, b"", True
    elif (k := stream.find(b"\r\n.\r\n")) >= 0:
        consumed, content, done = k + 5, stream[: k + 2], True
    else:
        consumed, content, done = len(stream), stream, False
    lines = content.split(b"\r\n")  # complete lines, then the partial last one
    *complete, partial = lines
    if partial in (b".", b".\r"):  # may still become the terminator: held back
        kept = complete + [b""]
    else:
        kept = lines
    body = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in kept)
    lengths = [len(line) + 2 for line in complete] + [3 if done else len(partial)]
    flags = 0
    seen = stream[:consumed]
    if re.search(rb"(?<!\r)\n", seen):
        flags |= spec.FLAG_BARE_LF
    if re.search(rb"\r(?=[^\n])", seen):  # a final CR is still pending
        flags |= spec.FLAG_BARE_CR
    if max(lengths) > max_line:
        flags |= spec.FLAG_LONG_LINE
    if len(body) > max_size:
        flags |= spec.FLAG_TOO_BIG
    if b"\x00" in seen:
        flags |= spec.FLAG_NUL
    return consumed, done, len(body), flags, b"" if flags & spec.FLAG_TOO_BIG else body


@given(chunked(), MAX_SIZE, MAX_LINE)
@example((b"\r\n.\r", [b"\r\n.", b"\r"]), 10, 1000)
@example((b".\r.\r\n.\r\n", [b".", b"\r", b".\r\n.\r", b"\n"]), 10, 1000)
@example((b"a\r", [b"a\r", b""]), 0, 1)
def test_data_twins_agree(case: tuple[bytes, list[bytes]], max_size: int, max_line: int) -> None:
    data, chunks = case
    py, c = (drive_reader(m, chunks, max_size, max_line) for _, m in DATA_IMPLS)
    assert py["trace"] == c["trace"]
    whole = drive_reader(DATA_IMPLS[1][1], [data], max_size, max_line)
    assert final(py) == final(whole)
    assert final(whole) == oracle(data, max_size, max_line)


@given(chunked(), chunked(), MAX_SIZE, MAX_LINE)
def test_data_self_consistent_with_trailing(
    first: tuple[bytes, list[bytes]], second: tuple[bytes, list[bytes]], max_size: int, max_line: int
) -> None:
    """Two streams back to back: whatever the reader does not consume is the caller's."""
    stream = first[0] + b"\r\n.\r\n" + second[0]
    for _, module in DATA_IMPLS:
        results = {
            final(drive_reader(module, chunks, max_size, max_line))
            for chunks in ([stream], first[1] + [b"\r\n.\r\n"] + second[1],
                           [stream[i : i + 1] for i in range(len(stream))])
        }
        assert len(results) == 1
        (got,) = results
        assert got == oracle(stream, max_size, max_line)
        assert got[1]  # done: the inserted CRLF.CRLF (or an earlier one) ends it


# -- parse_command ------------------------------------------------------------------

CMD_TOKENS = st.sampled_from(
    [b"MAIL", b"mail", b"RCPT", b"rcpt", b"HELO", b"EHLO", b"DATA", b"QUIT", b"AUTH",
     b"X-", b"FROM:", b"from:", b"TO:", b" FROM:", b" TO:", b"<", b">", b"<>", b'"',
     b"\\", b"=", b" ", b"  ", b"\t", b"@", b"a@b", b"SIZE", b"SIZE=1000", b"BODY=8BITMIME",
     b"SMTPUTF8", b"NOTIFY=NEVER", b"-", b"\x00", b"\x7f", b"\xc3\xa9", b"\xff", b"1", b":"]
)
COMMAND_LINES = st.one_of(
    st.lists(st.one_of(CMD_TOKENS, CMD_TOKENS, st.binary(max_size=4)), max_size=20).map(b"".join),
    st.builds(lambda v, rest: v + rest, st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"mail from: "]),
              st.lists(CMD_TOKENS, max_size=20).map(b"".join)),
    st.binary(max_size=80),
)


@given(COMMAND_LINES)
@example(b'MAIL FROM:<"\\')
@example(b"MAIL FROM:<a> \tX=1")
@example(b"RCPT TO:<a> A= B")
def test_parse_command_twins_agree(line: bytes) -> None:
    # command_result catches CommandSyntaxError only: anything else fails the test.
    results = [command_result(module, line) for _, module in CMDLINE_IMPLS]
    assert results[0] == results[1]
    if results[0][0] == "ok":
        _, verb, path, params, arg, _ = results[0]
        assert verb == verb.upper() and verb.isalnum()
        assert (path is None) == (verb not in (b"MAIL", b"RCPT"))
        assert all(k == k.upper() and b" " not in k for k, _ in params)


# -- scan_headers -------------------------------------------------------------------

HDR_TOKENS = st.sampled_from(
    [b"Received:", b"received :", b"RECEIVED\t:", b"Message-ID:", b"message-id:", b"Date:",
     b"From:", b"FROM:", b"X-Foo:", b"Subject: hi", b"\r\n", b"\r\n\r\n", b"\n", b"\r",
     b" ", b"\t", b":", b"x", b"\x00", b"\xc3\xa9", b"Fro", b"m:", b"Receivedx:"]
)
MESSAGES = st.one_of(
    st.lists(st.one_of(HDR_TOKENS, HDR_TOKENS, st.binary(max_size=4)), max_size=40).map(b"".join),
    st.binary(max_size=200),
)


@given(MESSAGES)
@example(b"From: a\r\n folded")
@example(b"From: a\r")
def test_scan_headers_twins_agree(message: bytes) -> None:
    py, c = (m.scan_headers(message) for _, m in HEADERS_IMPLS)
    assert py == c
    assert 0 <= py.header_end <= len(message)
    assert py.received_count <= message.lower().count(b"received")
    # The header section alone has the same summary.
    for _, module in HEADERS_IMPLS:
        assert module.scan_headers(message[: py.header_end]) == py


# -- crlf_lines / dot_stuff -----------------------------------------------------------

BODY_TOKENS = st.sampled_from(
    [b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\r\n", b"\r\r\n", b"\n\r", b".\r\n", b"a",
     b"\x00", b"\xff", b" "]
)
BODIES = st.one_of(
    st.lists(st.one_of(BODY_TOKENS, BODY_TOKENS, st.binary(max_size=6), LONG_RUN), max_size=50)
    .map(b"".join),
    st.binary(max_size=300),
)


def _reader_body(octets: bytes) -> bytes:
    """What a receiving server's DATA reader makes of the octets we send."""
    reader = DATA_IMPLS[0][1].DataReader(10**9, 10**9)
    assert reader.feed(octets) == len(octets) and reader.done
    assert reader.flags & (spec.FLAG_BARE_CR | spec.FLAG_BARE_LF) == 0
    return reader.body()


@given(BODIES)
@example(b"")
@example(b".")
@example(b"\r\r\n.")
@example(b"a\r")
def test_outbound_twins_agree(body: bytes) -> None:
    (_, py), (_, c) = OUTBOUND_IMPLS
    lines = py.crlf_lines(body)
    assert c.crlf_lines(body) == lines
    assert c.dot_stuff(body) == py.dot_stuff(body)
    # The receiver reads back exactly the CRLF-normalised body: nothing more, nothing less.
    assert _reader_body(py.dot_stuff(body)) == lines
    assert (lines == b"") == (body == b"") and (not lines or lines.endswith(b"\r\n"))
    assert lines.count(b"\r") == lines.count(b"\n") == lines.count(b"\r\n")
