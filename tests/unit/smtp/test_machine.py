"""ServerMachine driven with byte strings: exact reply octets and events (RFC 5321 and extensions).

No sockets, no loop. `Dialogue` feeds bytes, drains next_event() answering every decision
at once (accept, unless the test's `decide` says otherwise; Authenticate by `login`) and
collects data_to_send().
"""

from __future__ import annotations

import re
import base64
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.smtp import replies as R
from relay.smtp.events import (
    Authenticate,
    Closed,
    Event,
    MailFrom,
    MessageReceived,
    RcptTo,
    Signal,
    StartTls,
)
from relay.smtp.grammar import Mailbox
from relay.smtp.machine import ServerMachine
from relay.smtp.settings import MAX_AUTH_LINE, MAX_ERRORS, SmtpSettings

HOST = "mx.test"
MAX_SIZE = 1000
MAX_RCPTS = 3
SETTINGS = SmtpSettings(hostname=HOST, max_message_size=MAX_SIZE, max_recipients=MAX_RCPTS)
TLS_SETTINGS = SmtpSettings(
    hostname=HOST, max_message_size=MAX_SIZE, max_recipients=MAX_RCPTS, tls_available=True
)

AUTH_SETTINGS = SmtpSettings(
    hostname=HOST, max_message_size=MAX_SIZE, max_recipients=MAX_RCPTS, tls_available=True,
    auth_available=True)
SUBMISSION_SETTINGS = SmtpSettings(
    hostname=HOST, max_message_size=MAX_SIZE, max_recipients=MAX_RCPTS, tls_available=True,
    auth_available=True, auth_required=True)

Decide = Callable[[Event], "R.Reply | None"]
# Answers an Authenticate: the account on success, "" for bad credentials, None for a
# temporary refusal (the throttle).
Login = Callable[[Authenticate], "str | None"]
PASSWORDS = {"alice@example.org": "secret", "long@example.org": "p" * 1000}

EHLO_LINES = (
    b"250-mx.test greets client.example\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 1000\r\n"
    b"250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-SMTPUTF8\r\n"
)
EHLO_REPLY = EHLO_LINES + b"250 CHUNKING\r\n"
EHLO_REPLY_TLS = EHLO_LINES + b"250-CHUNKING\r\n250 STARTTLS\r\n"

SENDER_OK = b"250 2.1.0 Sender OK\r\n"
RCPT_OK = b"250 2.1.5 Recipient OK\r\n"
START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 OK\r\n"
NEED_HELO = b"503 5.5.1 Send EHLO/HELO first\r\n"
NEED_MAIL = b"503 5.5.1 Need MAIL command\r\n"
NEED_RCPT = b"503 5.5.1 Need RCPT command\r\n"
TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
BARE = b"550 5.6.0 Message contains bare CR or LF; use CRLF line endings\r\n"
LINE_TOO_LONG = b"500 5.5.2 Line too long\r\n"
UNKNOWN = b"500 5.5.2 Command not recognized\r\n"
NOOP_OK = b"250 2.0.0 OK\r\n"


def accept_all(event: Event) -> R.Reply | None:
    return None


def check_password(event: Authenticate) -> str | None:
    account = event.user.lower()
    return account if PASSWORDS.get(account) == event.password else ""


class Dialogue:
    """One machine plus the glue's duties, done synchronously."""

    def __init__(self, settings: SmtpSettings = SETTINGS, decide: Decide = accept_all,
                 tls_active: bool = False, login: Login = check_password) -> None:
        self.machine = ServerMachine(settings, tls_active=tls_active)
        self.decide = decide
        self.login = login
        self.events: list[Event] = []

    def send(self, *chunks: bytes) -> bytes:
        """Feed each chunk in its own receive_data call; return every reply octet written."""
        out = []
        for chunk in chunks:
            self.machine.receive_data(chunk)
            self._drain()
            out.append(self.machine.data_to_send())
        return b"".join(out)

    def _drain(self) -> None:
        m = self.machine
        while True:
            event = m.next_event()
            if event is Signal.NEED_DATA:
                return
            assert event is not Signal.PAUSED, "paused although every decision was answered"
            self.events.append(event)
            if isinstance(event, (MailFrom, RcptTo, MessageReceived)):
                reply = self.decide(event)
                if reply is None:
                    m.accept()
                elif reply.is_positive:
                    m.accept(reply)
                else:
                    m.reject(reply)
            elif isinstance(event, Authenticate):
                account = self.login(event)
                if account:
                    m.auth_ok(account)
                else:
                    m.auth_failed(temporary=account is None)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def greeted(settings: SmtpSettings = SETTINGS, decide: Decide = accept_all) -> Dialogue:
    d = Dialogue(settings, decide)
    d.send(b"EHLO client.example\r\n")
    return d


def in_transaction(decide: Decide = accept_all, settings: SmtpSettings = SETTINGS) -> Dialogue:
    """EHLO, MAIL and one RCPT accepted."""
    d = greeted(settings, decide)
    assert d.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.test>\r\n") == (
        SENDER_OK + RCPT_OK)
    return d


# ---- greeting, EHLO, HELO ------------------------------------------------------------


def test_greeting_is_220_with_hostname() -> None:
    assert ServerMachine(SETTINGS).greeting() == b"220 mx.test ESMTP relay\r\n"


def test_ehlo_lists_extensions_without_starttls_when_tls_unavailable() -> None:
    assert Dialogue().send(b"EHLO client.example\r\n") == EHLO_REPLY


def test_ehlo_lists_starttls_when_tls_available() -> None:
    assert Dialogue(TLS_SETTINGS).send(b"EHLO client.example\r\n") == EHLO_REPLY_TLS


