"""Invariants of the reply table (DESIGN.md §4.5): RFC 3463 classes, ASCII, 512-octet lines."""

from __future__ import annotations

import re

import pytest

from relay._fast.spec import FailureKind
from relay.auth.sasl import SaslErrorKind
from relay.smtp import replies as R
from relay.smtp.replies import Reply

CONSTANTS = {name: value for name, value in vars(R).items() if isinstance(value, Reply)}
BUILT = {
    "greeting": R.greeting("mx.example.test"),
    "ehlo": R.ehlo("mx.example.test", "client.example", ["PIPELINING", "SIZE 10240000"]),
    "helo": R.helo("mx.example.test"),
    "queued": R.queued("0123456789ABC0012345"),
}
EVERY = {**CONSTANTS, **BUILT}
# RFC 2034 §3: the greeting and the EHLO/HELO replies carry no enhanced code; 354 is an
# intermediate reply and RFC 3463 has no class 3.
WITHOUT_STATUS = {"START_DATA", "greeting", "ehlo", "helo"}
_STATUS = re.compile(r"^([245])\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$")


def test_the_table_is_not_empty() -> None:
    assert len(CONSTANTS) >= 40


@pytest.mark.parametrize("name", sorted(EVERY))
def test_code_is_a_valid_reply_code(name: str) -> None:
    reply = EVERY[name]
    assert 200 <= reply.code <= 599, name
    assert str(reply.code)[1] in "012345", name  # RFC 5321 §4.2.1 second digit


@pytest.mark.parametrize("name", sorted(set(EVERY) - WITHOUT_STATUS))
def test_enhanced_status_class_equals_first_digit_of_code(name: str) -> None:
    reply = EVERY[name]
    m = _STATUS.match(reply.status)
    assert m, f"{name}: status {reply.status!r} is not class.subject.detail"
    assert m.group(1) == str(reply.code)[0], f"{name}: {reply.code} with {reply.status}"


@pytest.mark.parametrize("name", sorted(WITHOUT_STATUS))
def test_greeting_ehlo_helo_and_354_carry_no_status(name: str) -> None:
    assert EVERY[name].status == ""


@pytest.mark.parametrize("name", sorted(EVERY))
def test_text_is_ascii_without_cr(name: str) -> None:
    text = EVERY[name].text
    assert text.isascii(), name
    assert "\r" not in text, name
    assert text, name


@pytest.mark.parametrize("name", sorted(EVERY))
def test_encoded_lines_fit_512_octets(name: str) -> None:
    # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including CRLF.
    wire = EVERY[name].encode()
    assert wire.endswith(b"\r\n")
    for line in wire.split(b"\r\n")[:-1]:
        assert len(line) + 2 <= 512, name


@pytest.mark.parametrize("name", sorted(EVERY))
def test_encoded_lines_start_with_code_and_separator(name: str) -> None:
    reply = EVERY[name]
    lines = reply.encode().split(b"\r\n")[:-1]
    code = str(reply.code).encode()
    for line in lines[:-1]:
        assert line.startswith(code + b"-"), name
    assert lines[-1].startswith(code + b" "), name


@pytest.mark.parametrize("kind", list(FailureKind))
def test_every_failure_kind_is_mapped(kind: FailureKind) -> None:
    reply = R.FAILURE_REPLIES[kind]
    assert reply in CONSTANTS.values()
    assert 500 <= reply.code < 600


def test_failure_replies_has_no_stray_keys() -> None:
    assert set(R.FAILURE_REPLIES) == set(FailureKind)


def test_every_sasl_error_kind_has_a_reply_from_the_table() -> None:
    assert set(R.SASL_FAILURE_REPLIES) == set(SaslErrorKind)
    assert set(R.SASL_FAILURE_REPLIES.values()) <= set(CONSTANTS.values())


def test_single_line_encoding() -> None:
    assert Reply(250, "2.0.0", "OK").encode() == b"250 2.0.0 OK\r\n"


def test_single_line_encoding_without_status() -> None:
    assert Reply(354, "", "go ahead").encode() == b"354 go ahead\r\n"


def test_multi_line_encoding_repeats_code_and_status_on_every_line() -> None:
    # RFC 5321 §4.2.1 "code-text" continuation lines; RFC 2034 §3 status on each line.
    assert Reply(452, "4.3.1", "one\ntwo\nthree").encode() == (
        b"452-4.3.1 one\r\n452-4.3.1 two\r\n452 4.3.1 three\r\n")


def test_multi_line_encoding_without_status() -> None:
    assert R.ehlo("mx.test", "c.example", ["PIPELINING", "SIZE 100"]).encode() == (
        b"250-mx.test greets c.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n")


def test_greeting_names_the_host() -> None:
    assert R.greeting("mx.test").encode() == b"220 mx.test ESMTP relay\r\n"


def test_queued_names_the_queue_id() -> None:
    assert R.queued("ABC").encode() == b"250 2.0.0 OK queued as ABC\r\n"


def test_with_text_keeps_code_and_status() -> None:
    assert R.USER_UNKNOWN.with_text("no") == Reply(550, "5.1.1", "no")


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_is_positive_means_below_400(name: str) -> None:
    reply = CONSTANTS[name]
    assert reply.is_positive is (reply.code < 400)
