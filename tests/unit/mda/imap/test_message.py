"""FETCH data from message octets (RFC 3501 §6.4.5, §7.4.2): ENVELOPE, BODY/BODYSTRUCTURE,
byte-exact BODY[section] slices, robustness on malformed MIME, and the SEARCH text helpers."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.mda.imap.addresses import parse_addresses
from relay.mda.imap.fetch_items import Section
from relay.mda.imap.message import (
    Message,
    bodystructure,
    envelope,
    istring,
    nstring,
    partial,
    section,
)
from relay.mda.imap.mime import decode_transfer, decode_words

# ---- builders -------------------------------------------------------------------------------


def entity(headers: list[bytes], body: bytes) -> bytes:
    """Header fields, the blank line, then the body."""
    return b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def multipart_body(boundary: bytes, parts: list[bytes]) -> bytes:
    """RFC 2046 §5.1.1 body: each part after "--boundary CRLF", the CRLF before each delimiter
    belonging to the delimiter."""
    return (b"This is the preamble.\r\n"
            + b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
            + b"--" + boundary + b"--\r\nThis is the epilogue.\r\n")


def text_lines(octets: int, lines: int) -> bytes:
    """A body of exactly `octets` octets in `lines` CRLF-terminated lines."""
    content = octets - 2 * lines
    base, extra = divmod(content, lines)
    out = b"".join(bytes([65 + i % 26]) * (base + (1 if i < extra else 0)) + b"\r\n"
                   for i in range(lines))
    assert len(out) == octets and out.count(b"\n") == lines
    return out


# ---- IMAP strings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"plain", b'"plain"'),
        (b"", b'""'),
        (b'say "hi" \\o/', b'"say \\"hi\\" \\\\o/"'),
        (b"line\r\nbreak", b"{11}\r\nline\r\nbreak"),
        ("naïve".encode(), b"{6}\r\nna\xc3\xafve"),
        (b"nul\0dropped", b'"nuldropped"'),
    ],
)
def test_istring_quotes_or_uses_a_literal(data: bytes, wire: bytes) -> None:
    assert istring(data) == wire


def test_nstring_nil() -> None:
    assert nstring(None) == b"NIL"
    assert nstring(b"x") == b'"x"'


def test_partial_applies_origin_and_length() -> None:  # RFC 3501 §6.4.5
    assert partial(b"0123456789", 2, 3) == b"234"
    assert partial(b"0123456789", 8, 10) == b"89"
    assert partial(b"0123456789", 20, 5) == b""
    assert partial(b"0123456789", 4, None) == b"456789"


# ---- ENVELOPE -------------------------------------------------------------------------------

RFC3501_SAMPLE = entity([
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)",
    b"From: Terry Gray <gray@cac.washington.edu>",
    b"Subject: IMAP4rev1 WG mtg summary and minutes",
    b"To: imap@cac.washington.edu",
    b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>",
    b"Message-Id: <B27397-0100000@cac.washington.edu>",
    b"MIME-Version: 1.0",
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII",
], text_lines(3028, 92))


def test_envelope_of_the_rfc3501_sample() -> None:  # RFC 3501 §8, FETCH 12
    assert envelope(RFC3501_SAMPLE) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")')


def test_body_of_the_rfc3501_sample() -> None:  # RFC 3501 §8, FETCH 12 BODY
    assert bodystructure(RFC3501_SAMPLE, extensible=False) == \
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'


def test_missing_content_type_is_the_rfc2045_default() -> None:  # RFC 2045 §5.2
    raw = entity([b"Subject: x"], text_lines(3028, 92))
    assert bodystructure(raw, extensible=False) == \
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'


def test_envelope_with_nothing_is_all_nil() -> None:
    assert envelope(b"X-Other: 1\r\n\r\nbody\r\n") == b"(" + b" ".join([b"NIL"] * 10) + b")"


def test_sender_and_reply_to_default_to_from() -> None:  # RFC 3501 §7.4.2
    raw = entity([b"From: a@example.org", b"Sender:", b"Reply-To: r@example.org"], b"")
    env = envelope(raw)
    a = b'((NIL NIL "a" "example.org"))'
    r = b'((NIL NIL "r" "example.org"))'
    assert env == b"(NIL NIL " + a + b" " + a + b" " + r + b" NIL NIL NIL NIL NIL)"


def test_folded_subject_is_unfolded_and_special_characters_escaped() -> None:
    raw = entity([b'Subject: a "quoted"\r\n\tword \\ here', b"In-Reply-To: <x@y>"], b"")
    env = envelope(raw)
    assert env.startswith(b'(NIL "a \\"quoted\\"\tword \\\\ here" NIL')
    assert env.endswith(b' "<x@y>" NIL)')


def test_eight_bit_subject_is_a_literal_and_encoded_words_are_kept() -> None:
    raw = entity(["Subject: Grüße =?UTF-8?Q?caf=C3=A9?=".encode()], b"")
    assert envelope(raw).startswith(b"(NIL {29}\r\nGr\xc3\xbc\xc3\x9fe =?UTF-8?Q?caf=C3=A9?= NIL")


def test_empty_subject_is_an_empty_string() -> None:
    assert envelope(entity([b"Subject:"], b"")).startswith(b'(NIL "" NIL')


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        (b"Terry Gray <gray@cac.washington.edu>", [("Terry Gray", None, "gray",
                                                   "cac.washington.edu")]),
        (b'"Gray, Terry" <gray@cac.washington.edu>', [("Gray, Terry", None, "gray",
                                                       "cac.washington.edu")]),
        (b"gray@cac.washington.edu (Terry Gray)", [("Terry Gray", None, "gray",
                                                    "cac.washington.edu")]),
        (b"<@route1,@route2:user@host>", [(None, "@route1,@route2", "user", "host")]),
        (b"undisclosed-recipients:;", [(None, None, "undisclosed-recipients", None),
                                       (None, None, None, None)]),
        (b"Team: a@x, B <b@y>;, c@z", [(None, None, "Team", None), (None, None, "a", "x"),
                                       ("B", None, "b", "y"), (None, None, None, None),
                                       (None, None, "c", "z")]),
        (b'"john doe"@example.com', [(None, None, '"john doe"', "example.com")]),
        (b"John Q. Public <jqp@example.org>", [("John Q. Public", None, "jqp", "example.org")]),
        (b"=?UTF-8?B?w6k=?= <e@x>", [("=?UTF-8?B?w6k=?=", None, "e", "x")]),
        (b"postmaster", [(None, None, "postmaster", "MISSING_DOMAIN")]),
        (b"<>", [(None, None, "", "")]),
        (b"a@[192.0.2.1]", [(None, None, "a", "[192.0.2.1]")]),
        (b", ,a@b,", [(None, None, "a", "b")]),
        (b"Broken <a@b", [("Broken", None, "a", "b")]),
    ],
)
def test_address_parsing(value: bytes, addresses: list[tuple[str | None, ...]]) -> None:
    assert parse_addresses(value.decode("latin-1")) == addresses


def test_group_in_envelope() -> None:  # RFC 3501 §7.4.2 group syntax
    raw = entity([b"To: undisclosed-recipients:;"], b"")
    assert b' ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) ' in envelope(raw)


def test_empty_address_list_is_nil() -> None:
    assert envelope(entity([b"To: ", b"Cc: ,"], b"")) == b"(" + b" ".join([b"NIL"] * 10) + b")"


# ---- BODYSTRUCTURE --------------------------------------------------------------------------

PART1 = entity([b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII"], text_lines(1152, 23))
PART2 = entity([b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff",
                b"Content-ID: <960723163407.20117h@cac.washington.edu>",
                b"Content-Description: Compiler diff",
                b"Content-Transfer-Encoding: BASE64"], text_lines(4554, 73))
RFC3501_MIXED = entity([b"MIME-Version: 1.0", b'Content-Type: MULTIPART/MIXED; BOUNDARY="x"'],
                       multipart_body(b"x", [PART1, PART2]))


def test_body_of_the_rfc3501_multipart_example() -> None:  # RFC 3501 §7.4.2 BODYSTRUCTURE
    assert bodystructure(RFC3501_MIXED, extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) "MIXED")')


def test_bodystructure_adds_extension_data() -> None:
    assert bodystructure(RFC3501_MIXED) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23 NIL NIL NIL NIL)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73 '
        b'NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "x") NIL NIL NIL)')


def test_single_part_extension_fields() -> None:
    raw = entity([b"Content-Type: application/pdf; name=\"a b.pdf\"",
                  b"Content-Transfer-Encoding: base64",
                  b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==",
                  b'Content-Disposition: attachment; filename="a b.pdf"; size=3 (comment)',
                  b"Content-Language: en, de",
                  b"Content-Location: http://example.org/a.pdf"], b"QUJD\r\n")
    assert bodystructure(raw) == (
        b'("application" "pdf" ("name" "a b.pdf") NIL NIL "base64" 6 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename" "a b.pdf" "size" "3")) '
        b'("en" "de") "http://example.org/a.pdf")')


def test_text_part_without_charset_gets_us_ascii() -> None:  # RFC 2046 §4.1.2
    raw = entity([b"Content-Type: text/html", b"Content-Language: fr"], b"<p>x</p>\r\n")
    assert bodystructure(raw) == \
        b'("text" "html" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1 NIL NIL "fr" NIL)'


def test_message_rfc822_part_has_envelope_body_and_lines() -> None:
    inner = entity([b"Subject: inner", b"From: i@x"], b"inner body\r\n")
    raw = entity([b"Content-Type: multipart/mixed; boundary=b"],
                 multipart_body(b"b", [entity([b"Content-Type: message/rfc822"], inner)]))
    assert bodystructure(raw, extensible=False) == (
        b'(("message" "rfc822" NIL NIL NIL "7BIT" %d ' % len(inner)
        + b'(NIL "inner" ((NIL NIL "i" "x")) ((NIL NIL "i" "x")) ((NIL NIL "i" "x")) '
          b'NIL NIL NIL NIL NIL) '
          b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 12 1) 4) "mixed")')


def test_digest_parts_default_to_message_rfc822() -> None:  # RFC 2046 §5.1.5
    inner = entity([b"Subject: s"], b"b\r\n")
    raw = entity([b"Content-Type: multipart/digest; boundary=d"],
                 multipart_body(b"d", [entity([], inner)]))
    assert bodystructure(raw, extensible=False).startswith(
        b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" %d (NIL "s" ' % len(inner))


def test_encoded_message_rfc822_is_opaque() -> None:
    raw = entity([b"Content-Type: message/rfc822", b"Content-Transfer-Encoding: base64"],
                 b"U3ViamVjdDogeA0KDQpi\r\n")
    assert bodystructure(raw, extensible=False) == \
        b'("message" "rfc822" NIL NIL NIL "base64" 22)'


# ---- malformed MIME falls back, never raises ------------------------------------------------


def test_multipart_without_delimiters_is_one_empty_text_part() -> None:  # like Dovecot
    raw = entity([b"Content-Type: multipart/mixed; boundary=zz"], b"no parts here\r\n")
    assert bodystructure(raw, extensible=False) == \
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0) "mixed")'
    assert section(raw, "1") == b""


def test_multipart_without_boundary_is_text_plain() -> None:
    raw = entity([b"Content-Type: multipart/mixed"], b"text\r\n")
    assert bodystructure(raw, extensible=False) == \
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 6 1)'


def test_unparseable_content_type_is_text_plain() -> None:
    raw = entity([b"Content-Type: ;;garbage"], b"x\r\n")
    assert bodystructure(raw, extensible=False) == \
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 1)'


def test_missing_close_delimiter_ends_the_last_part_at_the_end() -> None:
    raw = entity([b"Content-Type: multipart/mixed; boundary=q"],
                 b"--q\r\n\r\nfirst\r\n--q\r\n\r\nsecond, unterminated\r\n")
    assert section(raw, "1") == b"first"
    assert section(raw, "2") == b"second, unterminated\r\n"
    assert section(raw, "3") is None


def test_boundary_that_prefixes_an_inner_boundary_is_not_confused() -> None:
    inner = entity([b"Content-Type: multipart/mixed; boundary=b12"],
                   b"--b12\r\n\r\ninner\r\n--b12--\r\n")
    raw = entity([b"Content-Type: multipart/mixed; boundary=b1"],
                 b"--b1\r\n" + inner + b"\r\n--b1--\r\n")
    assert section(raw, "1") == b"--b12\r\n\r\ninner\r\n--b12--\r\n"
    assert section(raw, "1.1") == b"inner"
    assert section(raw, "2") is None


def test_delimiter_may_carry_transport_padding() -> None:  # RFC 2046 §5.1.1
    raw = entity([b"Content-Type: multipart/mixed; boundary=p"],
                 b"--p \t\r\n\r\none\r\n--p\t\r\n\r\ntwo\r\n--p-- trailing\r\n")
    assert (section(raw, "1"), section(raw, "2")) == (b"one", b"two")


def test_header_without_blank_line_is_all_header() -> None:
    raw = b"Subject: only a header\r\nFrom: a@b\r\n"
    assert section(raw, "HEADER") == raw
    assert section(raw, "TEXT") == b""
    assert bodystructure(raw, extensible=False) == \
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)'


def test_deep_nesting_is_bounded() -> None:
    raw = b"Content-Type: message/rfc822\r\n\r\n" * 5000 + b"body\r\n"
    assert bodystructure(raw).count(b"rfc822") < 100
    assert section(raw, ".".join(["1"] * 10)) is not None


_MIME_TROUBLE = st.sampled_from([
    b"\r\n", b"\n", b"\r\n\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Type: text/plain; charset=\"x", b"--b\r\n", b"--b--\r\n", b"--b", b"\r\n--b\r\n",
    b"Subject: ", b"From: ", b"To: a:b;,(c\\", b"<@a:", b"\"", b"(", b")", b"=?utf-8?q?=C3?=",
    b"Content-Transfer-Encoding: base64\r\n", b" \t", b"\x00", b"\xff", b":", b"x" * 20,
    b"Content-Disposition: inline; filename*0*=x\r\n", b"Content-Language: ,\r\n",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_MIME_TROUBLE, st.binary(max_size=8)), max_size=40))
def test_malformed_messages_never_raise_and_sections_are_slices(parts: list[bytes]) -> None:
    raw = b"".join(parts)
    msg = Message(raw)
    assert isinstance(msg.envelope(), bytes)
    assert isinstance(msg.bodystructure(), bytes)
    assert isinstance(msg.bodystructure(extensible=False), bytes)
    for spec in ["", "HEADER", "TEXT", "1", "2", "1.1", "1.MIME", "2.HEADER", "1.2.TEXT",
                 "1.1.1"]:
        data = msg.section(spec)
        assert data is None or data in raw
    msg.section("HEADER.FIELDS (SUBJECT FROM)")
    msg.body_text()
    msg.header_text()
    msg.sent_date()


# ---- sections: byte-exact slices (RFC 3501 §6.4.5 example structure) -------------------------

# The RFC 3501 §6.4.5 example: every part's entity and body, built so each expected section
# is known exactly.
P1_BODY = b"part 1 text\r\n"
P1 = entity([b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII"], P1_BODY)
P2_BODY = b"AAECAwQ=\r\n"
P2 = entity([b"Content-Type: APPLICATION/OCTET-STREAM", b"Content-Transfer-Encoding: base64"],
            P2_BODY)
P3_1 = entity([b"Content-Type: text/plain"], b"3.1 text\r\n")
P3_2 = entity([b"Content-Type: application/octet-stream"], b"3.2 data")
P3_MSG_HEADER = b"Subject: part 3\r\nContent-Type: multipart/mixed; boundary=\"in3\"\r\n\r\n"
P3_MSG_BODY = multipart_body(b"in3", [P3_1, P3_2])
P3_MSG = P3_MSG_HEADER + P3_MSG_BODY
P3_MIME = b"Content-Type: MESSAGE/RFC822\r\n\r\n"
P3 = P3_MIME + P3_MSG
P41_BODY = b"R0lGODlhAQABAAAAACw=\r\n"
P41_MIME = b"Content-Type: IMAGE/GIF\r\nContent-Transfer-Encoding: base64\r\n\r\n"
P41 = P41_MIME + P41_BODY
P4221 = entity([b"Content-Type: text/plain"], b"plain alternative\r\n")
P4222 = entity([b"Content-Type: text/richtext"], b"<bold>rich</bold>\r\n")
P422_BODY = multipart_body(b"alt", [P4221, P4222])
P422 = entity([b"Content-Type: multipart/alternative; boundary=alt"], P422_BODY)
P421_BODY = b"4.2.1 text\r\n"
P421 = entity([b"Content-Type: text/plain"], P421_BODY)
P42_MSG_HEADER = b"Subject: part 4.2\r\nContent-Type: multipart/mixed; boundary=in42\r\n\r\n"
P42_MSG_BODY = multipart_body(b"in42", [P421, P422])
P42_MSG = P42_MSG_HEADER + P42_MSG_BODY
P42 = entity([b"Content-Type: MESSAGE/RFC822"], P42_MSG)
P4_BODY = multipart_body(b"in4", [P41, P42])
P4 = entity([b"Content-Type: MULTIPART/MIXED; boundary=in4"], P4_BODY)
TOP_HEADER = (b"Subject: the RFC 3501 example\r\nFrom: a@example.org\r\n"
              b"Content-Type: MULTIPART/MIXED; boundary=\"top\"\r\n\r\n")
TOP_BODY = multipart_body(b"top", [P1, P2, P3, P4])
TOP = TOP_HEADER + TOP_BODY


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", TOP),
        ("HEADER", TOP_HEADER),
        ("TEXT", TOP_BODY),
        ("1", P1_BODY),
        ("2", P2_BODY),
        ("3", P3_MSG),
        ("3.HEADER", P3_MSG_HEADER),
        ("3.TEXT", P3_MSG_BODY),
        ("3.1", b"3.1 text\r\n"),
        ("3.2", b"3.2 data"),
        ("3.MIME", P3_MIME),
        ("4", P4_BODY),
        ("4.1", P41_BODY),
        ("4.1.MIME", P41_MIME),
        ("4.2", P42_MSG),
        ("4.2.HEADER", P42_MSG_HEADER),
        ("4.2.TEXT", P42_MSG_BODY),
        ("4.2.1", P421_BODY),
        ("4.2.2", P422_BODY),
        ("4.2.2.1", b"plain alternative\r\n"),
        ("4.2.2.2", b"<bold>rich</bold>\r\n"),
        ("4.2.2.MIME", b"Content-Type: multipart/alternative; boundary=alt\r\n\r\n"),
    ],
)
def test_sections_of_the_rfc3501_example_are_exact_slices(spec: str, expected: bytes) -> None:
    data = section(TOP, spec)
    assert data == expected
    assert TOP.find(expected) >= 0


@pytest.mark.parametrize("spec", ["5", "1.1", "2.1", "3.3", "4.3", "4.1.1",
                                  "1.HEADER", "4.TEXT", "4.2.2.3", "3.1.1"])
def test_parts_that_do_not_exist_are_none(spec: str) -> None:
    assert section(TOP, spec) is None


def test_section_accepts_a_parsed_section() -> None:
    assert section(TOP, Section((4, 2), "HEADER")) == P42_MSG_HEADER


def test_non_multipart_message_has_only_part_one() -> None:  # RFC 3501 §6.4.5
    raw = entity([b"Subject: s", b"Content-Type: text/plain"], b"the body\r\n")
    assert section(raw, "1") == b"the body\r\n" == section(raw, "TEXT")
    assert section(raw, "1.MIME") == b"Subject: s\r\nContent-Type: text/plain\r\n\r\n"
    assert section(raw, "2") is None
    assert section(raw, "1.1") is None


def test_bare_lf_messages_are_sliced_exactly() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=x\n\n"
           b"--x\nContent-Type: text/plain\n\nhi\n--x--\n")
    assert section(raw, "HEADER") == b"Content-Type: multipart/mixed; boundary=x\n\n"
    assert section(raw, "1") == b"hi"
    assert section(raw, "1.MIME") == b"Content-Type: text/plain\n\n"


HEADERS = (b"Date: Wed, 17 Jul 1996 02:23:25 -0700\r\n"
           b"Received: from a\r\n\tby b\r\n"
           b"From: Terry Gray <gray@cac.washington.edu>\r\n"
           b"Subject: folded\r\n  subject\r\n"
           b"received: from c\r\n"
           b"\r\n")
FIELDS_MESSAGE = HEADERS + b"body\r\n"


def test_header_fields_keeps_original_octets_and_order() -> None:  # RFC 3501 §6.4.5
    assert section(FIELDS_MESSAGE, "HEADER.FIELDS (FROM DATE)") == (
        b"Date: Wed, 17 Jul 1996 02:23:25 -0700\r\n"
        b"From: Terry Gray <gray@cac.washington.edu>\r\n\r\n")
    assert section(FIELDS_MESSAGE, "HEADER.FIELDS (RECEIVED)") == \
        b"Received: from a\r\n\tby b\r\nreceived: from c\r\n\r\n"


def test_header_fields_not() -> None:
    assert section(FIELDS_MESSAGE, "HEADER.FIELDS.NOT (Received date)") == (
        b"From: Terry Gray <gray@cac.washington.edu>\r\nSubject: folded\r\n  subject\r\n\r\n")


def test_header_fields_without_a_match_is_the_blank_line() -> None:
    assert section(FIELDS_MESSAGE, "HEADER.FIELDS (X-NONE)") == b"\r\n"


def test_header_fields_of_an_encapsulated_message() -> None:
    assert section(TOP, "4.2.HEADER.FIELDS (SUBJECT)") == b"Subject: part 4.2\r\n\r\n"


def test_invalid_section_string_raises_value_error() -> None:
    with pytest.raises(ValueError):
        section(TOP, "1.BOGUS")


# ---- SEARCH helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard"),  # RFC 2047 §8
        ("=?UTF-8?B?w6k=?=", "é"),
        ("(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)"),  # whitespace between words goes
        ("=?ISO-8859-1?Q?a?=  \r\n =?ISO-8859-2?Q?_b?=", "a b"),
        ("=?UTF-8?Q?=C3?= =?UTF-8?Q?=A9?=", "é"),  # a character split across words
        ("=?UTF-8*en?Q?hi?=", "hi"),  # RFC 2231 §5 language
        ("=?X-UNKNOWN?Q?caf=C3=A9?=", "café"),
        ("a =?UTF-8?Q?b?= c", "a b c"),
        ("no words", "no words"),
        ("=?UTF-8?B?!!!?=", "=?UTF-8?B?!!!?="),
    ],
)
def test_decode_words(text: str, decoded: str) -> None:
    assert decode_words(text) == decoded


def test_header_values_are_unfolded_and_decoded() -> None:
    raw = entity([b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n aus Berlin", b"subject: second"],
                 b"")
    assert Message(raw).header_values("SUBJECT") == ["Grüße aus Berlin", "second"]
    assert Message(raw).has_header("Subject")
    assert not Message(raw).has_header("To")


def test_body_text_undoes_transfer_encodings_and_charsets() -> None:
    raw = entity([b"Content-Type: multipart/mixed; boundary=b"], multipart_body(b"b", [
        entity([b"Content-Type: text/plain; charset=iso-8859-1",
                b"Content-Transfer-Encoding: quoted-printable"], b"caf=E9 cr=\r\n=E8me\r\n"),
        entity([b"Content-Type: text/html; charset=utf-8", b"Content-Transfer-Encoding: base64"],
               b"PHA+w7xiZXI8L3A+\r\n"),
        entity([b"Content-Type: image/png", b"Content-Transfer-Encoding: base64"],
               b"c2VjcmV0\r\n"),
        entity([b"Content-Type: message/rfc822"],
               b"Subject: =?UTF-8?Q?inn=C3=A9r?=\r\n\r\nnested\r\n"),
    ]))
    text = Message(raw).body_text()
    assert "café crème" in text
    assert "<p>über</p>" in text
    assert "secret" not in text  # not a text part
    assert "innér" in text and "nested" in text


@pytest.mark.parametrize("charset", ["idna", "punycode", "rot13", "zlib", "x-unknown", ""])
def test_odd_charsets_fall_back_to_utf8(charset: str) -> None:
    raw = entity([f"Content-Type: text/plain; charset={charset}".encode()], b"caf\xc3\xa9\r\n")
    assert "café" in Message(raw).body_text()


def test_decode_transfer() -> None:
    assert decode_transfer(b"aGVsbG8=\r\n", "BASE64") == b"hello"
    assert decode_transfer(b"aGVsbG8\r\n", "base64") == b"hello"  # missing padding
    assert decode_transfer(b"a=3Db=\r\nc", "Quoted-Printable") == b"a=bc"
    assert decode_transfer(b"raw", "8bit") == b"raw"
    assert decode_transfer(b"raw", "x-uuencode") is None


def test_sent_date() -> None:
    assert Message(RFC3501_SAMPLE).sent_date() == dt.date(1996, 7, 17)
    assert Message(entity([b"Date: yesterday"], b"")).sent_date() is None
    assert Message(entity([], b"")).sent_date() is None


def test_a_header_alone_answers_what_the_whole_message_does() -> None:
    raw = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nFrom: Fred <fred@example.org>\r\n"
           b"Subject: =?ISO-8859-1?Q?Caf=E9?=\r\n\tfolded\r\nTo: a@b.c, d@e.f\r\n"
           b"Content-Type: multipart/mixed; boundary=x\r\nX-Empty:\r\nno colon here\r\n\r\n"
           b"--x\r\nContent-Type: text/plain\r\n\r\nbody\r\n--x--\r\n")
    header = raw[: raw.index(b"\r\n\r\n") + 4]
    whole, alone = Message(raw), Message.of_header(header)
    assert alone.envelope() == whole.envelope()
    for spec in ("HEADER", "HEADER.FIELDS (SUBJECT TO)", "HEADER.FIELDS.NOT (SUBJECT)"):
        assert alone.section(spec) == whole.section(spec)
    for name in ("subject", "to", "x-empty", "absent"):
        assert alone.header_values(name) == whole.header_values(name)
        assert alone.has_header(name) == whole.has_header(name)
    assert alone.sent_date() == whole.sent_date()
    assert alone.header_text() == whole.header_text()