def test_ehlo_after_tls_started_omits_starttls() -> None:
    d = Dialogue(TLS_SETTINGS)
    d.send(b"EHLO client.example\r\n")
    assert d.send(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
    d.machine.tls_started()
    assert d.send(b"EHLO client.example\r\n") == EHLO_REPLY


def test_ehlo_on_a_session_that_starts_in_tls_omits_starttls() -> None:
    d = Dialogue(TLS_SETTINGS, tls_active=True)
    assert d.send(b"EHLO client.example\r\n") == EHLO_REPLY


def test_ehlo_accepts_an_address_literal() -> None:
    assert Dialogue().send(b"EHLO [192.0.2.1]\r\n").startswith(
        b"250-mx.test greets [192.0.2.1]\r\n")


def test_helo_is_a_single_250_with_hostname() -> None:
    assert Dialogue().send(b"HELO client.example\r\n") == b"250 mx.test\r\n"


def test_ehlo_without_argument_is_501_5_5_4() -> None:
    assert Dialogue().send(b"EHLO\r\n") == b"501 5.5.4 Syntax: EHLO hostname\r\n"


def test_ehlo_with_invalid_domain_is_501_5_5_4() -> None:
    assert Dialogue().send(b"EHLO -bad-.example\r\n") == b"501 5.5.4 Syntax: EHLO hostname\r\n"


def test_ehlo_mid_transaction_resets_it() -> None:
    d = in_transaction()
    assert d.send(b"EHLO client.example\r\n") == EHLO_REPLY
    assert d.send(b"DATA\r\n") == NEED_MAIL


def test_ehlo_reply_lines_fit_512_octets_for_the_longest_helo_argument() -> None:
    # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including CRLF. The longest
    # acceptable EHLO line (512 octets) carries a 505-octet argument.
    arg = b"[x:" + b"a" * 501 + b"]"
    line = b"EHLO " + arg + b"\r\n"
    assert len(line) == 512
    out = Dialogue().send(line)  # refused or greeted, every reply line must fit
    assert out and all(len(ln) + 2 <= 512 for ln in out.split(b"\r\n")[:-1])


def test_ehlo_reply_is_ascii_for_an_8bit_argument() -> None:
    # RFC 5321 §2.4: replies are ASCII; an 8-bit (here not even UTF-8) EHLO name is either
    # refused or not echoed as U+FFFD octets.
    out = Dialogue().send(b"EHLO \xff\xfe.example\r\n")
    assert out.isascii(), out


# ---- sequence errors (RFC 5321 §4.1.4) -------------------------------------------------


def test_mail_before_ehlo_is_503_5_5_1() -> None:
    assert Dialogue().send(b"MAIL FROM:<alice@example.org>\r\n") == NEED_HELO


def test_rcpt_before_ehlo_is_503_5_5_1() -> None:
    assert Dialogue().send(b"RCPT TO:<bob@example.test>\r\n") == NEED_HELO


def test_data_before_ehlo_is_503_5_5_1() -> None:
    assert Dialogue().send(b"DATA\r\n") == NEED_HELO


def test_rcpt_before_mail_is_503_5_5_1() -> None:
    assert greeted().send(b"RCPT TO:<bob@example.test>\r\n") == NEED_MAIL


def test_data_before_mail_is_503_5_5_1() -> None:
    assert greeted().send(b"DATA\r\n") == NEED_MAIL


def test_data_before_rcpt_is_503_5_5_1() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert d.send(b"DATA\r\n") == NEED_RCPT


def test_nested_mail_is_503_5_5_1() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert d.send(b"MAIL FROM:<carol@example.org>\r\n") == (
        b"503 5.5.1 Sender already specified\r\n")
    assert len(d.of(MailFrom)) == 1


def test_data_after_all_recipients_refused_is_503_5_5_1() -> None:
    d = greeted(decide=lambda e: R.USER_UNKNOWN if isinstance(e, RcptTo) else None)
    out = d.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n")
    assert out == SENDER_OK + b"550 5.1.1 Mailbox unavailable: no such user\r\n" + NEED_RCPT


# ---- syntax errors ----------------------------------------------------------------------


def test_bad_sender_address_is_501_5_1_7() -> None:
    assert greeted().send(b"MAIL FROM:<not an address>\r\n") == (
        b"501 5.1.7 Bad sender address syntax\r\n")


def test_bad_recipient_address_is_501_5_1_3() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert d.send(b"RCPT TO:<bob@@example.test>\r\n") == (
        b"501 5.1.3 Bad recipient address syntax\r\n")


def test_null_recipient_is_501_5_1_3() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert d.send(b"RCPT TO:<>\r\n") == b"501 5.1.3 Bad recipient address syntax\r\n"


def test_mail_without_angle_brackets_is_501_5_5_4() -> None:
    assert greeted().send(b"MAIL FROM:alice@example.org\r\n") == (
        b"501 5.5.4 Syntax error in parameters or arguments\r\n")


def test_malformed_size_parameter_is_501_5_5_4() -> None:
    assert greeted().send(b"MAIL FROM:<alice@example.org> SIZE=12x\r\n") == (
        b"501 5.5.4 Syntax error in parameters or arguments\r\n")


def test_nul_in_a_command_is_501_5_5_4() -> None:
    assert greeted().send(b"NOOP\x00\r\n") == (
        b"501 5.5.4 Syntax error in parameters or arguments\r\n")


def test_data_with_argument_is_501_5_5_4() -> None:
    d = in_transaction()
    assert d.send(b"DATA now\r\n") == b"501 5.5.4 Syntax error in parameters or arguments\r\n"


def test_unknown_command_is_500_5_5_2() -> None:
    assert greeted().send(b"FROB\r\n") == UNKNOWN


def test_empty_line_is_500_5_5_2() -> None:
    assert greeted().send(b"\r\n") == UNKNOWN


def test_unknown_mail_parameter_is_555_5_5_4() -> None:
    assert greeted().send(b"MAIL FROM:<alice@example.org> FOO=BAR\r\n") == (
        b"555 5.5.4 Unsupported MAIL/RCPT parameter\r\n")


def test_rcpt_parameter_is_555_5_5_4() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert d.send(b"RCPT TO:<bob@example.test> NOTIFY=NEVER\r\n") == (
        b"555 5.5.4 Unsupported MAIL/RCPT parameter\r\n")


def test_mail_parameters_after_helo_are_555_5_5_4() -> None:
    # RFC 5321 §4.1.1.2: ESMTP parameters only follow EHLO.
    d = Dialogue()
    d.send(b"HELO client.example\r\n")
    assert d.send(b"MAIL FROM:<alice@example.org> SIZE=10\r\n") == (
        b"555 5.5.4 Unsupported MAIL/RCPT parameter\r\n")


# ---- MAIL and RCPT events ----------------------------------------------------------------


def test_mail_event_carries_sender_size_and_body_type() -> None:
    d = greeted()
    assert d.send(b"MAIL FROM:<alice@example.org> SIZE=500 BODY=8BITMIME\r\n") == SENDER_OK
    assert d.of(MailFrom) == [MailFrom(Mailbox("alice", "example.org"), 500, False, "8BITMIME")]


def test_null_reverse_path_gives_sender_none() -> None:
    d = greeted()
    assert d.send(b"MAIL FROM:<>\r\n") == SENDER_OK
    assert d.of(MailFrom) == [MailFrom(None, None, False, "7BIT")]


def test_rejected_mail_leaves_no_transaction() -> None:
    d = greeted(decide=lambda e: R.RELAY_DENIED if isinstance(e, MailFrom) else None)
    out = d.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.test>\r\n")
    assert out == b"554 5.7.1 Relay access denied\r\n" + NEED_MAIL


def test_postmaster_without_domain_is_accepted_as_recipient() -> None:
    # RFC 5321 §4.1.1.3: "RCPT TO:<Postmaster>" (no domain) MUST be accepted.
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert d.send(b"RCPT TO:<Postmaster>\r\n") == RCPT_OK
    (rcpt,) = d.of(RcptTo)
    assert rcpt.recipient.local.lower() == "postmaster"


# ---- limits -----------------------------------------------------------------------------


def test_line_over_512_octets_is_500_5_5_2() -> None:
    line = b"NOOP " + b"x" * 506 + b"\r\n"  # 513 octets with CRLF
    assert greeted().send(line) == LINE_TOO_LONG


def test_line_of_exactly_512_octets_is_accepted() -> None:
    line = b"NOOP " + b"x" * 505 + b"\r\n"  # 512 octets with CRLF
    assert greeted().send(line) == NOOP_OK


def test_session_continues_after_an_over_long_line() -> None:
    out = greeted().send(b"NOOP " + b"x" * 2000 + b"\r\nNOOP\r\n")
    assert out == LINE_TOO_LONG + NOOP_OK


def test_over_long_line_split_across_many_reads_is_answered_once() -> None:
    long_line = b"MAIL FROM:<" + b"a" * 3000 + b"@example.org>\r\n"
    chunks = [long_line[i : i + 7] for i in range(0, len(long_line), 7)]
    d = greeted()
    assert d.send(*chunks, b"NOOP\r\n") == LINE_TOO_LONG + NOOP_OK
    assert d.of(MailFrom) == []


def test_over_long_line_tail_is_never_executed_as_a_command() -> None:
    # The octets after the 512th belong to the long line, even if they look like a command.
    d = greeted()
    out = d.send(b"NOOP " + b"x" * 600, b"QUIT", b"\r\nNOOP\r\n")
    assert out == LINE_TOO_LONG + NOOP_OK
    assert d.of(Closed) == []


def test_declared_size_over_limit_is_552_5_3_4_at_mail() -> None:
    d = greeted()
    assert d.send(b"MAIL FROM:<alice@example.org> SIZE=1001\r\n") == TOO_BIG
    assert d.of(MailFrom) == []


def test_declared_size_at_limit_is_accepted() -> None:
    assert greeted().send(b"MAIL FROM:<alice@example.org> SIZE=1000\r\n") == SENDER_OK


def test_message_over_max_size_is_552_5_3_4_after_end_of_data() -> None:
    d = in_transaction()
    assert d.send(b"DATA\r\n") == START_DATA
    body = (b"x" * 98 + b"\r\n") * 11  # 1100 octets
    assert d.send(body) == b""  # nothing until the end of data (RFC 5321 §4.5.3.1.10)
    assert d.send(b".\r\n") == TOO_BIG
    assert d.of(MessageReceived) == []


def test_message_at_max_size_is_delivered() -> None:
    d = in_transaction()
    body = (b"x" * 98 + b"\r\n") * 10  # exactly 1000 octets
    assert d.send(b"DATA\r\n", body + b".\r\n") == START_DATA + QUEUED
    assert d.of(MessageReceived)[0].body == body


def test_session_continues_after_552_at_end_of_data() -> None:
    d = in_transaction()
    d.send(b"DATA\r\n", b"y" * 1500 + b"\r\n.\r\n")
    assert d.send(b"MAIL FROM:<alice@example.org>\r\n") == SENDER_OK


def test_recipient_over_max_recipients_is_452_4_5_3() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    out = d.send(b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(4)))
    assert out == RCPT_OK * 3 + b"452 4.5.3 Too many recipients\r\n"
    assert len(d.of(RcptTo)) == 3


