"""ImapMachine driven with byte strings: exact response octets and events.

RFC 3501 states and their command rules, literal continuation (§7.5), LITERAL+ (RFC 7888),
LOGIN / AUTHENTICATE with SASL-IR (RFC 4959), LOGINDISABLED and [PRIVACYREQUIRED]
(RFC 5530), STARTTLS (§6.2.1), IDLE (RFC 2177), and what happens to bad input. `Glue`
plays session.py: it feeds bytes, drains next_event() and answers each decision at once.
"""

from __future__ import annotations

import base64

import pytest

from relay.mda.imap.machine import (
    MAX_AUTH_FAILURES,
    MAX_BAD_COMMANDS,
    Closed,
    Execute,
    IdleStart,
    IdleStop,
    ImapMachine,
    ImapSettings,
    Login,
    Signal,
    StartTls,
    State,
    UsageError,
)
from relay.mda.imap.responses import Done, Transition, ok

USER, PASSWORD = "alice@example.test", "secret"
PRE_CAPS = b"IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE"
LOGGED_IN = (b"a OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT "
             b"UIDPLUS MOVE CHILDREN SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE ESEARCH "
             b"STATUS=SIZE APPENDLIMIT=67108864] Logged in\r\n")


class Glue:
    """Feeds the machine and answers its decisions: logins check USER/PASSWORD, Execute
    returns `self.done` (default OK) and records the command."""

    def __init__(self, **settings: object) -> None:
        settings.setdefault("plaintext_allowed", True)
        self.machine = ImapMachine(ImapSettings(**settings))  # type: ignore[arg-type]
        self.events: list[object] = []
        self.executed: list[object] = []
        self.done: Done = ok("done")
        self.answer = True  # answer decisions automatically

    def send(self, data: bytes) -> bytes:
        self.machine.receive_data(data)
        return self.drain()

    def drain(self) -> bytes:
        out = []
        while True:
            event = self.machine.next_event()
            out.append(self.machine.data_to_send())
            if isinstance(event, Signal):
                break
            self.events.append(event)
            if not self.answer:
                continue
            if isinstance(event, Login):
                if (event.user, event.password) == (USER, PASSWORD):
                    self.machine.login_ok(event.user)
                else:
                    self.machine.login_failed()
            elif isinstance(event, Execute):
                self.executed.append(event.command)
                self.machine.finish(self.done)
            elif isinstance(event, Closed):
                break
        out.append(self.machine.data_to_send())
        return b"".join(out)

    def login(self) -> None:
        assert self.send(b"a LOGIN alice@example.test secret\r\n") == LOGGED_IN


@pytest.fixture
def glue() -> Glue:
    return Glue()


def test_greeting_lists_capabilities_with_plaintext_allowed() -> None:
    m = ImapMachine(ImapSettings(plaintext_allowed=True))
    assert m.greeting() == b"* OK [CAPABILITY " + PRE_CAPS + \
        b" AUTH=PLAIN AUTH=LOGIN] relay IMAP4rev1 ready\r\n"


def test_greeting_says_logindisabled_and_starttls_on_plaintext_connections() -> None:
    m = ImapMachine(ImapSettings(plaintext_allowed=False, tls_available=True))
    assert m.greeting() == b"* OK [CAPABILITY " + PRE_CAPS + \
        b" STARTTLS LOGINDISABLED] relay IMAP4rev1 ready\r\n"


def test_capability_command(glue: Glue) -> None:
    assert glue.send(b"c1 CAPABILITY\r\n") == (
        b"* CAPABILITY " + PRE_CAPS + b" AUTH=PLAIN AUTH=LOGIN\r\n"
        b"c1 OK CAPABILITY completed\r\n")


def test_select_before_login_is_bad(glue: Glue) -> None:
    assert glue.send(b"a SELECT INBOX\r\n") == b"a BAD Not authenticated\r\n"
    assert glue.executed == []


def test_fetch_without_a_selected_mailbox_is_bad(glue: Glue) -> None:
    glue.login()
    assert glue.send(b"b FETCH 1 FLAGS\r\n") == b"b BAD No mailbox selected\r\n"


def test_login_twice_is_bad(glue: Glue) -> None:
    glue.login()
    assert glue.send(b"b LOGIN x y\r\n") == b"b BAD Already authenticated\r\n"


def test_login_succeeds_with_capabilities_in_the_ok(glue: Glue) -> None:
    glue.login()
    assert glue.machine.state is State.AUTHENTICATED
    assert isinstance(glue.events[0], Login) and "secret" not in repr(glue.events[0])


