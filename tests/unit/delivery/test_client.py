"""ClientMachine dialogues: against our own ServerMachine in memory, and against scripted
server replies for what our server never says (RFC 5321, 2920, 1870, 6531, 3207).

No sockets, no loop. `Pair` is h11's ConnectionPair idea: it shuttles bytes between the
two machines and answers the server's decision events per test. `Script` feeds a client
byte strings and returns what it wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.delivery.client import ClientMachine, ClientMisuse
from relay.delivery.events import (
    ClientEvent,
    ClientState,
    Closed,
    Failed,
    Ready,
    Signal,
    StartTls,
    TransactionDone,
)
from relay._fast import dot_stuff
from relay.delivery.replies import MAX_REPLY_LINE
from relay.queue.model import Outcome
from relay.smtp import events as server_events
from relay.smtp import replies as R
from relay.smtp.machine import ServerMachine
from relay.smtp.settings import SmtpSettings

HELO = "client.example"
MX = "mx.example.net"
REMOTE = "dns; mx.example.net"
SENDER = "alice@example.org"
BOB, CAROL, DAVE = "bob@example.net", "carol@example.net", "dave@example.net"
BODY = b"Subject: hi\r\n\r\nHello.\r\n"

Decide = Callable[[object], "R.Reply | None"]


def accept_all(event: object) -> R.Reply | None:
    return None


def settings_for(max_size: int = 10_000, tls: bool = False) -> SmtpSettings:
    return SmtpSettings(hostname=MX, max_message_size=max_size, max_recipients=50,
                        tls_available=tls)


class Pair:
    """A ClientMachine and a ServerMachine joined in memory; the glue for both, inline.

    `written` holds each data_to_send() of the client (one entry per write), `events`
    the client's events (Signals left out), `received` the server's MessageReceived.
    split: feed the client its input this many octets at a time.
    """

    def __init__(self, *, starttls: bool = False, server: SmtpSettings | None = None,
                 decide: Decide = accept_all, split: int = 0) -> None:
        self.client = ClientMachine(HELO, MX, starttls)
        self.server = ServerMachine(server or settings_for())
        self.decide = decide
        self.split = split
        self.written: list[bytes] = []
        self.events: list[ClientEvent] = []
        self.received: list[server_events.MessageReceived] = []
        self.server_events: list[object] = []
        self.server_closed = False
        self._to_client(self.server.greeting())
        self.pump()

    def pump(self) -> None:
        """Shuttle octets both ways until neither side has anything to say."""
        while True:
            self._drain_client()
            out = self.client.data_to_send()
            if out:
                self.written.append(out)
                self.server.receive_data(out)
            self._drain_server()
            back = self.server.data_to_send()
            if back:
                self._to_client(back)
            if self.server_closed:
                self.client.receive_data(b"")  # the server closes its side after QUIT/421
                self._drain_client()
                return
            if not out and not back:
                return

    def _to_client(self, data: bytes) -> None:
        step = self.split or len(data)
        for i in range(0, len(data), step):
            self.client.receive_data(data[i:i + step])
            self._drain_client()

    def _drain_client(self) -> None:
        while True:
            event = self.client.next_event()
            if isinstance(event, Signal):
                return
            self.events.append(event)
            if isinstance(event, StartTls):
                # Both ends "upgrade": the server forgets its state, the client re-EHLOs.
                self.server.tls_started()
                self.client.tls_started()

    def _drain_server(self) -> None:
        m = self.server
        while True:
            event = m.next_event()
            if event is server_events.Signal.NEED_DATA:
                return
            assert event is not server_events.Signal.PAUSED
            self.server_events.append(event)
            if isinstance(event, server_events.Closed):
                self.server_closed = True
                return
            if isinstance(event, server_events.MessageReceived):
                self.received.append(event)
            if isinstance(event, (server_events.MailFrom, server_events.RcptTo,
                                  server_events.MessageReceived)):
                reply = self.decide(event)
                if reply is None:
                    m.accept()
                else:
                    m.reject(reply)

    def send(self, recipients: list[str], body: bytes = BODY, sender: str = SENDER,
             **kw: bool) -> tuple[Outcome, ...]:
        """One transaction to completion; its outcomes."""
        before = len(self.events)
        self.client.send_message(sender, recipients, body, **kw)
        self.pump()
        done = [e for e in self.events[before:] if isinstance(e, TransactionDone)]
        assert len(done) == 1, self.events[before:]
        return done[0].outcomes


class Script:
    """A ClientMachine fed scripted server replies."""

    def __init__(self, starttls: bool = False) -> None:
        self.m = ClientMachine(HELO, MX, starttls)
        self.events: list[ClientEvent] = []

    def feed(self, *chunks: bytes) -> bytes:
        """Feed each chunk in its own receive_data call (none: just drain events); return
        every octet written."""
        out = []
        for chunk in chunks:
            self.m.receive_data(chunk)
            self._drain()
            out.append(self.m.data_to_send())
        self._drain()
        out.append(self.m.data_to_send())
        return b"".join(out)

    def _drain(self) -> None:
        while not isinstance(event := self.m.next_event(), Signal):
            self.events.append(event)

    def of(self, kind: type) -> list[ClientEvent]:
        """Events of one kind, after draining whatever is ready."""
        self.feed()
        return [e for e in self.events if isinstance(e, kind)]


EHLO = f"EHLO {HELO}\r\n".encode()
GREETING = b"220 mx.example.net ESMTP\r\n"


def scripted(*extensions: str, starttls: bool = False) -> Script:
    """A client that got the greeting and an EHLO reply announcing `extensions`."""
    s = Script(starttls)
    assert s.feed(GREETING) == EHLO
    lines = [f"mx.example.net greets {HELO}", *extensions]
    reply = "".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}\r\n" for i, t in enumerate(lines))
    s.feed(reply.encode())
    assert s.events == [Ready()] or starttls
    return s


def outcome(rcpt: str, action: str, status: str, diagnostic: str, tls: bool = False) -> Outcome:
    return Outcome(rcpt, action, status, diagnostic, REMOTE, tls)


def delivered(rcpt: str, tls: bool = False) -> Outcome:
    return outcome(rcpt, "delivered", "2.0.0", "smtp; 250 2.0.0 OK", tls)


# ---- greeting (RFC 5321 §3.1) ------------------------------------------------------


def test_nothing_is_written_before_the_greeting() -> None:
    m = ClientMachine(HELO, MX, False)
    assert m.next_event() is Signal.NEED_DATA
    assert m.data_to_send() == b""


def test_greeting_554_fails_permanently_and_sends_quit() -> None:
    s = Script()
    assert s.feed(b"554 5.7.1 No SMTP service here\r\n") == b"QUIT\r\n"
    failed = Failed(True, R.Reply(554, "5.7.1", "No SMTP service here"), "5.7.1",
                    "smtp; 554 5.7.1 No SMTP service here", REMOTE)
    assert s.events == [failed]
    assert failed.outcome(BOB) == outcome(BOB, "failed", "5.7.1",
                                          "smtp; 554 5.7.1 No SMTP service here")
    assert s.m.state is ClientState.CLOSED
    assert s.m.next_event() is Signal.PAUSED


def test_greeting_421_fails_temporarily_without_quit() -> None:
    s = Script()
    assert s.feed(b"421 mx.example.net busy, try later\r\n") == b""
    [failed] = s.events
    assert isinstance(failed, Failed)
    assert (failed.permanent, failed.status, failed.diagnostic) == (
        False, "4.0.0", "smtp; 421 mx.example.net busy, try later")
    assert failed.outcome(BOB).action == "delayed"


def test_multiline_greeting_is_accepted() -> None:
    s = Script()
    assert s.feed(b"220-mx.example.net ESMTP\r\n220-policy text\r\n", b"220 more\r\n") == EHLO


def test_peer_closing_before_the_greeting_is_a_temporary_failure() -> None:
    s = Script()
    s.feed(b"")
    [failed] = s.events
    assert isinstance(failed, Failed)
    assert failed.reply is None and not failed.permanent
    assert failed.status == "4.4.2"
    assert failed.diagnostic == (
        "x-relay; lost connection with mx.example.net while receiving the initial server greeting")


# ---- EHLO, HELO (RFC 5321 §3.2, §4.1.1.1) -------------------------------------------


def test_ehlo_extensions_are_parsed() -> None:
    p = Pair()
    assert p.events == [Ready()]
    assert p.written == [EHLO]
    assert p.client.extensions == {
        "PIPELINING": "", "SIZE": "10000", "8BITMIME": "", "ENHANCEDSTATUSCODES": "",
        "SMTPUTF8": "", "CHUNKING": ""}
    assert p.client.max_size == 10_000 and p.client.esmtp and p.client.idle


def test_size_zero_means_no_limit() -> None:
    s = scripted("PIPELINING", "SIZE 0")
    assert s.m.max_size is None
    assert s.m.extensions["SIZE"] == "0"


def test_ehlo_rejected_falls_back_to_helo() -> None:
    s = Script()
    s.feed(GREETING)
    assert s.feed(b"502 5.5.1 EHLO not implemented\r\n") == f"HELO {HELO}\r\n".encode()
    assert s.events == []
    assert s.feed(b"250 mx.example.net\r\n") == b""
    assert s.events == [Ready()]
    assert s.m.extensions == {} and not s.m.esmtp
    # No extensions: plain MAIL, one command at a time.
    s.m.send_message(SENDER, [BOB], BODY, eight_bit=True)
    assert s.m.data_to_send() == b"MAIL FROM:<alice@example.org>\r\n"


def test_helo_rejected_too_fails_and_quits() -> None:
    s = Script()
    s.feed(GREETING, b"500 what\r\n")
    assert s.feed(b"550 5.7.1 go away\r\n") == b"QUIT\r\n"
    [failed] = s.events
    assert isinstance(failed, Failed) and failed.permanent and failed.status == "5.7.1"


def test_ehlo_4xx_is_a_temporary_failure_without_helo() -> None:
    s = Script()
    s.feed(GREETING)
    assert s.feed(b"454 4.7.0 not now\r\n") == b"QUIT\r\n"
    [failed] = s.events
    assert isinstance(failed, Failed) and not failed.permanent and failed.status == "4.7.0"


# ---- STARTTLS (RFC 3207) -----------------------------------------------------------


def test_starttls_offered_upgrades_then_ehlo_again() -> None:
    p = Pair(starttls=True, server=settings_for(tls=True))
    assert p.events == [StartTls(), Ready()]
    assert p.written == [EHLO, b"STARTTLS\r\n", EHLO]
    assert p.client.tls_active and p.server.tls_active
    # RFC 3207 §4.2: what was learnt before TLS is forgotten; the new EHLO has no STARTTLS.
    assert "STARTTLS" not in p.client.extensions
    assert p.send([BOB]) == (delivered(BOB, tls=True),)


def test_starttls_not_wanted_is_not_used() -> None:
    p = Pair(starttls=False, server=settings_for(tls=True))
    assert p.events == [Ready()]
    assert p.written == [EHLO]
    assert "STARTTLS" in p.client.extensions and not p.client.tls_active


def test_starttls_wanted_but_not_offered_carries_on_in_plaintext() -> None:
    p = Pair(starttls=True)
    assert p.events == [Ready()] and p.written == [EHLO]


def test_starttls_refused_carries_on_in_plaintext() -> None:
    s = scripted("PIPELINING", "STARTTLS", starttls=True)
    assert s.m.data_to_send() == b""  # already collected by feed()
    assert s.events == []
    assert s.feed(b"454 4.7.0 TLS not available\r\n") == b""
    assert s.events == [Ready()] and not s.m.tls_active


def test_starttls_request_is_sent_alone_and_waits_for_tls_started() -> None:
    s = Script(starttls=True)
    s.feed(GREETING)
    assert s.feed(b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n") == b"STARTTLS\r\n"
    assert s.feed(b"220 2.0.0 go ahead\r\n") == b""
    assert s.events == [StartTls()]
    assert s.m.next_event() is Signal.PAUSED
    with pytest.raises(ClientMisuse):
        s.m.send_message(SENDER, [BOB], BODY)
    s.m.tls_started()
    assert s.m.data_to_send() == EHLO
    s.feed(b"250-mx\r\n250 STARTTLS\r\n")  # offered again: never a second STARTTLS
    assert s.events == [StartTls(), Ready()] and s.m.tls_active


def test_plaintext_after_the_starttls_reply_is_a_protocol_error() -> None:
    # The "STARTTLS response injection" attack: a reply pipelined behind the 220 would be
    # read as if it came over TLS.
    s = Script(starttls=True)
    s.feed(GREETING, b"250-mx\r\n250 STARTTLS\r\n")
    assert s.feed(b"220 go ahead\r\n250-mx\r\n250 PIPELINING\r\n") == b""
    [failed] = s.events
    assert isinstance(failed, Failed) and failed.status == "4.5.0"
    assert "plaintext data after the STARTTLS reply" in failed.diagnostic


def test_peer_closing_during_the_tls_handshake_is_a_temporary_failure() -> None:
    s = Script(starttls=True)
    s.feed(GREETING, b"250-mx\r\n250 STARTTLS\r\n", b"220 go ahead\r\n", b"")
    failed = s.events[-1]
    assert isinstance(failed, Failed) and failed.status == "4.4.2"
    assert failed.diagnostic.endswith("while performing the TLS handshake")


def test_plaintext_arriving_before_tls_started_is_a_protocol_error() -> None:
    s = Script(starttls=True)
    s.feed(GREETING, b"250-mx\r\n250 STARTTLS\r\n", b"220 go ahead\r\n")
    s.feed(b"250 injected\r\n")
    assert [type(e) for e in s.events] == [StartTls, Failed]


# ---- the pipelined transaction (RFC 2920) ------------------------------------------


def three_way(event: object) -> R.Reply | None:
    if isinstance(event, server_events.RcptTo) and event.recipient.local == "carol":
        return R.USER_UNKNOWN
    if isinstance(event, server_events.RcptTo) and event.recipient.local == "dave":
        return R.TEMP_RECIPIENT_FAILURE
    return None


def test_pipelined_transaction_gives_one_outcome_per_recipient() -> None:
    p = Pair(decide=three_way)
    outcomes = p.send([BOB, CAROL, DAVE])
    assert outcomes == (
        delivered(BOB),
        outcome(CAROL, "failed", "5.1.1", "smtp; 550 5.1.1 Mailbox unavailable: no such user"),
        outcome(DAVE, "delayed", "4.3.0", "smtp; 451 4.3.0 Temporary recipient lookup failure"),
    )
    # Our server offers CHUNKING: MAIL, every RCPT and the message as one BDAT LAST chunk
    # go in a single write (RFC 2920 + RFC 3030), one round trip per message.
    assert p.written[1] == (
        b"MAIL FROM:<alice@example.org> SIZE=%d\r\n"
        b"RCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.net>\r\n"
        b"RCPT TO:<dave@example.net>\r\nBDAT %d LAST\r\n" % (len(BODY), len(BODY)) + BODY)
    assert len(p.written) == 2
    [message] = p.received
    assert message.body == BODY
    assert [str(r) for r in message.recipients] == [BOB]
    assert p.client.idle


def test_mail_rejected_gives_every_recipient_that_reply() -> None:
    def refuse_sender(event: object) -> R.Reply | None:
        if isinstance(event, server_events.MailFrom):
            return R.Reply(550, "5.7.1", "Sender blocked")
        return None

    p = Pair(decide=refuse_sender)
    outcomes = p.send([BOB, CAROL])
    assert outcomes == tuple(outcome(r, "failed", "5.7.1", "smtp; 550 5.7.1 Sender blocked")
                             for r in (BOB, CAROL))
    # The RCPT and DATA replies (503s) are consumed; no body; RSET before going idle.
    assert p.written[2:] == [b"RSET\r\n"]
    assert p.received == [] and p.client.idle


def test_mail_deferred_gives_every_recipient_delayed() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB, CAROL], BODY)
    s.m.data_to_send()
    out = s.feed(b"451 4.3.0 try later\r\n503 5.5.1 Need MAIL\r\n503 5.5.1 Need MAIL\r\n",
                 b"503 5.5.1 Need MAIL\r\n")
    assert out == b"RSET\r\n"
    s.feed(b"250 2.0.0 Reset\r\n")
    [done] = s.of(TransactionDone)
    assert {o.action for o in done.outcomes} == {"delayed"}
    assert {o.status for o in done.outcomes} == {"4.3.0"}


def test_no_recipient_accepted_sends_no_body_then_rset() -> None:
    def refuse_all(event: object) -> R.Reply | None:
        return R.USER_UNKNOWN if isinstance(event, server_events.RcptTo) else None

    p = Pair(decide=refuse_all)
    outcomes = p.send([BOB, CAROL])
    assert [o.action for o in outcomes] == ["failed", "failed"]
    assert p.written[2:] == [b"RSET\r\n"]
    assert p.received == []
    assert p.client.idle


def test_data_accepted_without_recipients_gets_a_lone_dot() -> None:
    # RFC 2920 §3.1: the client cannot assume DATA is refused when every RCPT was.
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB], BODY)
    s.m.data_to_send()
    out = s.feed(b"250 ok\r\n550 5.1.1 no\r\n354 go ahead\r\n")
    assert out == b".\r\n"
    assert s.feed(b"554 5.5.0 no valid recipients\r\n") == b""
    [done] = s.of(TransactionDone)
    assert done.outcomes == (outcome(BOB, "failed", "5.1.1", "smtp; 550 5.1.1 no"),)
    assert s.m.idle


def test_data_refused_applies_to_accepted_recipients_then_rset() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB, CAROL], BODY)
    s.m.data_to_send()
    out = s.feed(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n554 5.7.0 not from you\r\n")
    assert out == b"RSET\r\n"
    s.feed(b"250 ok\r\n")
    [done] = s.of(TransactionDone)
    assert done.outcomes == (
        outcome(BOB, "failed", "5.7.0", "smtp; 554 5.7.0 not from you"),
        outcome(CAROL, "failed", "5.1.1", "smtp; 550 5.1.1 no"))


def test_final_reply_4xx_delays_accepted_recipients_without_rset() -> None:
    def defer_message(event: object) -> R.Reply | None:
        if isinstance(event, server_events.MessageReceived):
            return R.QUEUE_FULL
        return None

    p = Pair(decide=defer_message)
    assert p.send([BOB]) == (
        outcome(BOB, "delayed", "4.3.1",
                "smtp; 452 4.3.1 Insufficient system storage, try again later"),)
    # No RSET: the last chunk ends the transaction whatever its reply (RFC 3030 §2).
    assert p.written[-1].endswith(b"BDAT %d LAST\r\n" % len(BODY) + BODY)


# ---- without PIPELINING: lock-step (RFC 5321 §4.1.1) -------------------------------


def test_without_pipelining_one_command_at_a_time() -> None:
    s = scripted("SIZE 1000", "8BITMIME")
    s.m.send_message(SENDER, [BOB, CAROL, DAVE], BODY)
    assert s.m.data_to_send() == b"MAIL FROM:<alice@example.org> SIZE=%d\r\n" % len(BODY)
    assert s.feed(b"250 2.1.0 ok\r\n") == b"RCPT TO:<bob@example.net>\r\n"
    assert s.feed(b"250 2.1.5 ok\r\n") == b"RCPT TO:<carol@example.net>\r\n"
    assert s.feed(b"550 5.1.1 unknown\r\n") == b"RCPT TO:<dave@example.net>\r\n"
    assert s.feed(b"250 2.1.5 ok\r\n") == b"DATA\r\n"
    assert s.feed(b"354 go ahead\r\n") == BODY + b".\r\n"
    assert s.events == [Ready()]
    assert s.feed(b"250 2.0.0 queued as X\r\n") == b""
    [done] = s.of(TransactionDone)
    assert [o.action for o in done.outcomes] == ["delivered", "failed", "delivered"]
    assert done.outcomes[0].diagnostic == "smtp; 250 2.0.0 queued as X"


def test_without_pipelining_mail_refused_stops_and_resets() -> None:
    s = scripted()
    s.m.send_message(SENDER, [BOB, CAROL], BODY)
    s.m.data_to_send()
    assert s.feed(b"553 5.1.8 bad sender domain\r\n") == b"RSET\r\n"
    assert s.feed(b"250 ok\r\n") == b""
    [done] = s.of(TransactionDone)
    assert [o.status for o in done.outcomes] == ["5.1.8", "5.1.8"]


def test_without_pipelining_no_recipient_accepted_resets_without_data() -> None:
    s = scripted()
    s.m.send_message(SENDER, [BOB], BODY)
    s.m.data_to_send()
    s.feed(b"250 ok\r\n")
    assert s.feed(b"450 4.2.1 mailbox busy\r\n") == b"RSET\r\n"
    s.feed(b"250 ok\r\n")
    [done] = s.of(TransactionDone)
    assert done.outcomes == (outcome(BOB, "delayed", "4.2.1", "smtp; 450 4.2.1 mailbox busy"),)


# ---- SIZE, 8BITMIME, SMTPUTF8 (RFC 1870, 6152, 6531) -------------------------------


def test_size_too_small_fails_5_3_4_without_sending_mail() -> None:
    p = Pair(server=settings_for(max_size=100))
    before = len(p.written)
    outcomes = p.send([BOB, CAROL], body=b"x" * 101 + b"\r\n")
    assert [(o.action, o.status) for o in outcomes] == [("failed", "5.3.4")] * 2
    assert outcomes[0].diagnostic == (
        "x-relay; message size 103 exceeds size limit 100 of server mx.example.net")
    assert len(p.written) == before  # nothing sent
    assert p.client.idle


def test_smtputf8_needed_but_absent_fails_5_6_7() -> None:
    s = scripted("PIPELINING", "8BITMIME")
    s.m.send_message(SENDER, [BOB], BODY, smtputf8=True)
    assert s.m.data_to_send() == b""
    [done] = s.of(TransactionDone)
    assert done.outcomes == (outcome(
        BOB, "failed", "5.6.7",
        "x-relay; SMTPUTF8 is required, but was not offered by host mx.example.net"),)


def test_non_ascii_address_implies_smtputf8() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, ["j\u00f6rg@example.net"], BODY)
    [done] = s.of(TransactionDone)
    assert done.outcomes[0].status == "5.6.7"


def test_parameters_present_when_announced() -> None:
    p = Pair()
    body = "Subject: caf\u00e9\r\n\r\nsm\u00f8rrebr\u00f8d\r\n".encode()
    outcomes = p.send(["j\u00f6rg@example.net"], body=body, smtputf8=True, eight_bit=True)
    assert outcomes[0].action == "delivered"
    assert p.written[1].startswith(
        f"MAIL FROM:<alice@example.org> SIZE={len(body)} BODY=8BITMIME SMTPUTF8\r\n".encode())
    [mail] = [e for e in p.server_events if isinstance(e, server_events.MailFrom)]
    assert (mail.size, mail.body, mail.smtputf8) == (len(body), "8BITMIME", True)
    assert p.received[0].body == body


def test_parameters_absent_when_not_announced() -> None:
    s = scripted("PIPELINING", "SMTPUTF8")
    s.m.send_message("", [BOB], BODY, eight_bit=True)
    assert s.m.data_to_send().startswith(b"MAIL FROM:<>\r\nRCPT")


# ---- the body (RFC 5321 §4.5.2) ----------------------------------------------------


def test_dot_stuffing_doubles_leading_dots() -> None:
    assert dot_stuff(b".a\r\nb\r\n.\r\n..c\r\n") == b"..a\r\nb\r\n..\r\n...c\r\n.\r\n"


def test_body_without_final_crlf_gets_one() -> None:
    assert dot_stuff(b"a\r\n.b") == b"a\r\n..b\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


def test_bare_line_ends_become_crlf() -> None:
    # RFC 5321 §2.3.8; otherwise "\n.\n" could end the message early at some receivers.
    assert dot_stuff(b"a\n.\nb\r.\rc") == b"a\r\n..\r\nb\r\n..\r\nc\r\n.\r\n"


def test_dot_stuffed_body_arrives_intact() -> None:
    p = Pair()
    body = b".starts with a dot\r\n..two\r\n.\r\nmiddle\r\n.last without CRLF"
    assert p.send([BOB], body=body) == (delivered(BOB),)
    assert p.received[0].body == body + b"\r\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"\r", b"\n", b"\xc3\xa9", b" "]),
                max_size=30).map(b"".join))
def test_any_body_arrives_as_sent_with_crlf_line_ends(body: bytes) -> None:
    p = Pair()
    assert p.send([BOB], body=body, eight_bit=True) == (delivered(BOB),)
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert p.received[0].body == expected


# ---- reuse and QUIT (RFC 5321 §4.1.1.4, §4.1.1.10) ---------------------------------


def test_two_messages_on_one_connection_without_rset() -> None:
    p = Pair()
    assert p.send([BOB]) == (delivered(BOB),)
    n = len(p.written)
    assert p.send([CAROL], body=b"second\r\n") == (delivered(CAROL),)
    assert p.written[n].startswith(b"MAIL FROM:")  # a completed transaction needs no RSET
    assert [m.body for m in p.received] == [BODY, b"second\r\n"]


def test_after_an_aborted_transaction_the_next_mail_follows_the_rset() -> None:
    def refuse_bob(event: object) -> R.Reply | None:
        if isinstance(event, server_events.RcptTo) and event.recipient.local == "bob":
            return R.USER_UNKNOWN
        return None

    p = Pair(decide=refuse_bob)
    p.send([BOB])
    assert p.written[-1] == b"RSET\r\n"  # the refused BDAT chunk is followed by RSET
    assert p.send([CAROL]) == (delivered(CAROL),)
    assert p.written[-2] == b"RSET\r\n"
    assert p.written[-1].startswith(b"MAIL FROM:")


def test_quit_is_answered_then_closed() -> None:
    p = Pair()
    p.send([BOB])
    p.client.quit()
    p.pump()
    assert p.written[-1] == b"QUIT\r\n"
    assert p.events[-1] == Closed()
    assert p.server_closed and p.client.state is ClientState.CLOSED
    p.client.quit()  # idempotent once closed


def test_quit_then_peer_close_without_reply_is_closed() -> None:
    s = scripted()
    s.m.quit()
    assert s.m.data_to_send() == b"QUIT\r\n"
    s.feed(b"")
    assert s.events[-1] == Closed()


def test_peer_closing_an_idle_connection_is_closed_not_failed() -> None:
    s = scripted()
    s.feed(b"")
    assert s.events == [Ready(), Closed()]


def test_421_while_idle_fails_the_connection() -> None:
    s = scripted()
    s.feed(b"421 4.4.2 idle timeout\r\n")
    assert s.events[-1] == Failed(False, R.Reply(421, "4.4.2", "idle timeout"), "4.4.2",
                                  "smtp; 421 4.4.2 idle timeout", REMOTE)
    with pytest.raises(ClientMisuse):
        s.m.send_message(SENDER, [BOB], BODY)


@pytest.mark.parametrize("stray, status, diagnostic", [
    (b"250 stray\r\n", "4.5.0",
     "x-relay; protocol error from mx.example.net while idle: unsolicited reply 250"),
    (b"42", "4.5.0",
     "x-relay; protocol error from mx.example.net while idle: unsolicited data"),
    (b"421 4.3.2 bye\r\n", "4.3.2", "smtp; 421 4.3.2 bye"),
])
def test_octets_received_while_idle_are_never_taken_for_the_mail_reply(
        stray: bytes, status: str, diagnostic: str) -> None:
    s = scripted("PIPELINING")
    s.m.receive_data(stray)  # not yet processed when the glue starts a transaction
    s.m.send_message(SENDER, [BOB], BODY)
    assert s.m.data_to_send() == b""
    done, failed = s.of(TransactionDone)[0], s.events[-1]
    assert done.outcomes == (outcome(BOB, "delayed", status, diagnostic),)
    assert isinstance(failed, Failed) and failed.diagnostic == diagnostic


# ---- the connection dying mid-transaction -----------------------------------------


def test_peer_closing_mid_data_delays_unfinished_recipients_4_4_2() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB, CAROL, DAVE], BODY)
    s.m.data_to_send()
    assert s.feed(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n") == BODY + b".\r\n"
    s.feed(b"")
    lost = "x-relay; lost connection with mx.example.net while sending message body"
    done, failed = s.events[1:]
    assert done == TransactionDone((
        outcome(BOB, "delayed", "4.4.2", lost),
        outcome(CAROL, "failed", "5.1.1", "smtp; 550 5.1.1 no"),
        outcome(DAVE, "delayed", "4.4.2", lost)))
    assert failed == Failed(False, None, "4.4.2", lost, REMOTE)
    assert not s.m.idle
    with pytest.raises(ClientMisuse):
        s.m.send_message(SENDER, [BOB], BODY)


def test_timeout_mid_data_delays_with_a_timeout_diagnostic() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB], BODY)
    s.m.data_to_send()
    s.feed(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.m.timed_out()
    done = s.of(TransactionDone)[0]
    assert done.outcomes == (outcome(
        BOB, "delayed", "4.4.2",
        "x-relay; conversation with mx.example.net timed out while sending message body"),)
    assert isinstance(s.events[-1], Failed)


def test_timeout_while_idle_is_closed() -> None:
    s = scripted()
    s.m.timed_out()
    assert s.of(Closed) == [Closed()]


def test_peer_closing_mid_data_against_our_server() -> None:
    p = Pair()
    p.client.send_message(SENDER, [BOB], BODY)
    body_started = p.client.data_to_send()  # MAIL/RCPT/DATA, never delivered
    assert body_started.startswith(b"MAIL")
    p.client.receive_data(b"")
    p.pump()
    done, failed = p.events[-2:]
    assert isinstance(done, TransactionDone) and isinstance(failed, Failed)
    assert done.outcomes[0].diagnostic == (
        "x-relay; lost connection with mx.example.net while sending MAIL FROM")


def test_421_mid_transaction_delays_pending_recipients() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB, CAROL, DAVE], BODY)
    s.m.data_to_send()
    s.feed(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n421 4.3.2 shutting down\r\n")
    bye = "smtp; 421 4.3.2 shutting down"
    done, failed = s.events[1:]
    assert done == TransactionDone((
        outcome(BOB, "delayed", "4.3.2", bye),
        outcome(CAROL, "failed", "5.1.1", "smtp; 550 5.1.1 no"),
        outcome(DAVE, "delayed", "4.3.2", bye)))
    assert isinstance(failed, Failed) and failed.reply is not None and failed.reply.code == 421


def test_421_after_a_refused_mail_keeps_the_final_outcomes() -> None:
    # A server may count the pipelined 503s after a refused MAIL as errors and hang up.
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB, CAROL], BODY)
    s.m.data_to_send()
    s.feed(b"550 5.7.1 blocked\r\n503 5.5.1 Need MAIL\r\n421 4.7.0 Too many errors\r\n")
    done, failed = s.events[1:]
    assert isinstance(done, TransactionDone) and isinstance(failed, Failed)
    assert [(o.action, o.status) for o in done.outcomes] == [("failed", "5.7.1")] * 2


def test_rset_refused_ends_the_transaction_then_fails_the_connection() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB], BODY)
    s.m.data_to_send()
    assert s.feed(b"250 ok\r\n550 no\r\n503 no\r\n") == b"RSET\r\n"
    assert s.feed(b"500 what\r\n") == b"QUIT\r\n"
    assert [type(e) for e in s.events] == [Ready, TransactionDone, Failed]


# ---- reply syntax (RFC 5321 §4.2, §4.5.3.1.5) --------------------------------------


def test_replies_split_byte_by_byte() -> None:
    p = Pair(decide=three_way, split=1)
    assert [o.action for o in p.send([BOB, CAROL, DAVE])] == ["delivered", "failed", "delayed"]
    p.client.quit()
    p.pump()
    assert p.events[-1] == Closed()


def test_several_replies_in_one_chunk_and_one_reply_in_many() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB, CAROL], BODY)
    s.m.data_to_send()
    assert s.feed(b"250 ok\r\n250 ok\r\n25", b"0 ok\r", b"\n354 go\r\n") == BODY + b".\r\n"


def test_multiline_final_reply_is_joined_with_spaces() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB], BODY)
    s.m.data_to_send()
    s.feed(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.feed(b"550-5.7.1 The message was\r\n550-5.7.1 rejected as spam.\r\n"
           b"550 5.7.1 See https://x\r\n")
    [done] = s.of(TransactionDone)
    assert done.outcomes[0].status == "5.7.1"
    assert done.outcomes[0].diagnostic == (
        "smtp; 550 5.7.1 The message was rejected as spam. See https://x")


def test_enhanced_code_of_the_wrong_class_is_ignored() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB], BODY)
    s.m.data_to_send()
    s.feed(b"250 ok\r\n451 2.0.0 odd\r\n503 no\r\n", b"250 ok\r\n")
    [done] = s.of(TransactionDone)
    assert (done.outcomes[0].status, done.outcomes[0].diagnostic) == (
        "4.0.0", "smtp; 451 2.0.0 odd")


def test_control_characters_never_reach_a_diagnostic() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB], BODY)
    s.m.data_to_send()
    s.feed(b"250 ok\r\n550 5.1.1 a\rBcc: x\x00\r\n503 no\r\n", b"250 ok\r\n")
    [done] = s.of(TransactionDone)
    assert done.outcomes[0].diagnostic == "smtp; 550 5.1.1 a?Bcc: x?"


@pytest.mark.parametrize("garbage, what", [
    (b"hello\r\n", "malformed reply line"),
    (b"25\r\n", "malformed reply line"),
    (b"250x\r\n", "malformed reply line"),
    (b"199 odd\r\n", "malformed reply line"),
    (b"250-a\r\n251 b\r\n", "reply lines with different codes"),
    (b"2" * MAX_REPLY_LINE, "reply line longer than 512 octets"),
    (b"250-x\r\n" * 101, "reply longer than 100 lines"),
    (b"354 go\r\n", "unexpected reply 354"),
])
def test_garbage_mid_transaction_is_a_temporary_protocol_error(garbage: bytes, what: str) -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, [BOB], BODY)
    s.m.data_to_send()
    s.feed(garbage)
    done, failed = s.events[1:]
    diagnostic = f"x-relay; protocol error from mx.example.net while sending MAIL FROM: {what}"
    assert done == TransactionDone((outcome(BOB, "delayed", "4.5.0", diagnostic),))
    assert failed == Failed(False, None, "4.5.0", diagnostic, REMOTE)


def test_a_512_octet_reply_line_is_accepted() -> None:
    s = Script()
    line = b"220 " + b"x" * (MAX_REPLY_LINE - 6) + b"\r\n"
    assert len(line) == MAX_REPLY_LINE
    assert s.feed(line) == EHLO


def test_unsolicited_reply_while_idle_is_a_protocol_error() -> None:
    s = scripted()
    s.feed(b"250 surprise\r\n")
    assert isinstance(s.events[-1], Failed)
    assert s.events[-1].diagnostic.endswith("while idle: unsolicited reply 250")


def test_bare_lf_reply_lines_are_tolerated() -> None:
    s = Script()
    assert s.feed(b"220 hi\n") == EHLO


# ---- local refusals and misuse -----------------------------------------------------


def test_recipient_that_could_inject_commands_is_refused_locally() -> None:
    s = scripted("PIPELINING")
    s.m.send_message(SENDER, ["x@example.net>\r\nDATA", BOB], BODY)
    assert s.m.data_to_send() == (
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
    s.feed(b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n")
    [done] = s.of(TransactionDone)
    assert done.outcomes[0] == outcome("x@example.net>\r\nDATA", "failed", "5.1.3",
                                       "x-relay; bad recipient address syntax")
    assert done.outcomes[1].action == "delivered"


def test_bad_sender_fails_every_recipient_locally() -> None:
    s = scripted("PIPELINING")
    s.m.send_message("a>\r\nRSET", [BOB], BODY)
    assert s.m.data_to_send() == b""
    [done] = s.of(TransactionDone)
    assert done.outcomes[0].status == "5.1.7" and s.m.idle


def test_misuse_raises_client_misuse() -> None:
    m = ClientMachine(HELO, MX, False)
    with pytest.raises(ClientMisuse):
        m.send_message(SENDER, [BOB], BODY)
    with pytest.raises(ClientMisuse):
        m.tls_started()
    with pytest.raises(ClientMisuse):
        m.quit()
    s = scripted("PIPELINING")
    with pytest.raises(ClientMisuse):
        s.m.send_message(SENDER, [], BODY)
    s.m.send_message(SENDER, [BOB], BODY)
    with pytest.raises(ClientMisuse):
        s.m.send_message(SENDER, [BOB], BODY)
    with pytest.raises(ClientMisuse):
        s.m.quit()


def test_bad_construction_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError):
        ClientMachine("not a name", MX, False)
    with pytest.raises(ValueError):
        ClientMachine(HELO, "mx\r\nBcc: x", False)


# ---- crash-freedom (DESIGN.md §5.4.6) ----------------------------------------------

MESSAGES = [
    (SENDER, [BOB, CAROL], b"hi\r\n", False),
    ("", [DAVE], b"x" * 80 + b"\r\n", False),
    (SENDER, ["j\u00f6rg@example.net", BOB, "bad>address"], b".\r\n", True),
]
_STATUS = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}")
_ACTION = {"2": "delivered", "4": "delayed", "5": "failed"}


class Driver:
    """The glue's duties, done by the book: send MESSAGES in turn, then QUIT."""

    def __init__(self, starttls: bool, quit_after: int) -> None:
        self.m = ClientMachine(HELO, MX, starttls)
        self.quit_after = quit_after
        self.sent: list[list[str]] = []
        self.done: list[TransactionDone] = []
        self.ends: list[ClientEvent] = []

    def feed(self, chunk: bytes) -> bytes:
        self.m.receive_data(chunk)
        while not isinstance(event := self.m.next_event(), Signal):
            assert not self.ends, f"{event} after {self.ends}"
            if isinstance(event, Ready):
                self._start_next()
            elif isinstance(event, StartTls):
                self.m.tls_started()
            elif isinstance(event, TransactionDone):
                self.done.append(event)
                if self.m.idle:
                    self._start_next()
            else:
                assert isinstance(event, (Failed, Closed))
                self.ends.append(event)
        return self.m.data_to_send()

    def _start_next(self) -> None:
        if len(self.sent) >= self.quit_after:
            self.m.quit()
            return
        sender, rcpts, body, utf8 = MESSAGES[len(self.sent) % len(MESSAGES)]
        self.sent.append(rcpts)
        self.m.send_message(sender, rcpts, body, smtputf8=utf8, eight_bit=utf8)

    def check_finished(self) -> None:
        """After the peer closed: finished exactly once, every message answered in full."""
        assert len(self.ends) == 1 and self.m.state is ClientState.CLOSED
        assert self.m.next_event() is Signal.PAUSED
        assert len(self.done) == len(self.sent)
        for rcpts, done in zip(self.sent, self.done, strict=True):
            assert [o.recipient for o in done.outcomes] == rcpts
            for o in done.outcomes:
                status = _STATUS.fullmatch(o.status)
                assert status and _ACTION[status.group(1)] == o.action, o
                assert o.remote_mta == REMOTE and o.diagnostic.isprintable(), o