def test_too_many_recipients_does_not_end_the_transaction() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    d.send(b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(4)))
    assert d.send(b"DATA\r\n", b"hi\r\n.\r\n") == START_DATA + QUEUED
    assert len(d.of(MessageReceived)[0].recipients) == 3


# ---- DATA ---------------------------------------------------------------------------------


def test_data_delivers_message_with_envelope() -> None:
    d = in_transaction()
    assert d.send(b"DATA\r\n", b"Subject: hi\r\n\r\nbody\r\n.\r\n") == START_DATA + QUEUED
    assert d.of(MessageReceived) == [
        MessageReceived(
            sender=Mailbox("alice", "example.org"),
            recipients=(Mailbox("bob", "example.test"),),
            body=b"Subject: hi\r\n\r\nbody\r\n",
            smtputf8=False,
            chunked=False,
        )
    ]


def test_data_reply_is_the_glue_s_reply() -> None:
    d = in_transaction(decide=lambda e: R.queued("ABC") if isinstance(e, MessageReceived) else None)
    assert d.send(b"DATA\r\n", b"x\r\n.\r\n") == START_DATA + b"250 2.0.0 OK queued as ABC\r\n"


def test_rejected_message_ends_the_transaction() -> None:
    d = in_transaction(
        decide=lambda e: R.QUEUE_FULL if isinstance(e, MessageReceived) else None)
    out = d.send(b"DATA\r\n", b"x\r\n.\r\n", b"DATA\r\n")
    assert out == START_DATA + b"452 4.3.1 Insufficient system storage, try again later\r\n" + (
        NEED_MAIL)


def test_dot_stuffing_is_removed_from_body() -> None:
    d = in_transaction()
    d.send(b"DATA\r\n", b"..leading dot\r\n...\r\n. \r\n.\r\n")
    assert d.of(MessageReceived)[0].body == b".leading dot\r\n..\r\n \r\n"


def test_empty_message_is_delivered() -> None:
    d = in_transaction()
    assert d.send(b"DATA\r\n.\r\n") == START_DATA + QUEUED
    assert d.of(MessageReceived)[0].body == b""


def test_data_split_into_single_octets_gives_the_same_body() -> None:
    d = in_transaction()
    stream = b"DATA\r\nline one\r\n..two\r\n.\r\nNOOP\r\n"
    out = d.send(*(stream[i : i + 1] for i in range(len(stream))))
    assert out == START_DATA + QUEUED + NOOP_OK
    assert d.of(MessageReceived)[0].body == b"line one\r\n.two\r\n"


def test_bare_lf_in_data_is_550_5_6_0() -> None:
    d = in_transaction()
    assert d.send(b"DATA\r\n", b"line one\nline two\r\n.\r\n") == START_DATA + BARE
    assert d.of(MessageReceived) == []


