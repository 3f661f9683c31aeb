"""The shared corpus through both twins, every chunking (DESIGN.md §5.4 item 1).

DATA corpus format: tests/corpus/data/NAME.in is a raw stream as it would arrive after
the 354 reply; tests/corpus/data/NAME.ref is UTF-8 text, one `key = value` per line,
"#" lines are comments:

    max_size = 1000          DataReader(max_size, max_line)
    max_line = 1000
    consumed = 12            octets of NAME.in consumed (sum over feeds)
    done = True              True / False
    size = 5                 DataReader.size at the end
    flags = BARE_LF|NUL      spec.FLAG_* names without "FLAG_", joined by "|"; "-" for none
    body = b'...'            DataReader.body() as a Python bytes literal

tests/corpus/regressions/ holds shrunk failures in the same format. Each case is fed
whole, byte by byte, at seeded random split points, and (when done) with pipelined
octets appended, which must not be consumed.

Also here: table tests for parse_command and scan_headers with exact expected outputs.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from relay._fast import spec
from relay._fast.spec import Command, FailureKind, HeaderSummary

from . import CMDLINE_IMPLS, DATA_IMPLS, HEADERS_IMPLS, command_result, drive_reader, final, split_at

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
CASES = sorted(CORPUS.glob("data/*.in")) + sorted(CORPUS.glob("regressions/*.in"))
TRAILING = b"MAIL FROM:<next@example.org>\r\nRCPT TO:<x@example.net>\r\n"


def load_ref(path: Path) -> dict:
    ref: dict = {}
    for raw in path.read_text("utf-8").splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        key, _, value = raw.partition("=")
        key, value = key.strip(), value.strip()
        if key == "flags":
            ref[key] = 0
            if value != "-":
                for name in value.split("|"):
                    ref[key] |= getattr(spec, "FLAG_" + name.strip())
        else:
            ref[key] = ast.literal_eval(value)
    return ref


def chunkings(name: str, data: bytes) -> list[tuple[str, list[bytes]]]:
    rng = random.Random(name)  # seeded by case name: reproducible
    ways = [("whole", [data]), ("bytewise", [data[i : i + 1] for i in range(len(data))])]
    for k in range(12):
        cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(1, 6))]
        ways.append((f"random{k}", split_at(data, cuts)))
    return ways


def test_corpus_is_present() -> None:
    assert len(CASES) >= 30
    for case in CASES:
        assert case.with_suffix(".ref").exists(), f"{case.name} has no .ref"


@pytest.mark.parametrize("impl", DATA_IMPLS, ids=lambda i: i[0])
@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_data_corpus(case: Path, impl: tuple) -> None:
    _, module = impl
    data = case.read_bytes()
    ref = load_ref(case.with_suffix(".ref"))
    expected = (ref["consumed"], ref["done"], ref["size"], ref["flags"], ref["body"])
    for how, chunks in chunkings(case.stem, data):
        got = drive_reader(module, chunks, ref["max_size"], ref["max_line"])
        assert final(got) == expected, how
    if ref["done"]:
        # Pipelined commands after the terminator stay with the caller (RFC 2920).
        stream = data + TRAILING
        for how, chunks in chunkings(case.stem + "+", stream):
            got = drive_reader(module, chunks, ref["max_size"], ref["max_line"])
            assert final(got) == expected, how
            assert stream[got["consumed"] :] == data[ref["consumed"] :] + TRAILING


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_data_corpus_twins_agree_per_feed(case: Path) -> None:
    data = case.read_bytes()
    ref = load_ref(case.with_suffix(".ref"))
    for how, chunks in chunkings(case.stem, data):
        py, c = (drive_reader(m, chunks, ref["max_size"], ref["max_line"]) for _, m in DATA_IMPLS)
        assert py["trace"] == c["trace"], how


@pytest.mark.parametrize("impl", DATA_IMPLS, ids=lambda i: i[0])
def test_feed_after_done_and_buffer_types(impl: tuple) -> None:
    _, module = impl
    reader = module.DataReader(100)
    assert reader.feed(bytearray(b"a\r\n")) == 3
    assert reader.feed(memoryview(b"xx.\r\nQUIT")[2:]) == 3
    assert reader.done and reader.body() == b"a\r\n"
    assert reader.feed(b"more") == 0
    assert reader.feed(b"") == 0
    assert (reader.size, reader.flags, reader.body()) == (3, 0, b"a\r\n")
    # The SMTP machine feeds its bytearray and then trims it: no export may remain.
    buf = bytearray(b"x\r\n.\r\nQUIT\r\n")
    reader = module.DataReader(100)
    del buf[: reader.feed(buf)]
    assert buf == b"QUIT\r\n"


@pytest.mark.parametrize("impl", DATA_IMPLS, ids=lambda i: i[0])
def test_body_handed_out_is_never_changed(impl: tuple) -> None:
    _, module = impl
    reader = module.DataReader(100)
    reader.feed(b"ab")
    early = reader.body()
    reader.feed(b"c\r\n.\r\n")
    body = reader.body()
    assert (early, body, reader.body()) == (b"ab", b"abc\r\n", b"abc\r\n")
    reader.__init__(100)  # reuse must not write into a body already handed out
    reader.feed(b"XYZ\r\n.\r\n")
    assert (body, reader.body()) == (b"abc\r\n", b"XYZ\r\n")


@pytest.mark.parametrize("impl", DATA_IMPLS, ids=lambda i: i[0])
def test_reader_rejects(impl: tuple) -> None:
    _, module = impl
    with pytest.raises(ValueError):
        module.DataReader(-1)
    with pytest.raises(ValueError):
        module.DataReader(10, 0)
    with pytest.raises(TypeError):
        module.DataReader(1.5)
    reader = module.DataReader(10)
    with pytest.raises(TypeError):
        reader.feed("text")  # type: ignore[arg-type]
    with pytest.raises(BufferError):
        reader.feed(memoryview(b"abcdef")[::2])
    assert reader.size == 0 and not reader.done


# -- parse_command ------------------------------------------------------------------

OK = Command
COMMANDS: list[tuple[bytes, object]] = [
    (b"MAIL FROM:<alice@example.org>", OK(b"MAIL", b"alice@example.org", (), b"")),
    (b"mail from:<a@b> size=100 BODY=8BITMIME", OK(b"MAIL", b"a@b", ((b"SIZE", b"100"), (b"BODY", b"8BITMIME")), b"")),
    (b"MAIL FROM: <a@b>", OK(b"MAIL", b"a@b", (), b"")),
    (b"MAIL  FROM:  <a@b>   SMTPUTF8  ", OK(b"MAIL", b"a@b", ((b"SMTPUTF8", None),), b"")),
    (b"MAIL FROM:<>", OK(b"MAIL", b"", (), b"")),
    (b"MAIL FROM:<@relay.example:a@b>", OK(b"MAIL", b"@relay.example:a@b", (), b"")),
    (b'MAIL FROM:<"a>b"@c>', OK(b"MAIL", b'"a>b"@c', (), b"")),
    (b'MAIL FROM:<"a\\">"@c>', OK(b"MAIL", b'"a\\">"@c', (), b"")),
    (b"MAIL FROM:<\xc3\xa9@example.org> SMTPUTF8", OK(b"MAIL", b"\xc3\xa9@example.org", ((b"SMTPUTF8", None),), b"")),
    (b"MAIL FROM:<a@b> X-Key=\xc3\xa9", OK(b"MAIL", b"a@b", ((b"X-KEY", b"\xc3\xa9"),), b"")),
    (b"MAIL FROM:<a@b>\t", OK(b"MAIL", b"a@b", (), b"")),
    (b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net",
     OK(b"RCPT", b"bob@example.net", ((b"NOTIFY", b"SUCCESS,FAILURE"), (b"ORCPT", b"rfc822;bob@example.net")), b"")),
    (b"rcpt to:<postmaster>", OK(b"RCPT", b"postmaster", (), b"")),
    (b"EHLO client.example.org", OK(b"EHLO", None, (), b"client.example.org")),
    (b"helo   x y  \t ", OK(b"HELO", None, (), b"x y")),
    (b"DATA", OK(b"DATA", None, (), b"")),
    (b"quit ", OK(b"QUIT", None, (), b"")),
    (b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", OK(b"AUTH", None, (), b"PLAIN AGFsaWNlAHNlY3JldA==")),
    (b"VRFY \xff\xfe", OK(b"VRFY", None, (), b"\xff\xfe")),
    (b"X1234567890ABCDE", OK(b"X1234567890ABCDE", None, (), b"")),
    (b"MAILX FROM:<a>", OK(b"MAILX", None, (), b"FROM:<a>")),
    (b"NOOP a\tb", OK(b"NOOP", None, (), b"a\tb")),
    (b"", FailureKind.EMPTY),
    (b"   \t ", FailureKind.EMPTY),
    (b"MAIL FROM:<a\x00@b>", FailureKind.NUL),
    (b"\x00", FailureKind.NUL),
    (b" MAIL FROM:<a@b>", FailureKind.BAD_VERB),
    (b"1HELO x", FailureKind.BAD_VERB),
    (b"X1234567890ABCDEF", FailureKind.BAD_VERB),
    (b"HE-LO x", FailureKind.BAD_VERB),
    (b"HELO\tx", FailureKind.BAD_VERB),
    (b"\xc3\xa9HLO", FailureKind.BAD_VERB),
    (b"MAIL", FailureKind.BAD_PATH),
    (b"MAIL TO:<a@b>", FailureKind.BAD_PATH),
    (b"MAIL FROM:a@b", FailureKind.BAD_PATH),
    (b"MAIL FROM:<a@b", FailureKind.BAD_PATH),
    (b'MAIL FROM:<"a>', FailureKind.BAD_PATH),
    (b'MAIL FROM:<"a\\">', FailureKind.BAD_PATH),
    (b"MAIL FROM:<a@b>x", FailureKind.BAD_PATH),
    (b"MAIL FROM:<a@b>\tSIZE=1", FailureKind.BAD_PATH),
    (b"MAIL FROM :<a@b>", FailureKind.BAD_PATH),
    (b"RCPT FROM:<a@b>", FailureKind.BAD_PATH),
    (b"MAIL FROM:<a@b> SIZE=", FailureKind.BAD_PARAMETER),
    (b"MAIL FROM:<a@b> =1", FailureKind.BAD_PARAMETER),
    (b"MAIL FROM:<a@b> -X=1", FailureKind.BAD_PARAMETER),
    (b"MAIL FROM:<a@b> SI_ZE=1", FailureKind.BAD_PARAMETER),
    (b"MAIL FROM:<a@b> A=b=c", FailureKind.BAD_PARAMETER),
    (b"MAIL FROM:<a@b> A=b\x7f", FailureKind.BAD_PARAMETER),
    (b"MAIL FROM:<a@b> A=b\tc", FailureKind.BAD_PARAMETER),
    (b"MAIL FROM:<a@b> \xc3\xa9=1", FailureKind.BAD_PARAMETER),
]


@pytest.mark.parametrize("impl", CMDLINE_IMPLS, ids=lambda i: i[0])
@pytest.mark.parametrize("line,expected", COMMANDS, ids=[repr(c[0])[:40] for c in COMMANDS])
def test_parse_command_table(impl: tuple, line: bytes, expected: object) -> None:
    _, module = impl
    got = command_result(module, line)
    if isinstance(expected, FailureKind):
        assert got == ("error", expected)
    else:
        assert module.parse_command(line) == expected


@pytest.mark.parametrize("impl", CMDLINE_IMPLS, ids=lambda i: i[0])
def test_parse_command_rejects_non_bytes(impl: tuple) -> None:
    _, module = impl
    for bad in ("MAIL FROM:<a>", bytearray(b"NOOP"), None):
        with pytest.raises(TypeError):
            module.parse_command(bad)


# -- scan_headers -------------------------------------------------------------------

M, D, F = spec.HDR_MESSAGE_ID, spec.HDR_DATE, spec.HDR_FROM
HEADERS: list[tuple[bytes, HeaderSummary]] = [
    (b"", HeaderSummary(0, 0, 0)),
    (b"\r\n", HeaderSummary(2, 0, 0)),
    (b"\r\nbody\r\n", HeaderSummary(2, 0, 0)),
    (b"From: a\r\n\r\nbody", HeaderSummary(11, 0, F)),
    (b"Received: x\r\nreceived: y\r\n\tfolded\r\nRECEIVED : z\r\n\r\n", HeaderSummary(51, 3, 0)),
    (b"Message-ID: <1@x>\r\nDate: now\r\nFROM:a\r\n\r\n", HeaderSummary(40, 0, M | D | F)),
    (b"message-id\t:<1@x>\r\n\r\n", HeaderSummary(21, 0, M)),
    (b" folded first\r\nFrom: a\r\n\r\n", HeaderSummary(0, 0, 0)),
    (b"From: a\r\nnot a header\r\nDate: x\r\n\r\n", HeaderSummary(9, 0, F)),
    (b"From: a\r\n: no name\r\n\r\n", HeaderSummary(9, 0, F)),
    (b"From: a\r\nDate: x", HeaderSummary(16, 0, F | D)),
    (b"From: a\r\nno colon", HeaderSummary(9, 0, F)),
    (b"From: a\r\n folded, no CRLF", HeaderSummary(25, 0, F)),
    (b"From: a\r\nDate: x\r\n", HeaderSummary(18, 0, F | D)),
    (b"From: a\nDate: b\r\n\r\n", HeaderSummary(19, 0, F)),
    (b"From: a\r\n\n\r\n", HeaderSummary(9, 0, F)),
    (b"From\r: a\r\n\r\n", HeaderSummary(0, 0, 0)),
    (b"From: a\r\r\n\r\n", HeaderSummary(12, 0, F)),
    (b"From: a\r\n\r", HeaderSummary(9, 0, F)),
    (b"X-\xc3\xa9: a\r\n\r\n", HeaderSummary(0, 0, 0)),
    (b"Fromx: a\r\nDat: b\r\nReceivedx: c\r\n\r\n", HeaderSummary(34, 0, 0)),
]


@pytest.mark.parametrize("impl", HEADERS_IMPLS, ids=lambda i: i[0])
@pytest.mark.parametrize("message,expected", HEADERS, ids=[repr(h[0])[:40] for h in HEADERS])
def test_scan_headers_table(impl: tuple, message: bytes, expected: HeaderSummary) -> None:
    _, module = impl
    assert module.scan_headers(message) == expected


@pytest.mark.parametrize("impl", HEADERS_IMPLS, ids=lambda i: i[0])
def test_scan_headers_realistic(impl: tuple) -> None:
    _, module = impl
    body = load_ref(CORPUS / "data" / "realistic.ref")["body"]
    header_end = body.index(b"\r\n\r\n") + 4
    assert module.scan_headers(body) == HeaderSummary(header_end, 1, M | D | F)