GARBAGE = [
    b"220 mx ready\r\n", b"220-mx\r\n", b"250 ok\r\n", b"250-PIPELINING\r\n", b"250-SIZE 60\r\n",
    b"250-STARTTLS\r\n", b"354 go\r\n", b"421 4.3.2 bye\r\n", b"451 4.3.0 later\r\n",
    b"550 5.1.1 no\r\n", b"221 bye\r\n", b"\r\n", b"garbage\r\n", b"25", b"0 x\r\n", b"\n",
    b"\r", b"\x00\xff", b"2" * 600, b"250-x\r\n" * 60,
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.one_of(st.sampled_from(GARBAGE), st.binary(max_size=12)), max_size=40),
       cuts=st.lists(st.integers(0, 1500), max_size=8), starttls=st.booleans(),
       quit_after=st.integers(0, 3))
def test_random_reply_streams_never_raise_and_every_recipient_gets_one_outcome(
        pieces: list[bytes], cuts: list[int], starttls: bool, quit_after: int) -> None:
    stream = b"".join(pieces)
    points = sorted(min(c, len(stream)) for c in cuts)
    driver = Driver(starttls, quit_after)
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        driver.feed(stream[a:b])
    driver.feed(b"")
    driver.check_finished()


# A server that answers each command it was sent, drawing the answer (mostly sensible,
# sometimes not) and a fault: close, trailing garbage, an extra 421, or a split reply.
EHLO_REPLIES = [
    b"250 mx\r\n",
    b"250-mx\r\n250-PIPELINING\r\n250 SIZE 60\r\n",
    b"250-mx\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n250-8BITMIME\r\n250 STARTTLS\r\n",
    b"250-mx\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n",
]
ANSWERS = {
    "GREETING": [b"220 mx\r\n"] * 8 + [b"421 4.3.2 busy\r\n", b"554 5.7.1 no\r\n"],
    "EHLO": EHLO_REPLIES * 3 + [b"500 5.5.1 what\r\n", b"421 4.3.2 bye\r\n"],
    "HELO": [b"250 mx\r\n"] * 3 + [b"550 no\r\n"],
    "STARTTLS": [b"220 2.0.0 go\r\n"] * 3 + [b"454 4.7.0 no\r\n"],
    "MAIL": [b"250 2.1.0 ok\r\n"] * 8 + [b"451 4.3.0 later\r\n", b"550 5.7.1 no\r\n"],
    "RCPT": [b"250 2.1.5 ok\r\n"] * 8 + [b"451 4.3.0 later\r\n", b"550 5.1.1 no\r\n",
                                         b"421 4.3.2 bye\r\n"],
    "DATA": [b"354 go\r\n"] * 8 + [b"554 5.5.1 no\r\n", b"451 4.3.0 later\r\n"],
    ".": [b"250 2.0.0 queued\r\n"] * 6 + [b"451 4.3.0 later\r\n", b"554 5.7.1 spam\r\n"],
    "RSET": [b"250 2.0.0 ok\r\n"] * 6 + [b"500 no\r\n"],
    "QUIT": [b"221 2.0.0 bye\r\n", b"500 no\r\n"],
}
FAULTS = [None] * 24 + ["close", "garbage", "unsolicited", "split", "split"]