def test_failed_login_is_authenticationfailed(glue: Glue) -> None:
    assert glue.send(b"a LOGIN alice@example.test wrong\r\n") == \
        b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    assert glue.machine.state is State.NOT_AUTHENTICATED


def test_throttled_login_is_unavailable(glue: Glue) -> None:
    glue.answer = False
    glue.send(b"a LOGIN alice@example.test secret\r\n")
    glue.machine.login_failed(temporary=True)
    assert glue.machine.data_to_send() == \
        b"a NO [UNAVAILABLE] Too many failed logins, try again later\r\n"


def test_too_many_failed_logins_end_the_session(glue: Glue) -> None:
    out = glue.send(b"".join(b"t%d LOGIN alice@example.test bad\r\n" % i
                             for i in range(MAX_AUTH_FAILURES + 2)))
    assert out.count(b"AUTHENTICATIONFAILED") == MAX_AUTH_FAILURES
    assert out.endswith(b"* BYE Too many authentication failures\r\n")
    assert isinstance(glue.events[-1], Closed)


def test_login_is_refused_when_plaintext_is_not_allowed() -> None:
    glue = Glue(plaintext_allowed=False)
    assert glue.send(b"a LOGIN alice@example.test secret\r\n") == \
        b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections\r\n"
    assert glue.events == []


def test_login_literal_is_refused_before_the_password_is_sent() -> None:
    glue = Glue(plaintext_allowed=False)
    assert glue.send(b"a LOGIN {18}\r\n") == \
        b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections\r\n"


def test_authenticate_is_refused_when_plaintext_is_not_allowed() -> None:
    glue = Glue(plaintext_allowed=False)
    assert glue.send(b"a AUTHENTICATE PLAIN\r\n").startswith(b"a NO [PRIVACYREQUIRED]")


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def test_authenticate_plain_with_initial_response(glue: Glue) -> None:
    out = glue.send(b"a AUTHENTICATE PLAIN " + plain(USER, PASSWORD) + b"\r\n")
    assert out == LOGGED_IN
    assert glue.events[0] == Login("a", USER, PASSWORD, "PLAIN")


