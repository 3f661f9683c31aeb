"""Pop3Machine driven with byte strings: exact response octets and events.

RFC 1939, CAPA/PIPELINING/response codes (RFC 2449, RFC 3206), STLS (RFC 2595), AUTH
(RFC 5034). `Glue` plays session.py: it feeds bytes, drains next_event() and answers
every decision at once from the fixtures below (alice / secret, three messages).
"""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.mda.pop3.events import (
    Authenticate,
    Closed,
    Event,
    NeedMessage,
    Signal,
    StartTls,
    Update,
)
from relay.mda.pop3.machine import (
    MAX_AUTH_FAILURES,
    MAX_ERRORS,
    MAX_GARBAGE,
    MAX_LINE,
    Pop3Machine,
    State,
    UsageError,
)

USER = "alice@example.test"
PASSWORD = "secret"
MSG1 = (b"From: a@example.test\r\n"
        b"Subject: one\r\n"
        b"\r\n"
        b"Hello\r\n"
        b".\r\n"
        b"..dots\r\n"
        b".x\r\n"
        b"end\r\n")
MSG2 = b"Subject: two\r\n\r\nno final newline"
MSG3 = b"Subject: three\n\nunix\n.dot\n"
MESSAGES = [MSG1, MSG2, MSG3]
MAILDROP = [("uid-1", len(MSG1)), ("uid-2", len(MSG2)), ("uid-3", len(MSG3))]
TOTAL = sum(len(m) for m in MESSAGES)

GREETING = b"+OK relay POP3 ready\r\n"
SEND_PASS = b"+OK send PASS\r\n"
LOGGED_IN = b"+OK maildrop has 3 messages (%d octets)\r\n" % TOTAL
BAD_LOGIN = b"-ERR [AUTH] invalid user name or password\r\n"
PLAINTEXT_REFUSED = b"-ERR [AUTH] plaintext authentication disabled\r\n"
BYE = b"+OK relay POP3 server signing off\r\n"
WRONG_STATE = b"-ERR command not valid in this state\r\n"
UNKNOWN = b"-ERR unknown command\r\n"
SYNTAX = b"-ERR syntax error\r\n"
TOO_LONG = b"-ERR line too long\r\n"
NO_SUCH = b"-ERR no such message\r\n"
BAD_NUMBER = b"-ERR invalid message number\r\n"
LOGIN = f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode()
CAPA_TAIL = b"RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


class Glue:
    """Answers decisions as session.py would; records events; collects output."""

    def __init__(self, plaintext: bool = True, tls_available: bool = False,
                 tls_active: bool = False, update_ok: bool = True,
                 answer_tls: bool = True) -> None:
        self.m = Pop3Machine(plaintext_allowed=plaintext, tls_available=tls_available,
                             tls_active=tls_active)
        self.events: list[Event] = []
        self.update_ok = update_ok
        self.answer_tls = answer_tls
        self.in_use = False

    @property
    def closed(self) -> bool:
        return any(isinstance(e, Closed) for e in self.events)

    def send(self, data: bytes) -> bytes:
        self.m.receive_data(data)
        return self.pump()

    def pump(self) -> bytes:
        while True:
            event = self.m.next_event()
            if isinstance(event, Signal):
                break
            self.events.append(event)
            if isinstance(event, Authenticate):
                if event.user != USER or event.password != PASSWORD:
                    self.m.auth_failed("invalid user name or password")
                elif self.in_use:
                    self.m.auth_ok()
                    self.m.auth_failed("mailbox locked", in_use=True)
                else:
                    self.m.auth_ok()
                    self.m.open_maildrop(MAILDROP)
            elif isinstance(event, NeedMessage):
                self.m.message(MESSAGES[event.index])
            elif isinstance(event, StartTls) and self.answer_tls:
                self.m.tls_started()
            elif isinstance(event, Update):
                self.m.update_done(self.update_ok)
        return self.m.data_to_send()


def logged_in(**kwargs: bool) -> Glue:
    glue = Glue(**kwargs)
    assert glue.send(LOGIN) == SEND_PASS + LOGGED_IN
    return glue


# ---- greeting and CAPA ------------------------------------------------------------------------


def test_greeting() -> None:
    assert Pop3Machine(plaintext_allowed=True).greeting() == GREETING


def test_capa_before_login_offers_user_sasl_and_stls() -> None:
    glue = Glue(tls_available=True)
    assert glue.send(b"CAPA\r\n") == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN LOGIN\r\n"
        + CAPA_TAIL + b"STLS\r\nIMPLEMENTATION relay\r\n.\r\n")


def test_capa_without_plaintext_hides_user_and_sasl() -> None:
    glue = Glue(plaintext=False, tls_available=True)
    assert glue.send(b"CAPA\r\n") == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\n" + CAPA_TAIL
        + b"STLS\r\nIMPLEMENTATION relay\r\n.\r\n")