class Commands:
    """Splits what the client wrote into the commands the server owes replies to."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.body = False  # after a 354: the next thing written is a body ending in "."
        self.pending: list[str] = ["GREETING"]

    def add(self, octets: bytes) -> None:
        self.buf += octets
        while True:
            if self.body:
                end = 3 if self.buf.startswith(b".\r\n") else self.buf.find(b"\r\n.\r\n") + 5
                if end < 5 and end != 3:
                    return
                self.pending.append(".")
                self.body = False
            else:
                end = self.buf.find(b"\r\n") + 2
                if end < 2:
                    return
                verb = bytes(self.buf[:end]).split(b" ")[0].split(b":")[0].strip()
                self.pending.append(verb.decode())
            del self.buf[:end]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), starttls=st.booleans(), quit_after=st.integers(0, 4))
def test_random_server_answers_never_raise_and_never_invent_a_delivery(
        data: st.DataObject, starttls: bool, quit_after: int) -> None:
    driver = Driver(starttls, quit_after)
    commands = Commands()
    final_ok = 0  # 2xx answers to an end of data: the only way to "delivered"
    for _ in range(40):
        if driver.ends or not commands.pending:
            break
        verb = commands.pending.pop(0)
        reply = data.draw(st.sampled_from(ANSWERS[verb]), label=verb)
        fault = data.draw(st.sampled_from(FAULTS), label="fault")
        if fault == "close":
            break
        if verb == "DATA" and reply.startswith(b"354"):
            commands.body = True
        if verb == "." and reply.startswith(b"2"):
            final_ok += 1
        if fault == "garbage":
            reply += data.draw(st.binary(max_size=8))
        elif fault == "unsolicited":
            reply += b"421 4.3.2 bye\r\n"
        cut = data.draw(st.integers(0, len(reply))) if fault == "split" else len(reply)
        for chunk in (reply[:cut], reply[cut:]):
            if chunk:  # b"" would be the close
                commands.add(driver.feed(chunk))
    driver.feed(b"")
    driver.check_finished()
    delivered_in = [any(o.action == "delivered" for o in d.outcomes) for d in driver.done]
    assert sum(delivered_in) <= final_ok
    event(f"transactions={len(driver.done)} delivered={sum(delivered_in)} "
          f"end={type(driver.ends[0]).__name__}")