def test_authenticate_plain_with_a_continuation(glue: Glue) -> None:
    assert glue.send(b"a AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert glue.send(plain(USER, PASSWORD) + b"\r\n") == LOGGED_IN


def test_authenticate_login_prompts_twice(glue: Glue) -> None:
    assert glue.send(b"a AUTHENTICATE LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert glue.send(base64.b64encode(USER.encode()) + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert glue.send(base64.b64encode(PASSWORD.encode()) + b"\r\n") == LOGGED_IN


def test_authenticate_cancel_is_bad(glue: Glue) -> None:
    glue.send(b"a AUTHENTICATE PLAIN\r\n")
    assert glue.send(b"*\r\n") == b"a BAD Authentication cancelled\r\n"
    assert glue.send(b"b NOOP\r\n") == b"b OK NOOP completed\r\n"


def test_authenticate_bad_base64_is_bad(glue: Glue) -> None:
    glue.send(b"a AUTHENTICATE PLAIN\r\n")
    assert glue.send(b"!!!\r\n") == b"a BAD Invalid base64 data\r\n"


def test_authenticate_unknown_mechanism(glue: Glue) -> None:
    assert glue.send(b"a AUTHENTICATE CRAM-MD5\r\n") == \
        b"a NO [CANNOT] Unsupported authentication mechanism\r\n"


def test_synchronizing_literal_gets_a_continuation(glue: Glue) -> None:
    assert glue.send(b"a LOGIN {18}\r\n") == b"+ Ready for literal data\r\n"
    assert glue.send(b"alice@example.test {6}\r\n") == b"+ Ready for literal data\r\n"
    assert glue.send(b"secret\r\n") == LOGGED_IN


def test_literal_plus_needs_no_continuation(glue: Glue) -> None:
    assert glue.send(b"a LOGIN {18+}\r\nalice@example.test {6+}\r\nsecret\r\n") == LOGGED_IN


def test_append_literal_before_login_is_refused_without_continuation(glue: Glue) -> None:
    assert glue.send(b"a APPEND INBOX {100}\r\n") == b"a BAD Not authenticated\r\n"
    assert glue.send(b"b NOOP\r\n") == b"b OK NOOP completed\r\n"


def test_append_literal_plus_before_login_is_not_buffered(glue: Glue) -> None:
    out = glue.send(b"a APPEND INBOX {60000+}\r\n" + b"x" * 60000 + b"\r\nb NOOP\r\n")
    assert out == b"a BAD Not authenticated\r\nb OK NOOP completed\r\n"
    assert glue.machine.reader.buffered == 0


def test_append_too_big_is_toobig(glue: Glue) -> None:
    glue.login()
    assert glue.send(b"b APPEND INBOX {999999999999}\r\n") == \
        b"b NO [TOOBIG] literal too big\r\n"
    assert glue.machine.state is State.AUTHENTICATED


def test_huge_refused_non_synchronizing_literal_ends_the_session(glue: Glue) -> None:
    glue.login()
    out = glue.send(b"b APPEND INBOX {999999999+}\r\n" + b"x" * 1000)
    assert out == b"b NO [TOOBIG] literal too big\r\n* BYE Too much data\r\n"
    assert isinstance(glue.events[-1], Closed)


def test_small_refused_non_synchronizing_literal_is_skipped(glue: Glue) -> None:
    out = glue.send(b"a SELECT {70000+}\r\n" + b"x" * 70000 + b"\r\nb NOOP\r\n")
    assert out == b"a BAD [TOOBIG] literal too big\r\nb OK NOOP completed\r\n"


def test_malformed_command_is_bad_and_the_session_goes_on(glue: Glue) -> None:
    glue.login()
    assert glue.send(b"b SELECT\r\n") == b"b BAD expected 'SP'\r\n"
    assert glue.send(b"c FROB\r\n") == b"c BAD unknown command\r\n"
    assert glue.send(b"\x00\x01\r\n") == b"* BAD missing tag\r\n"
    assert glue.send(b"d SELECT INBOX\r\n") == b"d OK done\r\n"


def test_garbage_ends_the_session_after_too_many_bad_commands(glue: Glue) -> None:
    out = glue.send(b"garbage line\r\n" * (MAX_BAD_COMMANDS + 5))
    assert out.count(b"BAD") == MAX_BAD_COMMANDS
    assert out.endswith(b"* BYE Too many invalid commands\r\n")
    assert isinstance(glue.events[-1], Closed)
    assert glue.send(b"a NOOP\r\n") == b""  # nothing more is read


def test_a_good_command_resets_the_bad_count(glue: Glue) -> None:
    for _ in range(3):
        glue.send(b"x\r\n" * (MAX_BAD_COMMANDS - 1))
        glue.send(b"a NOOP\r\n")
    assert glue.machine.state is State.NOT_AUTHENTICATED


def test_an_endless_line_is_cut_off_with_bye(glue: Glue) -> None:
    out = glue.send(b"a " + b"x" * (10 * 1024 * 1024))
    assert out == b"* BYE line too long\r\n"
    assert isinstance(glue.events[-1], Closed)


def test_commands_run_one_at_a_time_in_order(glue: Glue) -> None:
    glue.login()
    glue.answer = False
    out = glue.send(b"b SELECT INBOX\r\nc FETCH 1 FLAGS\r\nd NOOP\r\n")
    assert out == b""
    assert [type(e) for e in glue.events[1:]] == [Execute]
    assert glue.machine.next_event() is Signal.PAUSED
    glue.machine.finish(ok("selected", "READ-WRITE", Transition.SELECTED))
    assert glue.machine.state is State.SELECTED
    assert glue.machine.data_to_send() == b"b OK [READ-WRITE] selected\r\n"
    event = glue.machine.next_event()
    assert isinstance(event, Execute) and event.command.name == "FETCH"


def test_finish_without_a_pending_command_is_a_usage_error(glue: Glue) -> None:
    with pytest.raises(UsageError):
        glue.machine.finish(ok("x"))


def test_unselect_transition_returns_to_authenticated(glue: Glue) -> None:
    glue.login()
    glue.done = ok("selected", transition=Transition.SELECTED)
    glue.send(b"b SELECT INBOX\r\n")
    glue.done = ok("CLOSE completed", transition=Transition.UNSELECTED)
    assert glue.send(b"c CLOSE\r\n") == b"c OK CLOSE completed\r\n"
    assert glue.machine.state is State.AUTHENTICATED


def test_logout_transition_from_a_command_closes(glue: Glue) -> None:
    glue.login()
    glue.done = Done("NO", "gone", "NONEXISTENT", Transition.LOGOUT)
    assert glue.send(b"b NOOP\r\n") == b"b NO [NONEXISTENT] gone\r\n"
    assert isinstance(glue.events[-1], Closed)


def test_logout(glue: Glue) -> None:
    assert glue.send(b"z LOGOUT\r\n") == \
        b"* BYE relay IMAP4rev1 server logging out\r\nz OK LOGOUT completed\r\n"
    assert glue.events == [Closed(by_peer=False)]
    assert glue.machine.state is State.LOGOUT


def test_peer_closing_ends_the_session(glue: Glue) -> None:
    glue.machine.receive_data(b"")
    assert glue.machine.next_event() == Closed(by_peer=True)


def test_noop_before_login_is_answered_here_and_after_login_executed(glue: Glue) -> None:
    assert glue.send(b"a NOOP\r\n") == b"a OK NOOP completed\r\n"
    glue.login()
    glue.send(b"b NOOP\r\n")
    assert [c.name for c in glue.executed] == ["NOOP"]  # type: ignore[attr-defined]


def test_id_and_namespace(glue: Glue) -> None:
    assert glue.send(b'a ID ("name" "imaplib")\r\n') == \
        b'* ID ("name" "relay")\r\na OK ID completed\r\n'
    glue.login()
    assert glue.send(b"b NAMESPACE\r\n") == \
        b'* NAMESPACE (("" "/")) NIL NIL\r\nb OK NAMESPACE completed\r\n'


def test_idle_until_done(glue: Glue) -> None:
    glue.login()
    assert glue.send(b"b IDLE\r\n") == b"+ idling\r\n"
    assert glue.events[-1] == IdleStart("b")
    assert glue.machine.idling
    glue.answer = False
    assert glue.send(b"DONE\r\n") == b""
    assert glue.events[-1] == IdleStop("b")
    glue.machine.idle_stopped()
    assert glue.machine.data_to_send() == b"b OK IDLE terminated\r\n"
    assert not glue.machine.idling


def test_anything_but_done_ends_idle_with_bad(glue: Glue) -> None:
    glue.login()
    glue.send(b"b IDLE\r\n")
    glue.answer = False
    glue.send(b"c NOOP\r\n")
    assert glue.events[-1] == IdleStop("b")
    glue.machine.idle_stopped()
    assert glue.machine.data_to_send() == b"b BAD Expected DONE\r\n"


def test_idle_before_login_is_bad(glue: Glue) -> None:
    assert glue.send(b"a IDLE\r\n") == b"a BAD Not authenticated\r\n"


def test_done_outside_idle_is_bad(glue: Glue) -> None:
    assert glue.send(b"DONE\r\n") == b"* BAD Unexpected DONE\r\n"


def test_starttls_discards_pipelined_plaintext() -> None:
    glue = Glue(plaintext_allowed=False, tls_available=True)
    glue.answer = False
    out = glue.send(b"a STARTTLS\r\nb LOGIN alice@example.test secret\r\n")
    assert out == b"a OK Begin TLS negotiation now\r\n"
    assert glue.events == [StartTls()]
    glue.machine.tls_started()
    assert glue.machine.next_event() is Signal.NEED_DATA  # the LOGIN is gone
    caps = glue.machine.capabilities()
    assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps
    glue.answer = True
    assert glue.send(b"c LOGIN alice@example.test secret\r\n") == LOGGED_IN.replace(b"a OK",
                                                                                    b"c OK")


def test_starttls_is_bad_when_not_offered(glue: Glue) -> None:
    assert glue.send(b"a STARTTLS\r\n") == b"a BAD STARTTLS is not available\r\n"


def test_starttls_is_bad_when_tls_is_active() -> None:
    glue = Glue(tls_active=True, tls_available=True)
    assert glue.send(b"a STARTTLS\r\n") == b"a BAD TLS is already active\r\n"


def test_starttls_after_login_is_bad(glue: Glue) -> None:
    glue.login()
    assert glue.send(b"b STARTTLS\r\n") == b"b BAD Already authenticated\r\n"


def test_unsupported_quota_commands_are_bad(glue: Glue) -> None:
    glue.login()
    assert glue.send(b"b GETQUOTAROOT INBOX\r\n") == b"b BAD Command not supported\r\n"


def test_commands_are_counted_by_name(glue: Glue) -> None:
    glue.login()
    glue.send(b"b UID FETCH 1 FLAGS\r\nc CAPABILITY\r\n")
    assert glue.machine.counted() == ["LOGIN", "UID FETCH", "CAPABILITY"]
    assert glue.machine.counted() == []


def test_close_writes_bye(glue: Glue) -> None:
    glue.machine.close("Autologout; idle for too long")
    assert glue.machine.data_to_send() == b"* BYE Autologout; idle for too long\r\n"
    assert glue.machine.next_event() == Closed(by_peer=False)