def test_bare_cr_in_data_is_550_5_6_0() -> None:
    d = in_transaction()
    assert d.send(b"DATA\r\n", b"line one\rline two\r\n.\r\n") == START_DATA + BARE
    assert d.of(MessageReceived) == []


def test_nul_in_data_is_550_5_6_0() -> None:
    d = in_transaction()
    assert d.send(b"DATA\r\n", b"a\x00b\r\n.\r\n") == (
        START_DATA + b"550 5.6.0 Message contains NUL octets\r\n")
    assert d.of(MessageReceived) == []


def test_bare_lf_dot_bare_lf_never_ends_data() -> None:
    d = in_transaction()
    assert d.send(b"DATA\r\n", b"hello\n.\n") == START_DATA  # still reading data
    assert d.send(b"NOOP\r\n") == b""
    assert d.send(b".\r\n") == BARE


def test_smuggled_commands_after_fake_terminator_are_not_executed() -> None:
    # SMTP smuggling (CVE-2023-51764): "\n.\n" must not end DATA, so the second
    # transaction is message content, not commands.
    d = in_transaction()
    smuggled = (
        b"Subject: real\r\n\r\nhello\n.\n"
        b"MAIL FROM:<ceo@example.test>\r\n"
        b"RCPT TO:<victim@example.test>\r\n"
        b"DATA\r\n"
        b"Subject: forged\r\n\r\nsmuggled\r\n"
        b".\r\n"
    )
    assert d.send(b"DATA\r\n", smuggled) == START_DATA + BARE
    assert len(d.of(MailFrom)) == 1
    assert len(d.of(RcptTo)) == 1
    assert d.of(MessageReceived) == []


def test_cr_dot_cr_never_ends_data() -> None:
    d = in_transaction()
    assert d.send(b"DATA\r\n", b"hello\r.\rQUIT\r\n") == START_DATA
    assert d.of(Closed) == []
    assert d.send(b".\r\n") == BARE


def test_commands_pipelined_after_data_terminator_are_executed() -> None:
    d = in_transaction()
    assert d.send(b"DATA\r\n", b"x\r\n.\r\nNOOP\r\n") == START_DATA + QUEUED + NOOP_OK


def test_peer_close_mid_data_is_closed_by_peer() -> None:
    d = in_transaction()
    d.send(b"DATA\r\n", b"partial")
    assert d.send(b"") == b""
    assert d.events[-1] == Closed(by_peer=True)
    assert d.of(MessageReceived) == []


# ---- pipelining (RFC 2920) -----------------------------------------------------------------


def test_pipelined_transaction_pauses_at_each_decision_and_replies_in_order() -> None:
    m = ServerMachine(SETTINGS)
    m.receive_data(b"EHLO client.example\r\n")
    assert m.next_event() is Signal.NEED_DATA
    assert m.data_to_send() == EHLO_REPLY
    m.receive_data(
        b"MAIL FROM:<alice@example.org>\r\n"
        b"RCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<bob@example.test>\r\n"
        b"DATA\r\n"
    )
    assert m.next_event() == MailFrom(Mailbox("alice", "example.org"), None, False, "7BIT")
    assert m.next_event() is Signal.PAUSED
    assert m.data_to_send() == b""
    m.accept()
    assert m.next_event() == RcptTo(Mailbox("nobody", "example.test"))
    assert m.next_event() is Signal.PAUSED
    m.reject(R.USER_UNKNOWN)
    assert m.next_event() == RcptTo(Mailbox("bob", "example.test"))
    assert m.next_event() is Signal.PAUSED
    m.accept()
    assert m.next_event() is Signal.NEED_DATA
    assert m.data_to_send() == (
        SENDER_OK + b"550 5.1.1 Mailbox unavailable: no such user\r\n" + RCPT_OK + START_DATA)