def test_capa_over_tls_has_no_stls() -> None:
    glue = Glue(plaintext=False, tls_available=True, tls_active=True)
    assert glue.send(b"CAPA\r\n") == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN LOGIN\r\n"
        + CAPA_TAIL + b"IMPLEMENTATION relay\r\n.\r\n")


def test_capa_in_transaction_lists_only_what_still_applies() -> None:
    glue = logged_in(tls_available=True)
    assert glue.send(b"CAPA\r\n") == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\n" + CAPA_TAIL
        + b"IMPLEMENTATION relay\r\n.\r\n")


def test_capa_takes_no_argument() -> None:
    assert Glue().send(b"CAPA X\r\n") == SYNTAX


# ---- USER / PASS ------------------------------------------------------------------------------


def test_user_pass_logs_in() -> None:
    glue = logged_in()
    assert glue.events == [Authenticate(USER, PASSWORD, "USER")]
    assert glue.m.state is State.TRANSACTION
    assert glue.m.user == USER


def test_wrong_password_is_auth_error_and_stays_in_authorization() -> None:
    glue = Glue()
    assert glue.send(f"USER {USER}\r\nPASS nope\r\n".encode()) == SEND_PASS + BAD_LOGIN
    assert glue.m.state is State.AUTHORIZATION
    assert glue.send(LOGIN) == SEND_PASS + LOGGED_IN


def test_password_keeps_its_spaces() -> None:
    glue = Glue()
    glue.send(f"USER {USER}\r\nPASS  two words \r\n".encode())
    assert glue.events == [Authenticate(USER, " two words ", "USER")]


def test_authenticate_repr_hides_the_password() -> None:
    assert PASSWORD not in repr(Authenticate(USER, PASSWORD, "USER"))


def test_pass_without_user_is_refused() -> None:
    assert Glue().send(b"PASS secret\r\n") == b"-ERR send USER first\r\n"


def test_pass_must_follow_user_immediately() -> None:
    glue = Glue()
    out = glue.send(f"USER {USER}\r\nCAPA\r\nPASS {PASSWORD}\r\n".encode())
    assert out.startswith(SEND_PASS + b"+OK Capability list follows\r\n")
    assert out.endswith(b".\r\n-ERR send USER first\r\n")
    assert glue.events == []


def test_user_needs_exactly_one_argument() -> None:
    assert Glue().send(b"USER\r\nUSER a b\r\nUSER \xff\r\n") == SYNTAX * 3


def test_empty_password_is_a_syntax_error() -> None:
    assert Glue().send(b"USER alice\r\nPASS\r\n") == SEND_PASS + SYNTAX


@pytest.mark.parametrize("command", [b"USER alice", b"PASS secret", b"AUTH PLAIN",
                                     b"AUTH LOGIN"])
def test_plaintext_refused_without_tls(command: bytes) -> None:
    glue = Glue(plaintext=False)
    assert glue.send(command + b"\r\n") == PLAINTEXT_REFUSED
    assert glue.events == []


def test_temporary_failure_uses_sys_temp() -> None:
    glue = Glue()
    glue.send(f"USER {USER}\r\n".encode())
    glue.m.receive_data(f"PASS {PASSWORD}\r\n".encode())
    assert isinstance(glue.m.next_event(), Authenticate)
    glue.m.auth_failed("account store unavailable", temporary=True)
    assert glue.m.data_to_send() == (b"-ERR [SYS/TEMP] account store unavailable\r\n")


def test_locked_maildrop_is_in_use() -> None:
    glue = Glue()
    glue.in_use = True
    assert glue.send(LOGIN) == SEND_PASS + b"-ERR [IN-USE] mailbox locked\r\n"
    assert glue.m.state is State.AUTHORIZATION and glue.m.user == ""


def test_session_closes_after_repeated_auth_failures() -> None:
    glue = Glue()
    bad = f"USER {USER}\r\nPASS nope\r\n".encode()
    out = glue.send(bad * MAX_AUTH_FAILURES + LOGIN)
    assert out == (SEND_PASS + BAD_LOGIN) * MAX_AUTH_FAILURES
    assert glue.closed
    assert glue.m.state is State.CLOSED


def test_glue_reason_cannot_inject_lines() -> None:
    glue = Glue()
    glue.m.receive_data(f"USER {USER}\r\nPASS x\r\n".encode())
    glue.m.next_event()
    glue.m.auth_failed("bad\r\n+OK forged")
    assert glue.m.data_to_send() == SEND_PASS + b"-ERR [AUTH] bad  +OK forged\r\n"


def test_apop_is_not_supported() -> None:
    assert Glue().send(b"APOP alice 0123456789abcdef\r\n") == b"-ERR APOP not supported\r\n"


# ---- AUTH (RFC 5034) ---------------------------------------------------------------------------


def test_auth_plain_with_initial_response() -> None:
    glue = Glue()
    out = glue.send(b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n")
    assert out == LOGGED_IN
    assert glue.events == [Authenticate(USER, PASSWORD, "PLAIN")]


def test_auth_plain_with_challenge() -> None:
    glue = Glue()
    assert glue.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert glue.send(b64(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n") == LOGGED_IN


def test_auth_plain_with_wrong_password() -> None:
    glue = Glue()
    out = glue.send(b"AUTH PLAIN " + b64(f"\0{USER}\0nope".encode()) + b"\r\n")
    assert out == BAD_LOGIN


def test_auth_login() -> None:
    glue = Glue()
    assert glue.send(b"AUTH LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert glue.send(b64(USER.encode()) + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert glue.send(b64(PASSWORD.encode()) + b"\r\n") == LOGGED_IN
    assert glue.events == [Authenticate(USER, PASSWORD, "LOGIN")]


def test_auth_login_with_initial_username() -> None:
    glue = Glue()
    assert glue.send(b"auth login " + b64(USER.encode()) + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert glue.send(b64(PASSWORD.encode()) + b"\r\n") == LOGGED_IN


def test_auth_star_cancels() -> None:
    glue = Glue()
    assert glue.send(b"AUTH LOGIN\r\n*\r\n") == (b"+ VXNlcm5hbWU6\r\n"
                                                b"-ERR authentication cancelled\r\n")
    assert glue.m.state is State.AUTHORIZATION and glue.m.errors == 0
    assert glue.send(LOGIN) == SEND_PASS + LOGGED_IN


def test_auth_bad_base64() -> None:
    assert Glue().send(b"AUTH PLAIN\r\n!!!\r\n") == b"+ \r\n-ERR invalid base64 data\r\n"


def test_auth_empty_initial_response_is_malformed_plain() -> None:
    assert Glue().send(b"AUTH PLAIN =\r\n") == b"-ERR malformed response\r\n"


def test_auth_proxy_authzid_is_refused() -> None:
    out = Glue().send(b"AUTH PLAIN " + b64(b"bob\0alice\0secret") + b"\r\n")
    assert out == b"-ERR proxy authorization not permitted\r\n"


def test_auth_unknown_mechanism() -> None:
    assert Glue().send(b"AUTH CRAM-MD5\r\n") == b"-ERR unsupported authentication mechanism\r\n"


def test_auth_too_many_arguments() -> None:
    assert Glue().send(b"AUTH PLAIN a b\r\n") == SYNTAX


def test_bare_auth_lists_mechanisms() -> None:
    assert Glue().send(b"AUTH\r\n") == b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"


def test_bare_auth_lists_nothing_without_plaintext() -> None:
    assert Glue(plaintext=False).send(b"AUTH\r\n") == b"+OK\r\n.\r\n"


def test_sasl_response_may_exceed_the_command_line_limit() -> None:
    glue = Glue()
    glue.send(b"AUTH PLAIN\r\n")
    long_password = "p" * 300
    glue.send(b64(f"\0{USER}\0{long_password}".encode()) + b"\r\n")
    assert glue.events == [Authenticate(USER, long_password, "PLAIN")]


def test_auth_in_transaction_is_refused() -> None:
    assert logged_in().send(b"AUTH PLAIN\r\nUSER x\r\n") == WRONG_STATE * 2


# ---- TRANSACTION: STAT, LIST, UIDL, DELE, RSET, NOOP -----------------------------------------------


def test_stat() -> None:
    assert logged_in().send(b"STAT\r\n") == b"+OK 3 %d\r\n" % TOTAL


def test_list_all() -> None:
    assert logged_in().send(b"LIST\r\n") == (
        b"+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n"
        % (TOTAL, len(MSG1), len(MSG2), len(MSG3)))


def test_list_one() -> None:
    assert logged_in().send(b"LIST 2\r\n") == b"+OK 2 %d\r\n" % len(MSG2)


def test_uidl_all_and_one() -> None:
    assert logged_in().send(b"UIDL\r\nUIDL 3\r\n") == (
        b"+OK unique-id listing follows\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n"
        b"+OK 3 uid-3\r\n")


def test_deleted_messages_disappear_from_stat_list_and_uidl() -> None:
    glue = logged_in()
    assert glue.send(b"DELE 2\r\n") == b"+OK message 2 deleted\r\n"
    assert glue.send(b"STAT\r\nLIST\r\nUIDL\r\n") == (
        b"+OK 2 %d\r\n" % (len(MSG1) + len(MSG3))
        + b"+OK 2 messages (%d octets)\r\n1 %d\r\n3 %d\r\n.\r\n"
        % (len(MSG1) + len(MSG3), len(MSG1), len(MSG3))
        + b"+OK unique-id listing follows\r\n1 uid-1\r\n3 uid-3\r\n.\r\n")


@pytest.mark.parametrize("command", [b"LIST 2", b"UIDL 2", b"RETR 2", b"TOP 2 0", b"DELE 2"])
def test_deleted_message_is_refused(command: bytes) -> None:
    glue = logged_in()
    glue.send(b"DELE 2\r\n")
    assert glue.send(command + b"\r\n") == b"-ERR message 2 already deleted\r\n"
    assert not any(isinstance(e, NeedMessage) for e in glue.events)


def test_all_deleted_leaves_an_empty_listing() -> None:
    glue = logged_in()
    glue.send(b"DELE 1\r\nDELE 2\r\nDELE 3\r\n")
    assert glue.send(b"LIST\r\nUIDL\r\nSTAT\r\n") == (
        b"+OK 0 messages (0 octets)\r\n.\r\n+OK unique-id listing follows\r\n.\r\n+OK 0 0\r\n")


def test_rset_undeletes() -> None:
    glue = logged_in()
    glue.send(b"DELE 1\r\nDELE 3\r\n")
    assert glue.send(b"RSET\r\n") == LOGGED_IN
    assert glue.send(b"STAT\r\n") == b"+OK 3 %d\r\n" % TOTAL


def test_noop() -> None:
    assert logged_in().send(b"NOOP\r\n") == b"+OK\r\n"


@pytest.mark.parametrize(("command", "reply"), [
    (b"LIST 0", NO_SUCH), (b"LIST 4", NO_SUCH), (b"LIST 99999999999", BAD_NUMBER),
    (b"LIST x", BAD_NUMBER), (b"LIST -1", BAD_NUMBER), (b"LIST +1", BAD_NUMBER),
    (b"LIST 1 2", SYNTAX), (b"LIST \xd9\xa1", BAD_NUMBER), (b"RETR", SYNTAX),
    (b"RETR 1 2", SYNTAX), (b"DELE", SYNTAX), (b"DELE 0", NO_SUCH), (b"UIDL 9", NO_SUCH),
    (b"TOP 1", SYNTAX), (b"TOP 1 -1", SYNTAX), (b"TOP 1 x", SYNTAX), (b"TOP 9 1", NO_SUCH),
    (b"TOP x 1", BAD_NUMBER), (b"STAT 1", SYNTAX), (b"RSET x", SYNTAX), (b"NOOP x", SYNTAX),
])
def test_bad_arguments(command: bytes, reply: bytes) -> None:
    glue = logged_in()
    assert glue.send(command + b"\r\n") == reply
    assert glue.m.state is State.TRANSACTION


@pytest.mark.parametrize("command", [b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP",
                                     b"RSET", b"TOP 1 1", b"UIDL"])
def test_transaction_commands_need_login(command: bytes) -> None:
    assert Glue().send(command + b"\r\n") == WRONG_STATE


def test_unknown_command() -> None:
    assert Glue().send(b"XYZZY\r\n\r\n") == UNKNOWN * 2


def test_commands_are_case_insensitive() -> None:
    glue = Glue()
    assert glue.send(f"user {USER}\r\npAsS {PASSWORD}\r\n".encode()) == SEND_PASS + LOGGED_IN
    assert glue.send(b"stat\r\n") == b"+OK 3 %d\r\n" % TOTAL


def test_bare_lf_ends_a_command_line() -> None:
    assert Glue().send(f"USER {USER}\nPASS {PASSWORD}\n".encode()) == SEND_PASS + LOGGED_IN


# ---- RETR and TOP --------------------------------------------------------------------------


def test_retr_byte_stuffs_lines_starting_with_a_dot() -> None:
    glue = logged_in()
    assert glue.send(b"RETR 1\r\n") == (
        b"+OK %d octets\r\n" % len(MSG1)
        + b"From: a@example.test\r\nSubject: one\r\n\r\nHello\r\n"
        b"..\r\n...dots\r\n..x\r\nend\r\n.\r\n")
    assert glue.events[-1] == NeedMessage(0, "uid-1", None)


def test_retr_adds_crlf_before_the_terminator_when_missing() -> None:
    assert logged_in().send(b"RETR 2\r\n") == (
        b"+OK %d octets\r\nSubject: two\r\n\r\nno final newline\r\n.\r\n" % len(MSG2))


def test_retr_converts_bare_lf_to_crlf() -> None:
    assert logged_in().send(b"RETR 3\r\n") == (
        b"+OK %d octets\r\nSubject: three\r\n\r\nunix\r\n..dot\r\n.\r\n" % len(MSG3))


def test_retr_of_a_message_starting_with_a_dot() -> None:
    glue = logged_in()
    glue.m.receive_data(b"RETR 1\r\n")
    assert isinstance(glue.m.next_event(), NeedMessage)
    glue.m.message(b".hidden\r\nx\r\n")
    assert glue.m.data_to_send() == b"+OK %d octets\r\n..hidden\r\nx\r\n.\r\n" % len(MSG1)


def test_retr_of_an_empty_message() -> None:
    glue = logged_in()
    glue.m.receive_data(b"RETR 1\r\n")
    glue.m.next_event()
    glue.m.message(b"")
    assert glue.m.data_to_send() == b"+OK %d octets\r\n.\r\n" % len(MSG1)


def test_retr_does_not_copy_the_message() -> None:
    glue = logged_in()
    glue.m.receive_data(b"RETR 2\r\n")
    glue.m.next_event()
    data = MSG2 * 1000
    glue.m.message(data)
    chunks = glue.m.chunks_to_send()
    assert any(isinstance(c, memoryview) and c.obj is data and len(c) == len(data)
               for c in chunks)
    assert glue.m.data_to_send() == b""


def test_message_failed() -> None:
    glue = logged_in()
    glue.m.receive_data(b"RETR 1\r\nNOOP\r\n")
    glue.m.next_event()
    glue.m.message_failed("message vanished")
    assert glue.m.next_event() is Signal.NEED_DATA
    assert glue.m.data_to_send() == b"-ERR message vanished\r\n+OK\r\n"


def test_top_0_sends_the_header_and_blank_line() -> None:
    glue = logged_in()
    assert glue.send(b"TOP 1 0\r\n") == (
        b"+OK top of message follows\r\nFrom: a@example.test\r\nSubject: one\r\n\r\n.\r\n")
    assert glue.events[-1] == NeedMessage(0, "uid-1", 0)


def test_top_n_sends_n_body_lines_stuffed() -> None:
    assert logged_in().send(b"TOP 1 3\r\n") == (
        b"+OK top of message follows\r\nFrom: a@example.test\r\nSubject: one\r\n\r\n"
        b"Hello\r\n..\r\n...dots\r\n.\r\n")


def test_top_beyond_the_body_sends_everything() -> None:
    assert logged_in().send(b"TOP 2 10\r\n") == (
        b"+OK top of message follows\r\nSubject: two\r\n\r\nno final newline\r\n.\r\n")


def test_top_with_bare_lf_message() -> None:
    assert logged_in().send(b"TOP 3 1\r\n") == (
        b"+OK top of message follows\r\nSubject: three\r\n\r\nunix\r\n.\r\n")


def test_top_of_a_message_without_a_body() -> None:
    glue = logged_in()
    glue.m.receive_data(b"TOP 1 0\r\n")
    glue.m.next_event()
    glue.m.message(b"Subject: only\r\nX: y\r\n")
    assert glue.m.data_to_send() == (
        b"+OK top of message follows\r\nSubject: only\r\nX: y\r\n.\r\n")


def test_top_of_a_message_without_a_header() -> None:
    glue = logged_in()
    glue.m.receive_data(b"TOP 1 1\r\n")
    glue.m.next_event()
    glue.m.message(b"\r\nfirst\r\nsecond\r\n")
    assert glue.m.data_to_send() == b"+OK top of message follows\r\n\r\nfirst\r\n.\r\n"


# ---- QUIT and UPDATE ----------------------------------------------------------------------


def test_quit_in_authorization_closes_without_update() -> None:
    glue = Glue()
    assert glue.send(b"QUIT\r\n") == BYE
    assert glue.events == [Closed(by_peer=False)]


def test_quit_in_transaction_updates_with_the_deleted_indexes() -> None:
    glue = logged_in()
    glue.send(b"DELE 3\r\nDELE 1\r\n")
    assert glue.send(b"QUIT\r\n") == BYE
    assert glue.events[-2:] == [Update((0, 2), ("uid-1", "uid-3")), Closed(by_peer=False)]


def test_quit_without_deletions_still_updates() -> None:
    glue = logged_in()
    glue.send(b"QUIT\r\n")
    assert glue.events[-2:] == [Update((), ()), Closed(by_peer=False)]


def test_rset_then_quit_deletes_nothing() -> None:
    glue = logged_in()
    glue.send(b"DELE 1\r\nRSET\r\nQUIT\r\n")
    assert Update((), ()) in glue.events


def test_failed_update_is_reported() -> None:
    glue = logged_in(update_ok=False)
    glue.send(b"DELE 1\r\n")
    assert glue.send(b"QUIT\r\n") == b"-ERR some deleted messages not removed\r\n"
    assert glue.closed


def test_commands_after_quit_are_ignored() -> None:
    glue = logged_in()
    assert glue.send(b"QUIT\r\nSTAT\r\n") == BYE
    assert glue.send(b"NOOP\r\n") == b""


def test_peer_close_in_transaction_skips_update() -> None:
    glue = logged_in()
    glue.send(b"DELE 1\r\n")
    glue.send(b"")
    assert glue.events[-1] == Closed(by_peer=True)
    assert not any(isinstance(e, Update) for e in glue.events)


def test_peer_close_after_pipelined_commands_answers_them_first() -> None:
    glue = logged_in()
    glue.m.receive_data(b"NOOP\r\n")
    assert glue.send(b"") == b"+OK\r\n"
    assert glue.events[-1] == Closed(by_peer=True)


def test_glue_can_close_the_session() -> None:
    glue = logged_in()
    glue.m.close("autologout; idle for too long")
    assert glue.pump() == b"-ERR autologout; idle for too long\r\n"
    assert glue.events[-1] == Closed(by_peer=False)


# ---- STLS (RFC 2595) ---------------------------------------------------------------------------


def test_stls_upgrades_and_discards_pipelined_plaintext() -> None:
    glue = Glue(plaintext=False, tls_available=True, answer_tls=False)
    assert glue.send(b"STLS\r\nUSER mallory\r\n") == b"+OK Begin TLS negotiation\r\n"
    assert glue.events == [StartTls()]
    assert glue.m.next_event() is Signal.PAUSED
    glue.m.receive_data(b"PASS injected\r\n")  # still plaintext: must not survive
    glue.m.tls_started()
    assert glue.m.tls_active and glue.m.plaintext_allowed
    assert glue.send(LOGIN) == SEND_PASS + LOGGED_IN
    assert [e for e in glue.events if isinstance(e, Authenticate)] == [
        Authenticate(USER, PASSWORD, "USER")]


def test_stls_forgets_a_user_given_before_it() -> None:
    glue = Glue(tls_available=True)
    assert glue.send(f"USER {USER}\r\n".encode()) == SEND_PASS
    assert glue.send(b"STLS\r\n") == b"+OK Begin TLS negotiation\r\n"
    assert glue.send(f"PASS {PASSWORD}\r\n".encode()) == b"-ERR send USER first\r\n"


def test_stls_after_tls_is_refused() -> None:
    glue = Glue(tls_available=True, tls_active=True)
    assert glue.send(b"STLS\r\n") == b"-ERR command not permitted when TLS active\r\n"


def test_stls_twice_is_refused() -> None:
    glue = Glue(tls_available=True)
    glue.send(b"STLS\r\n")
    assert glue.send(b"STLS\r\n") == b"-ERR command not permitted when TLS active\r\n"


def test_stls_unavailable() -> None:
    assert Glue().send(b"STLS\r\n") == b"-ERR STLS not available\r\n"


def test_stls_in_transaction_is_refused() -> None:
    assert logged_in(tls_available=True).send(b"STLS\r\n") == WRONG_STATE


def test_stls_takes_no_argument() -> None:
    assert Glue(tls_available=True).send(b"STLS x\r\n") == SYNTAX


# ---- pipelining (RFC 2449 §6.6) ------------------------------------------------------------------


SESSION = (LOGIN + b"STAT\r\nLIST 2\r\nRETR 2\r\nDELE 2\r\nTOP 1 0\r\nUIDL\r\nQUIT\r\n")
SESSION_REPLY = (
    SEND_PASS + LOGGED_IN + b"+OK 3 %d\r\n" % TOTAL + b"+OK 2 %d\r\n" % len(MSG2)
    + b"+OK %d octets\r\nSubject: two\r\n\r\nno final newline\r\n.\r\n" % len(MSG2)
    + b"+OK message 2 deleted\r\n"
    + b"+OK top of message follows\r\nFrom: a@example.test\r\nSubject: one\r\n\r\n.\r\n"
    + b"+OK unique-id listing follows\r\n1 uid-1\r\n3 uid-3\r\n.\r\n" + BYE)


def test_pipelined_session_in_one_chunk() -> None:
    glue = Glue()
    assert glue.send(SESSION) == SESSION_REPLY
    assert glue.events[-2:] == [Update((1,), ("uid-2",)), Closed(by_peer=False)]


def test_pipelined_session_byte_by_byte() -> None:
    glue = Glue()
    out = b"".join(glue.send(SESSION[i:i + 1]) for i in range(len(SESSION)))
    assert out == SESSION_REPLY


def test_pipelined_commands_wait_behind_a_decision() -> None:
    m = Pop3Machine(plaintext_allowed=True)
    m.receive_data(LOGIN + b"STAT\r\n")
    assert m.next_event() == Authenticate(USER, PASSWORD, "USER")
    assert m.next_event() is Signal.PAUSED
    assert m.data_to_send() == SEND_PASS
    m.auth_ok()
    assert m.next_event() is Signal.PAUSED  # still waiting for the maildrop
    m.open_maildrop(MAILDROP)
    assert m.next_event() is Signal.NEED_DATA
    assert m.data_to_send() == LOGGED_IN + b"+OK 3 %d\r\n" % TOTAL


# ---- line limits and errors --------------------------------------------------------------------


def test_line_at_the_limit_is_accepted() -> None:
    line = b"USER " + b"u" * (MAX_LINE - 7) + b"\r\n"
    assert len(line) == MAX_LINE
    assert Glue().send(line) == SEND_PASS


def test_line_over_the_limit_is_refused_and_the_session_continues() -> None:
    line = b"USER " + b"u" * (MAX_LINE - 6) + b"\r\n"
    glue = Glue()
    assert glue.send(line + LOGIN) == TOO_LONG + SEND_PASS + LOGGED_IN


def test_long_line_in_pieces_is_answered_once() -> None:
    glue = Glue()
    out = b"".join(glue.send(b"x" * 100) for _ in range(10))
    out += glue.send(b"\r\n" + LOGIN)
    assert out == TOO_LONG + SEND_PASS + LOGGED_IN


def test_endless_garbage_is_cut_off() -> None:
    glue = Glue()
    out = b"".join(glue.send(b"x" * 4096) for _ in range(MAX_GARBAGE // 4096 + 2))
    assert out == TOO_LONG + b"-ERR line too long, closing connection\r\n"
    assert glue.closed
    assert glue.send(LOGIN) == b""


def test_too_long_sasl_line_aborts_the_exchange() -> None:
    glue = Glue()
    glue.send(b"AUTH PLAIN\r\n")
    assert glue.send(b"A" * 9000 + b"\r\n") == TOO_LONG
    assert glue.send(LOGIN) == SEND_PASS + LOGGED_IN


def test_too_many_errors_close_the_session() -> None:
    glue = Glue()
    out = glue.send(b"BOGUS\r\n" * (MAX_ERRORS + 5))
    assert out == UNKNOWN * (MAX_ERRORS - 1) + b"-ERR too many errors, closing connection\r\n"
    assert glue.closed


# ---- glue misuse ------------------------------------------------------------------------------


def test_answering_a_decision_that_was_not_asked_is_a_usage_error() -> None:
    m = Pop3Machine(plaintext_allowed=True)
    for call in (m.auth_ok, lambda: m.open_maildrop([]), lambda: m.message(b""),
                 m.tls_started, lambda: m.update_done(True), lambda: m.auth_failed("x"),
                 lambda: m.message_failed("x")):
        with pytest.raises(UsageError):
            call()


def test_open_maildrop_requires_auth_ok_first() -> None:
    m = Pop3Machine(plaintext_allowed=True)
    m.receive_data(LOGIN)
    m.next_event()
    with pytest.raises(UsageError):
        m.open_maildrop(MAILDROP)


@pytest.mark.parametrize("entry", [("", 1), ("has space", 1), ("x" * 71, 1), ("ok", -1)])
def test_open_maildrop_rejects_invalid_entries(entry: tuple[str, int]) -> None:
    m = Pop3Machine(plaintext_allowed=True)
    m.receive_data(LOGIN)
    m.next_event()
    m.auth_ok()
    with pytest.raises(UsageError):
        m.open_maildrop([entry])


# ---- properties ---------------------------------------------------------------------------------


def wire_body(data: bytes) -> list[bytes]:
    """Reference: the lines of `data` as POP3 sends them (RFC 1939 §3)."""
    pieces = data.split(b"\n")
    lines = [p[:-1] if p.endswith(b"\r") else p for p in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    return lines


def encode(lines: list[bytes]) -> bytes:
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


def serve(data: bytes, command: bytes) -> bytes:
    glue = logged_in()
    glue.m.receive_data(command)
    assert isinstance(glue.m.next_event(), NeedMessage)
    glue.m.message(data)
    out = glue.m.data_to_send()
    first, _, body = out.partition(b"\r\n")
    assert first.startswith(b"+OK")
    return body


_MESSAGE_BYTES = st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"\n", b"\r", b" ",
                                           b"Subject: x"]), max_size=40).map(b"".join)


@given(_MESSAGE_BYTES)
@example(b".")
@example(b"a\r")
@example(b"\r\n.\r\n")
def test_retr_body_matches_the_reference_encoding(data: bytes) -> None:
    assert serve(data, b"RETR 1\r\n") == encode(wire_body(data))


@given(_MESSAGE_BYTES, st.integers(min_value=0, max_value=12))
@example(b"\n\n\n", 1)
@example(b"h\r\n\r\nb1\nb2", 1)
def test_top_body_matches_the_reference(data: bytes, n: int) -> None:
    lines = wire_body(data)
    blank = lines.index(b"") if b"" in lines else len(lines)
    assert serve(data, b"TOP 1 %d\r\n" % n) == encode(lines[:blank + 1 + n])


_COMMANDS = [
    LOGIN.rstrip(b"\r\n"), b"USER " + USER.encode(), b"USER bob", b"PASS " + PASSWORD.encode(), b"PASS wrong",
    b"AUTH", b"AUTH PLAIN", b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}".encode()),
    b"AUTH LOGIN", b64(USER.encode()), b64(PASSWORD.encode()), b"*", b"=", b"AUTH X",
    b"STAT", b"LIST", b"LIST 1", b"LIST 9", b"UIDL", b"UIDL 2", b"RETR 1", b"RETR 2",
    b"RETR 3", b"RETR x", b"TOP 1 0", b"TOP 3 1", b"TOP 1", b"DELE 1", b"DELE 2", b"RSET",
    b"NOOP", b"CAPA", b"STLS", b"APOP a b", b"QUIT", b"XYZZY", b"", b"x" * 300, b"\xff\x00",
    b".", b"+OK", b"list 2", b"TOP 2 99",
]
_TRANSACTION_COMMANDS = [b"RETR 1", b"RETR 2", b"RETR 3", b"TOP 1 1", b"TOP 3 0", b"DELE 1",
                         b"DELE 3", b"LIST", b"UIDL", b"STAT", b"RSET", b"QUIT"]


def check_stream(out: bytes) -> None:
    """Every response line starts with +OK, -ERR or "+ ", or belongs to a multi-line
    body that follows a +OK, is dot-stuffed and ends with "."."""
    assert out == b"" or out.endswith(b"\r\n")
    in_body = after_ok = False
    for line in out.split(b"\r\n")[:-1]:
        assert b"\n" not in line
        if in_body:
            if line == b".":
                in_body = False
            else:
                assert not line.startswith(b".") or line.startswith(b".."), line
            continue
        if line.startswith((b"+OK", b"-ERR", b"+ ")):
            after_ok = line.startswith(b"+OK")
            continue
        assert after_ok, line  # a body line must follow a +OK
        after_ok = False
        if line != b".":
            in_body = True
            assert not line.startswith(b".") or line.startswith(b".."), line
    assert not in_body, "multi-line response not terminated"


# Fuzz message bodies: no line may start with "+" or "-" so check_stream can tell body
# lines from status lines.
_FUZZ_MESSAGES = [MSG1, MSG2, MSG3, b"", b".", b"..\r\n.\r\n", b"x\r\n.\n\n.."]


@pytest.mark.parametrize("start", ["fresh", "logged_in", "no_plaintext_tls"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(st.tuples(st.sampled_from(_TRANSACTION_COMMANDS)
                                   | st.sampled_from(_COMMANDS) | st.binary(max_size=20),
                                   st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n"])),
                         max_size=30),
       cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
       rnd=st.randoms(use_true_random=False))
def test_random_command_streams_never_break_the_machine(
        start: str, commands: list[tuple[bytes, bytes]], cuts: list[int],
        rnd: random.Random) -> None:
    m = Pop3Machine(plaintext_allowed=start != "no_plaintext_tls",
                    tls_available=start == "no_plaintext_tls")
    stream = (LOGIN if start == "logged_in" else b"") + b"".join(c + e for c, e in commands)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(points, points[1:])] + [b""]
    out = [m.greeting()]
    closed = False
    for chunk in chunks:
        m.receive_data(chunk)
        while True:
            event = m.next_event()
            if isinstance(event, Signal):
                assert event is Signal.NEED_DATA  # this glue answers every decision at once
                break
            assert not closed, "event after Closed"
            if isinstance(event, Authenticate):
                choice = rnd.randrange(6)  # 2..4: success
                if choice == 0:
                    m.auth_failed("invalid user name or password")
                elif choice == 1:
                    m.auth_failed("try later", temporary=True)
                else:
                    m.auth_ok()
                    if choice == 5:
                        m.auth_failed("mailbox locked", in_use=True)
                    else:
                        m.open_maildrop(MAILDROP)
            elif isinstance(event, NeedMessage):
                assert 0 <= event.index < len(MAILDROP)
                m.message(rnd.choice(_FUZZ_MESSAGES))
            elif isinstance(event, StartTls):
                m.tls_started()
            elif isinstance(event, Update):
                assert list(event.deleted) == sorted(set(event.deleted))
                m.update_done(rnd.random() < 0.5)
            elif isinstance(event, Closed):
                closed = True
        out.append(m.data_to_send())
    assert closed and m.state is State.CLOSED  # the final b"" always ends the session
    check_stream(b"".join(out))