def test_pipelined_message_and_next_transaction_pause_for_the_queue_decision() -> None:
    m = ServerMachine(SETTINGS)
    m.receive_data(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n")
    for _ in range(2):
        assert isinstance(m.next_event(), (MailFrom, RcptTo))
        m.accept()
    assert m.next_event() is Signal.NEED_DATA
    m.data_to_send()
    m.receive_data(b"DATA\r\n")
    assert m.next_event() is Signal.NEED_DATA
    m.receive_data(b"x\r\n.\r\nMAIL FROM:<c@example.org>\r\n")
    assert isinstance(m.next_event(), MessageReceived)
    assert m.next_event() is Signal.PAUSED
    assert m.data_to_send() == START_DATA
    m.accept(R.queued("Q1"))
    assert isinstance(m.next_event(), MailFrom)
    assert m.data_to_send() == b"250 2.0.0 OK queued as Q1\r\n"


def test_accept_without_pending_decision_raises() -> None:
    m = ServerMachine(SETTINGS)
    try:
        m.accept()
    except RuntimeError:
        pass
    else:
        raise AssertionError("accept() without a decision must raise")


# ---- BDAT (RFC 3030) -------------------------------------------------------------------------


def test_bdat_chunks_are_joined_into_one_message() -> None:
    d = in_transaction()
    out = d.send(b"BDAT 6\r\nhello ", b"BDAT 7 LAST\r\nworld\r\n")
    assert out == b"250 2.0.0 Chunk accepted\r\n" + QUEUED
    (msg,) = d.of(MessageReceived)
    assert msg.body == b"hello world\r\n"
    assert msg.chunked is True


def test_bdat_chunk_octets_split_across_reads() -> None:
    d = in_transaction()
    out = d.send(b"BDAT 10 LAST\r\nab", b"cde", b"fghij", b"NOOP\r\n")
    assert out == QUEUED + NOOP_OK
    assert d.of(MessageReceived)[0].body == b"abcdefghij"


def test_bdat_content_is_not_dot_unstuffed_nor_line_checked() -> None:
    d = in_transaction()
    payload = b"..a\nb\r\n.\r\n"
    assert d.send(b"BDAT %d LAST\r\n" % len(payload) + payload) == QUEUED
    assert d.of(MessageReceived)[0].body == payload


def test_bdat_zero_last_ends_a_chunked_message() -> None:
    d = in_transaction()
    out = d.send(b"BDAT 3\r\nabc", b"BDAT 0 LAST\r\n")
    assert out == b"250 2.0.0 Chunk accepted\r\n" + QUEUED
    assert d.of(MessageReceived)[0].body == b"abc"


def test_bdat_zero_last_alone_delivers_empty_message() -> None:
    d = in_transaction()
    assert d.send(b"BDAT 0 LAST\r\n") == QUEUED
    assert d.of(MessageReceived)[0].body == b""


def test_bdat_outside_transaction_consumes_its_octets_then_503() -> None:
    d = greeted()
    out = d.send(b"BDAT 6\r\nQUIT\r\n", b"NOOP\r\n")
    assert out == NEED_MAIL + NOOP_OK
    assert d.of(Closed) == []


def test_bdat_before_rcpt_consumes_its_octets_then_503() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert d.send(b"BDAT 6 LAST\r\nQUIT\r\n") == NEED_RCPT
    assert d.of(Closed) == []


def test_bdat_before_ehlo_consumes_its_octets_then_503() -> None:
    d = Dialogue()
    assert d.send(b"BDAT 6\r\nQUIT\r\n") == NEED_HELO
    assert d.of(Closed) == []


def test_bdat_over_max_size_is_552_5_3_4_after_its_octets() -> None:
    d = in_transaction()
    out = d.send(b"BDAT 1001 LAST\r\n" + b"z" * 1001, b"NOOP\r\n")
    assert out == TOO_BIG + NOOP_OK
    assert d.of(MessageReceived) == []


def test_bdat_chunks_summing_over_max_size_are_552_5_3_4() -> None:
    d = in_transaction()
    out = d.send(b"BDAT 600\r\n" + b"a" * 600, b"BDAT 600 LAST\r\n" + b"b" * 600)
    assert out == b"250 2.0.0 Chunk accepted\r\n" + TOO_BIG
    assert d.of(MessageReceived) == []
    assert d.send(b"MAIL FROM:<alice@example.org>\r\n") == SENDER_OK


def test_data_after_bdat_is_503_5_5_1() -> None:
    d = in_transaction()
    d.send(b"BDAT 3\r\nabc")
    assert d.send(b"DATA\r\n") == b"503 5.5.1 DATA and BDAT cannot be mixed\r\n"


def test_bdat_without_size_is_501_5_5_4() -> None:
    d = in_transaction()
    assert d.send(b"BDAT LAST\r\n") == b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"


# ---- RSET, NOOP, VRFY, HELP, QUIT --------------------------------------------------------------


def test_rset_aborts_the_transaction() -> None:
    d = in_transaction()
    assert d.send(b"RSET\r\n") == b"250 2.0.0 Reset OK\r\n"
    assert d.send(b"DATA\r\n") == NEED_MAIL


def test_rset_keeps_the_greeting() -> None:
    d = greeted()
    d.send(b"RSET\r\n")
    assert d.send(b"MAIL FROM:<alice@example.org>\r\n") == SENDER_OK


def test_noop_is_250() -> None:
    assert greeted().send(b"NOOP\r\n") == NOOP_OK


def test_vrfy_is_252_2_5_0() -> None:
    assert greeted().send(b"VRFY bob\r\n") == (
        b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n")


def test_help_is_214() -> None:
    assert greeted().send(b"HELP\r\n") == (
        b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS"
        b" AUTH; see RFC 5321\r\n")


def test_quit_is_221_and_closes() -> None:
    d = greeted()
    assert d.send(b"QUIT\r\n") == b"221 2.0.0 Bye\r\n"
    assert d.events[-1] == Closed(by_peer=False)


def test_nothing_after_quit_is_executed() -> None:
    d = greeted()
    assert d.send(b"QUIT\r\nNOOP\r\n", b"NOOP\r\n") == b"221 2.0.0 Bye\r\n"
    assert d.of(Closed) == [Closed(by_peer=False)]


def test_verbs_are_case_insensitive() -> None:
    d = Dialogue()
    out = d.send(b"ehlo client.example\r\nmail from:<alice@example.org>\r\nnoop\r\n")
    assert out == EHLO_REPLY + SENDER_OK + NOOP_OK


# ---- STARTTLS (RFC 3207) -----------------------------------------------------------------------


def test_starttls_is_220_and_emits_starttls() -> None:
    d = Dialogue(TLS_SETTINGS)
    d.send(b"EHLO client.example\r\n")
    assert d.send(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
    assert d.events[-1] == StartTls()


def test_starttls_when_unavailable_is_502_5_5_1() -> None:
    assert greeted().send(b"STARTTLS\r\n") == b"502 5.5.1 Command not implemented\r\n"


def test_starttls_with_argument_is_501_5_5_4() -> None:
    d = Dialogue(TLS_SETTINGS)
    d.send(b"EHLO client.example\r\n")
    assert d.send(b"STARTTLS now\r\n") == b"501 5.5.4 STARTTLS takes no parameters\r\n"


def test_starttls_when_active_is_503_5_5_1() -> None:
    d = Dialogue(TLS_SETTINGS, tls_active=True)
    d.send(b"EHLO client.example\r\n")
    assert d.send(b"STARTTLS\r\n") == b"503 5.5.1 TLS already active\r\n"


def test_commands_pipelined_after_starttls_are_discarded() -> None:
    # CVE-2011-0411: plaintext sent after STARTTLS must not run inside the TLS session.
    d = Dialogue(TLS_SETTINGS)
    d.send(b"EHLO client.example\r\n")
    out = d.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    d.machine.tls_started()
    assert d.send(b"EHLO client.example\r\n") == EHLO_REPLY
    assert d.of(MailFrom) == []


def test_tls_started_discards_plaintext_received_before_handshake() -> None:
    # RFC 3207 §4.2: nothing received before the handshake belongs to the TLS session.
    d = Dialogue(TLS_SETTINGS)
    d.send(b"EHLO client.example\r\n", b"STARTTLS\r\n")
    d.machine.receive_data(b"EHLO evil.example\r\nMAIL FROM:<evil@example.org>\r\n")
    d.machine.tls_started()
    assert d.send(b"NOOP\r\n") == NOOP_OK
    assert d.of(MailFrom) == []


def test_mail_after_tls_started_without_new_ehlo_is_503_5_5_1() -> None:
    d = Dialogue(TLS_SETTINGS)
    d.send(b"EHLO client.example\r\n", b"STARTTLS\r\n")
    d.machine.tls_started()
    assert d.send(b"MAIL FROM:<alice@example.org>\r\n") == NEED_HELO


def test_tls_started_forgets_the_transaction() -> None:
    d = Dialogue(TLS_SETTINGS)
    d.send(b"EHLO client.example\r\nMAIL FROM:<alice@example.org>\r\n", b"STARTTLS\r\n")
    d.machine.tls_started()
    d.send(b"EHLO client.example\r\n")
    assert d.send(b"RCPT TO:<bob@example.test>\r\n") == NEED_MAIL


# ---- AUTH (RFC 4954) ---------------------------------------------------------------------------

EHLO_REPLY_AUTH = EHLO_LINES + b"250-CHUNKING\r\n250 AUTH PLAIN LOGIN\r\n"
AUTH_OK = b"235 2.7.0 Authentication successful\r\n"
AUTH_FAILED = b"535 5.7.8 Authentication credentials invalid\r\n"


def b64(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw)


def plain(user: str = "alice@example.org", password: str = "secret", authzid: str = "") -> bytes:
    return b64(f"{authzid}\0{user}\0{password}")


def tls_greeted(settings: SmtpSettings = AUTH_SETTINGS, login: Login = check_password) -> Dialogue:
    """A session that started in TLS (or finished STARTTLS) and sent EHLO."""
    d = Dialogue(settings, tls_active=True, login=login)
    d.send(b"EHLO client.example\r\n")
    return d


def authenticated(settings: SmtpSettings = AUTH_SETTINGS) -> Dialogue:
    d = tls_greeted(settings)
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == AUTH_OK
    return d


def test_ehlo_in_tls_advertises_auth_plain_login() -> None:
    d = Dialogue(AUTH_SETTINGS, tls_active=True)
    assert d.send(b"EHLO client.example\r\n") == EHLO_REPLY_AUTH


def test_ehlo_before_tls_does_not_advertise_auth() -> None:
    # Postfix smtpd_tls_auth_only: passwords never cross an unencrypted connection.
    assert Dialogue(AUTH_SETTINGS).send(b"EHLO client.example\r\n") == EHLO_REPLY_TLS


def test_ehlo_after_starttls_advertises_auth() -> None:
    d = Dialogue(AUTH_SETTINGS)
    d.send(b"EHLO client.example\r\n", b"STARTTLS\r\n")
    d.machine.tls_started()
    assert d.send(b"EHLO client.example\r\n") == EHLO_REPLY_AUTH


def test_ehlo_advertises_auth_without_tls_when_tls_not_required() -> None:
    settings = SmtpSettings(hostname=HOST, max_message_size=MAX_SIZE, max_recipients=MAX_RCPTS,
                            auth_available=True, auth_requires_tls=False)
    assert Dialogue(settings).send(b"EHLO client.example\r\n") == (
        EHLO_LINES + b"250-CHUNKING\r\n250 AUTH PLAIN LOGIN\r\n")


def test_auth_plain_with_initial_response_is_235_2_7_0() -> None:
    d = tls_greeted()
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == AUTH_OK
    assert d.of(Authenticate) == [Authenticate("alice@example.org", "secret", "PLAIN")]
    assert d.machine.authenticated == "alice@example.org"


def test_auth_plain_without_initial_response_sends_an_empty_challenge() -> None:
    d = tls_greeted()
    assert d.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert d.send(plain() + b"\r\n") == AUTH_OK


def test_auth_login_prompts_for_username_then_password() -> None:
    d = tls_greeted()
    assert d.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"  # "Username:"
    assert d.send(b64("alice@example.org") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
    assert d.send(b64("secret") + b"\r\n") == AUTH_OK
    assert d.of(Authenticate) == [Authenticate("alice@example.org", "secret", "LOGIN")]


def test_auth_login_with_initial_username_prompts_for_password() -> None:
    d = tls_greeted()
    assert d.send(b"AUTH LOGIN " + b64("alice@example.org") + b"\r\n") == (
        b"334 UGFzc3dvcmQ6\r\n")
    assert d.send(b64("secret") + b"\r\n") == AUTH_OK


def test_mechanism_name_is_case_insensitive() -> None:
    assert tls_greeted().send(b"auth plain " + plain() + b"\r\n") == AUTH_OK


def test_wrong_password_is_535_5_7_8_and_the_session_goes_on() -> None:
    d = tls_greeted()
    assert d.send(b"AUTH PLAIN " + plain(password="guess") + b"\r\n") == AUTH_FAILED
    assert d.machine.authenticated == ""
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == AUTH_OK


def test_blocked_login_is_454_4_7_0() -> None:
    d = tls_greeted(login=lambda event: None)
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == (
        b"454 4.7.0 Temporary authentication failure, try again later\r\n")


def test_star_cancels_the_exchange_with_501_5_0_0() -> None:
    d = tls_greeted()
    assert d.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert d.send(b"*\r\n") == b"501 5.0.0 Authentication cancelled\r\n"
    assert d.of(Authenticate) == []
    assert d.send(b"NOOP\r\n") == NOOP_OK  # back to commands


def test_bad_base64_is_501_5_5_2() -> None:
    assert tls_greeted().send(b"AUTH PLAIN not-base64!\r\n") == (
        b"501 5.5.2 Invalid base64 data\r\n")


def test_malformed_plain_response_is_535_5_7_8() -> None:
    assert tls_greeted().send(b"AUTH PLAIN " + b64("no nul at all") + b"\r\n") == AUTH_FAILED


def test_proxy_authorization_is_535_5_7_8() -> None:
    d = tls_greeted()
    assert d.send(b"AUTH PLAIN " + plain(authzid="bob@example.org") + b"\r\n") == AUTH_FAILED
    assert d.of(Authenticate) == []


def test_auth_before_tls_is_538_5_7_11() -> None:
    d = Dialogue(AUTH_SETTINGS)
    d.send(b"EHLO client.example\r\n")
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == (
        b"538 5.7.11 Encryption required for requested authentication mechanism\r\n")
    assert d.of(Authenticate) == []


def test_second_auth_is_503_5_5_1() -> None:
    assert authenticated().send(b"AUTH PLAIN " + plain() + b"\r\n") == (
        b"503 5.5.1 Already authenticated\r\n")


def test_auth_during_a_transaction_is_503_5_5_1() -> None:
    d = tls_greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == (
        b"503 5.5.1 AUTH not permitted during a mail transaction\r\n")


def test_auth_when_not_offered_is_502_5_5_1() -> None:
    d = Dialogue(TLS_SETTINGS, tls_active=True)
    d.send(b"EHLO client.example\r\n")
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == b"502 5.5.1 Command not implemented\r\n"


def test_auth_before_ehlo_is_503_5_5_1() -> None:
    d = Dialogue(AUTH_SETTINGS, tls_active=True)
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == NEED_HELO


def test_auth_after_helo_is_503_5_5_1() -> None:
    d = Dialogue(AUTH_SETTINGS, tls_active=True)
    d.send(b"HELO client.example\r\n")
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == b"503 5.5.1 Send EHLO first\r\n"


def test_unknown_mechanism_is_504_5_5_4() -> None:
    assert tls_greeted().send(b"AUTH CRAM-MD5\r\n") == (
        b"504 5.5.4 Unrecognized authentication type\r\n")


@pytest.mark.parametrize("line", [b"AUTH\r\n", b"AUTH PLAIN a b\r\n"])
def test_auth_syntax_error_is_501_5_5_4(line: bytes) -> None:
    assert tls_greeted().send(line) == b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"


def test_auth_line_may_exceed_512_octets() -> None:
    # RFC 4954 §4: AUTH with an initial response may be up to 12288 octets.
    line = b"AUTH PLAIN " + plain("long@example.org", PASSWORDS["long@example.org"]) + b"\r\n"
    assert len(line) > 512
    assert tls_greeted().send(line) == AUTH_OK


def test_sasl_response_over_the_limit_is_500_5_5_6_and_ends_the_exchange() -> None:
    d = tls_greeted()
    d.send(b"AUTH PLAIN\r\n")
    assert d.send(b"A" * (MAX_AUTH_LINE + 10), b"A" * 100 + b"\r\n") == (
        b"500 5.5.6 Authentication exchange line is too long\r\n")
    assert d.send(b"NOOP\r\n") == NOOP_OK


def test_commands_pipelined_after_auth_wait_for_the_decision() -> None:
    # RFC 4954 §4: AUTH PLAIN with an initial response may be followed by pipelined commands.
    d = tls_greeted(SUBMISSION_SETTINGS)
    out = d.send(b"AUTH PLAIN " + plain() + b"\r\nMAIL FROM:<alice@example.org>\r\n")
    assert out == AUTH_OK + SENDER_OK


def test_machine_pauses_until_the_glue_answers_authenticate() -> None:
    m = ServerMachine(AUTH_SETTINGS, tls_active=True)
    m.receive_data(b"EHLO client.example\r\nAUTH PLAIN " + plain() + b"\r\nNOOP\r\n")
    assert isinstance(m.next_event(), Authenticate)
    assert m.next_event() is Signal.PAUSED
    m.auth_ok("alice@example.org")
    assert m.next_event() is Signal.NEED_DATA
    assert m.data_to_send().endswith(AUTH_OK + NOOP_OK)


def test_accept_on_a_pending_authenticate_is_a_glue_bug() -> None:
    m = ServerMachine(AUTH_SETTINGS, tls_active=True)
    m.receive_data(b"EHLO client.example\r\nAUTH PLAIN " + plain() + b"\r\n")
    assert isinstance(m.next_event(), Authenticate)
    with pytest.raises(RuntimeError):
        m.accept()
    m.auth_failed()
    with pytest.raises(RuntimeError):
        m.auth_ok("alice@example.org")


def test_authenticate_repr_hides_the_password() -> None:
    assert "secret" not in repr(Authenticate("alice@example.org", "secret", "PLAIN"))


def test_rset_and_ehlo_keep_the_authentication() -> None:
    d = authenticated()
    d.send(b"RSET\r\nEHLO client.example\r\n")
    assert d.machine.authenticated == "alice@example.org"


def test_tls_started_forgets_the_authentication() -> None:
    settings = SmtpSettings(hostname=HOST, max_message_size=MAX_SIZE, max_recipients=MAX_RCPTS,
                            tls_available=True, auth_available=True, auth_requires_tls=False)
    d = Dialogue(settings)
    d.send(b"EHLO client.example\r\n")
    assert d.send(b"AUTH PLAIN " + plain() + b"\r\n") == AUTH_OK
    d.send(b"STARTTLS\r\n")
    d.machine.tls_started()
    assert d.machine.authenticated == ""


def test_submission_mail_before_auth_is_530_5_7_0() -> None:
    d = tls_greeted(SUBMISSION_SETTINGS)
    assert d.send(b"MAIL FROM:<alice@example.org>\r\n") == (
        b"530 5.7.0 Authentication required\r\n")
    assert d.of(MailFrom) == []


def test_submission_mail_after_auth_is_accepted() -> None:
    d = authenticated(SUBMISSION_SETTINGS)
    assert d.send(b"MAIL FROM:<alice@example.org>\r\n") == SENDER_OK


def test_submission_before_tls_also_refuses_mail_with_530() -> None:
    d = Dialogue(SUBMISSION_SETTINGS)
    d.send(b"EHLO client.example\r\n")
    assert d.send(b"MAIL FROM:<alice@example.org>\r\n") == (
        b"530 5.7.0 Authentication required\r\n")


def test_mail_auth_parameter_is_accepted_and_ignored() -> None:
    # RFC 4954 §5: AUTH=<mailbox> or AUTH=<> names the original submitter.
    d = authenticated()
    assert d.send(b"MAIL FROM:<alice@example.org> AUTH=<>\r\n") == SENDER_OK
    assert d.of(MailFrom)[0].sender == Mailbox("alice", "example.org")


def test_mail_auth_parameter_without_auth_support_is_555() -> None:
    assert greeted().send(b"MAIL FROM:<alice@example.org> AUTH=<>\r\n") == (
        b"555 5.5.4 Unsupported MAIL/RCPT parameter\r\n")


def test_failed_auth_counts_towards_the_error_limit() -> None:
    d = tls_greeted()
    out = d.send((b"AUTH PLAIN " + plain(password="guess") + b"\r\n") * MAX_ERRORS)
    assert out == AUTH_FAILED * MAX_ERRORS + b"421 4.7.0 Too many errors, closing connection\r\n"


# ---- SMTPUTF8 (RFC 6531) -----------------------------------------------------------------------


def test_non_ascii_recipient_accepted_with_smtputf8() -> None:
    d = greeted()
    assert d.send(b"MAIL FROM:<alice@example.org> SMTPUTF8\r\n") == SENDER_OK
    assert d.send("RCPT TO:<josé@example.test>\r\n".encode()) == RCPT_OK
    assert d.of(MailFrom)[0].smtputf8 is True
    assert d.of(RcptTo) == [RcptTo(Mailbox("josé", "example.test"))]


def test_non_ascii_sender_accepted_with_smtputf8() -> None:
    d = greeted()
    assert d.send("MAIL FROM:<josé@exämple.org> SMTPUTF8\r\n".encode()) == SENDER_OK
    assert d.of(MailFrom)[0].sender == Mailbox("josé", "exämple.org")


def test_non_ascii_recipient_without_smtputf8_is_553_5_6_7() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org>\r\n")
    assert d.send("RCPT TO:<josé@example.test>\r\n".encode()) == (
        b"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n")
    assert d.of(RcptTo) == []


def test_non_ascii_sender_without_smtputf8_is_553_5_6_7() -> None:
    # RFC 6531 §3.7.4.1: X.6.7 "Non-ASCII addresses not permitted for that sender/recipient".
    assert greeted().send("MAIL FROM:<josé@example.org>\r\n".encode()) == (
        b"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n")


def test_smtputf8_flag_reaches_the_message() -> None:
    d = greeted()
    d.send(b"MAIL FROM:<alice@example.org> SMTPUTF8\r\nRCPT TO:<bob@example.test>\r\n")
    d.send(b"DATA\r\n", b"x\r\n.\r\n")
    assert d.of(MessageReceived)[0].smtputf8 is True


# ---- errors and closing -------------------------------------------------------------------------


def test_twenty_errors_close_with_421() -> None:
    d = greeted()
    out = d.send(b"FROB\r\n" * MAX_ERRORS + b"NOOP\r\n")
    assert MAX_ERRORS == 20
    assert out == UNKNOWN * 20 + b"421 4.7.0 Too many errors, closing connection\r\n"
    assert d.events[-1] == Closed(by_peer=False)


def test_nineteen_errors_do_not_close() -> None:
    d = greeted()
    assert d.send(b"FROB\r\n" * 19 + b"NOOP\r\n") == UNKNOWN * 19 + NOOP_OK
    assert d.of(Closed) == []


def test_peer_close_is_closed_by_peer() -> None:
    d = greeted()
    assert d.send(b"") == b""
    assert d.events == [Closed(by_peer=True)]


def test_commands_buffered_before_peer_close_are_answered() -> None:
    m = greeted().machine
    m.receive_data(b"NOOP\r\n")
    m.receive_data(b"")
    assert m.next_event() == Closed(by_peer=True)
    assert m.data_to_send() == NOOP_OK


def test_close_with_writes_the_reply_and_closes() -> None:
    d = greeted()
    d.machine.close_with(R.IDLE_TIMEOUT)
    assert d.send(b"NOOP\r\n") == b"421 4.4.2 Idle timeout, closing connection\r\n"
    assert d.events == [Closed(by_peer=False)]


def test_reject_with_421_closes() -> None:
    d = greeted(decide=lambda e: R.LOCAL_ERROR)
    out = d.send(b"MAIL FROM:<alice@example.org>\r\nNOOP\r\n")
    assert out == b"421 4.3.0 Local error, closing connection\r\n"
    assert d.events[-1] == Closed(by_peer=False)


# ---- fuzz: any bytes, any chunking ------------------------------------------------------------

_TOKENS = [
    b"EHLO client.example\r\n", b"HELO client.example\r\n", b"EHLO\r\n",
    b"MAIL FROM:<a@example.org>\r\n", b"MAIL FROM:<> SIZE=5000\r\n",
    b"MAIL FROM:<a@example.org> SMTPUTF8 BODY=8BITMIME\r\n", b"MAIL FROM:<bad>\r\n",
    b"RCPT TO:<b@example.test>\r\n", "RCPT TO:<é@example.test>\r\n".encode(), b"RCPT TO:<>\r\n",
    b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT 0 LAST\r\n", b"BDAT x\r\n",
    b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n", b"HELP\r\n", b"STARTTLS\r\n", b"QUIT\r\n",
    b"\r\n.\r\n", b".\r\n", b"..\r\n", b"\n.\n", b"\r.\r", b"\n", b"\r", b"\r\n", b".", b"\x00",
    b"x" * 600, b"y" * 1200 + b"\r\n", b"hello\r\n", b" ", b"FROB\r\n", b"\xff\xfe",
    b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.org\0secret") + b"\r\n",
    b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"AUTH LOGIN YWxpY2U=\r\n", b"AUTH X\r\n",
    b"*\r\n", b"c2VjcmV0\r\n", b"=\r\n", b"MAIL FROM:<a@example.org> AUTH=<>\r\n",
]
_REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*)$", re.S)
_STATUS = re.compile(rb"^([245])\.\d{1,3}\.\d{1,3} ")
_EHLO_KEYWORDS = {b"PIPELINING", b"SIZE", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SMTPUTF8",
                  b"CHUNKING", b"STARTTLS", b"AUTH"}
_DECISIONS = [None, R.USER_UNKNOWN, R.RELAY_DENIED, R.QUEUE_FULL, R.queued("Q1"),
              R.TEMP_RECIPIENT_FAILURE, R.LOCAL_ERROR]


def _check_reply_octets(out: bytes) -> None:
    assert out == b"" or out.endswith(b"\r\n")
    for line in out.split(b"\r\n")[:-1]:
        m = _REPLY_LINE.match(line)
        assert m, f"reply line without a 3-digit code: {line!r}"
        code, text = m.group(1), m.group(3)
        status = _STATUS.match(text)
        if status:
            # RFC 3463 §2: the class digit equals the reply code's first digit.
            assert status.group(1) == code[:1], line
        elif code in (b"354", b"334"):
            pass  # intermediate replies (DATA, AUTH challenge): RFC 3463 has no class 3
        else:
            # RFC 2034 §3: only the greeting and the EHLO/HELO reply go without one.
            assert code == b"250", line
            assert text.startswith(HOST.encode()) or text.split(b" ")[0] in _EHLO_KEYWORDS, line


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), settings_=st.sampled_from([TLS_SETTINGS, AUTH_SETTINGS,
                                                  SUBMISSION_SETTINGS]))
def test_fuzz_machine_never_raises_and_replies_are_well_formed(
        data: st.DataObject, settings_: SmtpSettings) -> None:
    pieces = data.draw(st.lists(
        st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=40)), max_size=40))
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)]) if b > a]
    decisions = iter(data.draw(st.lists(st.sampled_from(_DECISIONS), min_size=64, max_size=64)))

    logins = iter(data.draw(st.lists(st.sampled_from(["alice@example.org", "", None]),
                                     min_size=32, max_size=32)))
    m = ServerMachine(settings_)
    out = []
    closed = False
    for chunk in [*chunks, b""]:
        m.receive_data(chunk)
        while True:
            event = m.next_event()
            if event is Signal.NEED_DATA:
                break
            assert event is not Signal.PAUSED
            if isinstance(event, (MailFrom, RcptTo, MessageReceived)):
                reply = next(decisions, None)
                if reply is None or reply.is_positive:
                    m.accept(reply)
                else:
                    m.reject(reply)
            elif isinstance(event, Authenticate):
                account = next(logins, "")
                m.auth_ok(account) if account else m.auth_failed(temporary=account is None)
            elif isinstance(event, StartTls):
                m.tls_started()
            elif isinstance(event, Closed):
                closed = True
        out.append(m.data_to_send())
    _check_reply_octets(b"".join(out))
    assert closed, "the session must end once the peer has closed"
