"""ClientMachine: outbound SMTP as a sans-I/O state machine (RFC 5321), the mirror of
relay.smtp.machine.ServerMachine.

Reply octets go in through `receive_data` (b"" = the peer closed), events come out of
`next_event`, command octets accumulate in an outbox read by `data_to_send`. The glue
(delivery/connector.py) owns the socket, TLS and every timer (RFC 5321 §4.5.3.2); this
module never reads a clock. It turns one envelope into one `Outcome` per recipient.

Extensions used: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
SMTPUTF8 (RFC 6531), STARTTLS (RFC 3207, opportunistic), ENHANCEDSTATUSCODES (RFC 2034,
whose codes are read whenever present). CHUNKING is parsed but BDAT is not sent.

Theory of operation. `_expect` is the queue of replies the server owes us, one entry per
command written, in order (RFC 2920 §3.1: replies come back in command order). Every
complete reply pops the head and goes to that command's handler, which records outcomes
and may write the next command (one at a time without PIPELINING; MAIL, every RCPT and
DATA in one write with it). A reply that arrives when nothing is owed is unsolicited:
only 421 is allowed there (RFC 5321 §3.8). What breaks this: writing a command without
pushing its expectation, or pushing one for a command that gets no reply (the body
octets and the "." share one expectation, BODY).

The events (Ready, StartTls, TransactionDone, Failed, Closed) and what the glue does
with each are in relay.delivery.events; reply reading in relay.delivery.replies.

Trust: every reply octet is hostile. No input may raise out of this module; replies are
bounded (512-octet lines, 100 lines) and their text is sanitised before it reaches a
diagnostic, which ends up in a DSN and a log line.
Imports: stdlib, relay._fast (crlf_lines, dot_stuff), relay.delivery.{events,replies},
relay.queue.model, relay.smtp.{grammar,replies}. No asyncio, socket, ssl, time, random
or logging (DESIGN.md §2).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from relay._fast import crlf_lines, dot_stuff
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
from relay.delivery.replies import (
    ACTIONS,
    CONTROL,
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    REPLY_CLASSES,
    Expect,
    parse_extensions,
    parse_reply,
    reply_diagnostic,
    reply_status,
)
from relay.queue.model import Outcome
from relay.smtp.grammar import GrammarError, is_valid_helo, parse_mailbox
from relay.smtp.replies import Reply


class ClientMisuse(RuntimeError):
    """The glue called the machine at the wrong time: a bug in the caller, not the peer."""


class _ProtocolError(Exception):
    """The peer broke the reply grammar or sequence; converted once, in next_event()."""


@dataclass(slots=True)
class _Transaction:
    recipients: list[str]
    body: bytes
    pipelined: bool
    outcomes: list[Outcome | None]
    todo: list[int] = field(default_factory=list)  # indices that get a RCPT
    sent: int = 0  # without PIPELINING: how many of `todo` have been sent
    mail_ok: bool = False
    accepted: list[int] = field(default_factory=list)


class ClientMachine:
    """One outbound SMTP connection's dialogue.

    Args:
        helo_name: our host name for EHLO/HELO (an ASCII domain or address literal).
        remote_mta: the host name we connected to; Outcomes carry it as "dns; NAME".
        starttls: use STARTTLS when the server offers it (opportunistic, RFC 3207).
    Raises:
        ValueError: helo_name or remote_mta is unusable.
    """

    def __init__(self, helo_name: str, remote_mta: str, starttls: bool) -> None:
        if not helo_name.isascii() or not is_valid_helo(helo_name.encode("ascii")):
            raise ValueError(f"invalid HELO name {helo_name!r}")
        if not remote_mta or CONTROL.search(remote_mta) or " " in remote_mta:
            raise ValueError(f"invalid remote MTA name {remote_mta!r}")
        self.helo_name = helo_name
        self.host = remote_mta
        self.remote_mta = f"dns; {remote_mta}"  # RFC 3464 §2.3.5
        self.starttls = starttls
        self.state = ClientState.GREETING
        self.tls_active = False
        self.esmtp = False
        self.extensions: dict[str, str] = {}  # EHLO keyword (upper case) -> its parameters
        self.max_size: int | None = None  # SIZE n > 0 announced (RFC 1870 §4)
        self._buf = bytearray()
        self._lines: list[bytes] = []  # lines of a multi-line reply read so far
        self._code = 0
        self._out: list[bytes] = []
        self._events: deque[ClientEvent] = deque()
        self._expect: deque[tuple[Expect, int]] = deque([(Expect.GREETING, 0)])
        self._current: Expect | None = None  # the command whose reply is being handled
        self._peer_closed = False
        self._timeout = False
        self._txn: _Transaction | None = None

    # ---- input/output ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Append octets from the peer; b"" means the peer closed its side."""
        if self.state is ClientState.CLOSED:
            return
        if not data:
            self._peer_closed = True
        else:
            self._buf += data

    def timed_out(self) -> None:
        """The glue's timer fired (RFC 5321 §4.5.3.2): like the peer closing, but the
        diagnostic says "timed out". The glue closes the transport after the event."""
        if self.state is not ClientState.CLOSED:
            self._peer_closed = True
            self._timeout = True

    def data_to_send(self) -> bytes:
        """Command octets to write, in order; b"" when there are none."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ClientEvent:
        """Process buffered replies until an event is ready, or return a Signal."""
        while not self._events:
            if self.state is ClientState.CLOSED:
                return Signal.PAUSED
            try:
                if self.state is ClientState.TLS_HANDSHAKE:
                    if self._buf:
                        # RFC 3207 §4.2: nothing from before the handshake is trusted after
                        # it; octets behind the 220 (CVE-2011-0411's class, client side)
                        # would otherwise be read as if they came over TLS.
                        raise _ProtocolError("plaintext data after the STARTTLS reply")
                    if not self._peer_closed:
                        return Signal.PAUSED
                    self._lost()
                    continue
                reply = self._read_reply()
                if reply is None:
                    if not self._peer_closed:
                        return Signal.NEED_DATA
                    self._lost()
                    continue
                self._dispatch(reply)
            except _ProtocolError as exc:
                self._protocol_error(str(exc))
            finally:
                self._current = None
        return self._events.popleft()

    @property
    def idle(self) -> bool:
        """True when send_message() and quit() may be called."""
        return self.state is ClientState.IDLE

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    # ---- calls from the glue --------------------------------------------------------

    def tls_started(self) -> None:
        """The TLS handshake finished: forget what the server said and EHLO again
        (RFC 3207 §4.2)."""
        if self.state is not ClientState.TLS_HANDSHAKE:
            raise ClientMisuse(f"tls_started() in state {self.state.name}")
        self.tls_active = True
        self.esmtp = False
        self.extensions = {}
        self.max_size = None
        self._send(f"EHLO {self.helo_name}\r\n".encode("ascii"), Expect.EHLO)
        self.state = ClientState.HELLO

    def send_message(self, sender: str, recipients: list[str], body: bytes,
                     smtputf8: bool = False, eight_bit: bool = False) -> None:
        """Start one mail transaction; a TransactionDone event reports it.

        Args:
            sender: the reverse-path without brackets; "" is the null path <>.
            recipients: forward-paths without brackets, at least one.
            body: the message, CRLF line endings; dot-stuffing is done here.
            smtputf8: the message needs SMTPUTF8 (also implied by a non-ASCII address).
            eight_bit: the body has 8-bit octets (BODY=8BITMIME when announced).
        Raises:
            ClientMisuse: not idle, or no recipients.
        """
        if self.state is not ClientState.IDLE:
            raise ClientMisuse(f"send_message() in state {self.state.name}")
        if not recipients:
            raise ClientMisuse("send_message() without recipients")
        utf8 = smtputf8 or not (sender.isascii() and all(r.isascii() for r in recipients))
        txn = _Transaction(list(recipients), body, self.pipelining, [None] * len(recipients))
        refusal = self._refuse_locally(sender, len(body), utf8)
        for i, rcpt in enumerate(txn.recipients):
            if refusal is not None:
                txn.outcomes[i] = self._local(rcpt, *refusal)
            elif not _valid_path(rcpt):
                txn.outcomes[i] = self._local(rcpt, "5.1.3", "bad recipient address syntax")
            else:
                txn.todo.append(i)
        if not txn.todo:
            # Nothing was sent: the connection stays idle and reusable.
            self._events.append(TransactionDone(tuple(o for o in txn.outcomes if o)))
            return
        self._txn = txn
        self.state = ClientState.TRANSACTION
        if self._buf:
            # Octets arrived while nothing was owed; they must not pass for the MAIL reply.
            return self._unsolicited()
        self._send(self._mail_command(sender, len(body), utf8, eight_bit), Expect.MAIL)
        if txn.pipelined:
            # RFC 2920 §3.1: MAIL, every RCPT and DATA in one write; replies match in order.
            for i in txn.todo:
                self._send(_rcpt_command(txn.recipients[i]), Expect.RCPT, i)
            txn.sent = len(txn.todo)
            if "CHUNKING" in self.extensions:
                # RFC 3030 §2 with RFC 2920: MAIL, RCPTs and the whole message as one
                # BDAT LAST chunk in a single write, one round trip per message. No
                # dot-stuffing in BDAT; line ends are still made CRLF (RFC 5321 §2.3.8).
                data = crlf_lines(body)
                self._send(b"BDAT %d LAST\r\n" % len(data) + data, Expect.BDAT)
            else:
                self._send(b"DATA\r\n", Expect.DATA)

    def quit(self) -> None:
        """RFC 5321 §4.1.1.10: send QUIT; Closed follows the reply (or the peer's close).

        A no-op once Failed or Closed was emitted, so a `finally:` may call it.
        """
        if self.state is ClientState.CLOSED:
            return
        if self.state is not ClientState.IDLE:
            raise ClientMisuse(f"quit() in state {self.state.name}")
        self._send(b"QUIT\r\n", Expect.QUIT)
        self.state = ClientState.QUIT

    # ---- reply reading --------------------------------------------------------------

    def _read_reply(self) -> Reply | None:
        """One complete reply from the buffer (RFC 5321 §4.2), or None if more is needed."""
        buf = self._buf
        while True:
            nl = buf.find(b"\n", 0, MAX_REPLY_LINE)
            if nl < 0:
                if len(buf) >= MAX_REPLY_LINE:  # RFC 5321 §4.5.3.1.5
                    raise _ProtocolError("reply line longer than 512 octets")
                return None
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            if line.endswith(b"\r"):
                line = line[:-1]  # a bare LF is tolerated as a line end (robustness)
            # Reply-line = Reply-code [("-" / SP) textstring]; codes are 2xx-5xx.
            if (len(line) < 3 or not line[:3].isdigit() or line[:1] not in b"2345"
                    or line[3:4] not in (b"", b" ", b"-")):
                raise _ProtocolError("malformed reply line")
            code = int(line[:3])
            if self._lines and code != self._code:
                raise _ProtocolError("reply lines with different codes")
            self._code = code
            self._lines.append(line[4:])
            if len(self._lines) > MAX_REPLY_LINES:
                raise _ProtocolError(f"reply longer than {MAX_REPLY_LINES} lines")
            if line[3:4] != b"-":
                lines, self._lines = self._lines, []
                return parse_reply(code, lines)

    def _dispatch(self, reply: Reply) -> None:
        if not self._expect:
            # RFC 5321 §3.8: a server may announce it is closing with an unsolicited 421.
            if reply.code == 421:
                return self._server_closing(reply)
            raise _ProtocolError(f"unsolicited reply {reply.code}")
        kind, index = self._expect[0]
        self._current = kind
        if kind is Expect.QUIT:
            return self._closed()
        if reply.code // 100 not in REPLY_CLASSES[kind]:
            raise _ProtocolError(f"unexpected reply {reply.code}")
        self._expect.popleft()
        if reply.code == 421:
            return self._server_closing(reply)  # RFC 5321 §3.8, at any point
        _HANDLERS[kind](self, reply, index)

    # ---- handshake (RFC 5321 §3.1, §3.2; RFC 3207) ----------------------------------

    def _on_greeting(self, reply: Reply, _: int) -> None:
        if reply.code // 100 != 2:
            return self._refused(reply)  # RFC 5321 §3.1: 554 = no service here
        self.state = ClientState.HELLO
        self._send(f"EHLO {self.helo_name}\r\n".encode("ascii"), Expect.EHLO)

    def _on_ehlo(self, reply: Reply, _: int) -> None:
        cls = reply.code // 100
        if cls == 5:
            # RFC 5321 §3.2: on "command not recognized" the client falls back to HELO.
            return self._send(f"HELO {self.helo_name}\r\n".encode("ascii"), Expect.HELO)
        if cls == 4:
            return self._refused(reply)
        self.esmtp = True
        self.extensions = parse_extensions(reply)
        size = self.extensions.get("SIZE", "")
        # RFC 1870 §4: SIZE 0 or no number means no fixed limit.
        self.max_size = int(size) if size.isdigit() and size.isascii() and int(size) else None
        if self.starttls and not self.tls_active and "STARTTLS" in self.extensions:
            # Never pipelined (RFC 2920 §3.1, RFC 3207 §4.2): wait for the 220.
            return self._send(b"STARTTLS\r\n", Expect.STARTTLS)
        self._ready()

    def _on_helo(self, reply: Reply, _: int) -> None:
        if reply.code // 100 != 2:
            return self._refused(reply)
        self.esmtp = False
        self.extensions = {}
        self.max_size = None
        self._ready()

    def _on_starttls(self, reply: Reply, _: int) -> None:
        if reply.code // 100 != 2:
            return self._ready()  # opportunistic: carry on in plaintext
        if self._buf:
            raise _ProtocolError("plaintext data after the STARTTLS reply")
        self.state = ClientState.TLS_HANDSHAKE
        self._events.append(StartTls())

    def _ready(self) -> None:
        self.state = ClientState.IDLE
        self._events.append(Ready())

    # ---- transaction (RFC 5321 §3.3, RFC 2920) --------------------------------------

    def _on_mail(self, reply: Reply, _: int) -> None:
        txn = self._txn
        assert txn is not None
        if reply.code // 100 == 2:
            txn.mail_ok = True
            if not txn.pipelined:
                self._next_rcpt()
            return
        for i in txn.todo:  # the sender was refused: every recipient gets that reply
            txn.outcomes[i] = self._from_reply(txn.recipients[i], reply)
        if not txn.pipelined:
            self._abort()
        # Pipelined: the RCPT and DATA replies are still owed; they are consumed unread.

    def _on_rcpt(self, reply: Reply, index: int) -> None:
        txn = self._txn
        assert txn is not None
        if not txn.mail_ok:
            return  # after a refused MAIL these are 503s; the MAIL reply already decided
        if reply.code // 100 == 2:
            txn.accepted.append(index)
        else:
            txn.outcomes[index] = self._from_reply(txn.recipients[index], reply)
        if not txn.pipelined:
            self._next_rcpt()

    def _next_rcpt(self) -> None:
        """Without PIPELINING: the next RCPT, then DATA if anyone was accepted."""
        txn = self._txn
        assert txn is not None
        if txn.sent < len(txn.todo):
            i = txn.todo[txn.sent]
            txn.sent += 1
            self._send(_rcpt_command(txn.recipients[i]), Expect.RCPT, i)
        elif txn.accepted:
            self._send(b"DATA\r\n", Expect.DATA)
        else:
            self._abort()

    def _on_data(self, reply: Reply, _: int) -> None:
        txn = self._txn
        assert txn is not None
        live = txn.mail_ok and txn.accepted
        if reply.code // 100 == 3:
            if live:
                self._send(dot_stuff(txn.body), Expect.BODY)
            else:
                # RFC 2920 §3.1: DATA accepted although no recipient was; send a lone ".".
                self._send(b".\r\n", Expect.DOT)
            return
        if live:
            for i in txn.accepted:
                txn.outcomes[i] = self._from_reply(txn.recipients[i], reply)
        self._abort()

    def _on_body(self, reply: Reply, _: int) -> None:
        txn = self._txn
        assert txn is not None
        # RFC 5321 §4.1.1.4: one reply for the whole message, for every accepted recipient.
        for i in txn.accepted:
            txn.outcomes[i] = self._from_reply(txn.recipients[i], reply)
        self._finish()

    def _on_bdat(self, reply: Reply, _: int) -> None:
        txn = self._txn
        assert txn is not None
        if not (txn.mail_ok and txn.accepted):
            # RFC 3030 §2: the chunk was read and refused; reset so the connection is reusable.
            return self._abort()
        for i in txn.accepted:
            txn.outcomes[i] = self._from_reply(txn.recipients[i], reply)
        self._finish()

    def _on_dot(self, reply: Reply, _: int) -> None:
        self._finish()  # the lone "." ended an empty transaction; its reply decides nothing

    def _on_rset(self, reply: Reply, _: int) -> None:
        self._finish()
        if reply.code // 100 != 2:
            # Outcomes are final, but the server's state is unknown: do not reuse.
            self._fail(False, reply, reply_status(reply), reply_diagnostic(reply), quit=True)

    def _abort(self) -> None:
        """The transaction cannot complete: RSET so the connection can be reused.

        RFC 5321 §4.1.1.4: the end of data (whatever its reply) clears the server's
        buffers, so a finished transaction needs no RSET; an abandoned one does (§4.1.1.5).
        """
        self._send(b"RSET\r\n", Expect.RSET)

    def _finish(self) -> None:
        txn = self._txn
        assert txn is not None
        self._txn = None
        self.state = ClientState.IDLE
        outcomes = tuple(
            o or self._outcome(txn.recipients[i], "delayed", "4.5.0",
                               "x-relay; no reply for this recipient")
            for i, o in enumerate(txn.outcomes)
        )
        self._events.append(TransactionDone(outcomes))

    # ---- the end of the connection --------------------------------------------------

    def _refused(self, reply: Reply) -> None:
        """The server refused service in-protocol (greeting, EHLO, HELO): QUIT politely."""
        self._fail(reply.code // 100 == 5, reply, reply_status(reply), reply_diagnostic(reply),
                   quit=True)

    def _server_closing(self, reply: Reply) -> None:
        """421 (RFC 5321 §3.8): the server is closing; everything unfinished is delayed."""
        self._die(reply, reply_status(reply), reply_diagnostic(reply))

    def _unsolicited(self) -> None:
        """send_message() found octets that arrived while idle: a 421 (RFC 5321 §3.8),
        or a broken peer. Either way the connection cannot carry this message."""
        try:
            reply = self._read_reply()
        except _ProtocolError as exc:
            return self._protocol_error(str(exc))
        if reply is not None and reply.code == 421:
            return self._server_closing(reply)
        self._protocol_error(f"unsolicited reply {reply.code}" if reply else "unsolicited data")

    def _lost(self) -> None:
        if self.state is ClientState.QUIT or (self.state is ClientState.IDLE and not self._expect):
            return self._closed()  # nothing was in flight
        what = (f"conversation with {self.host} timed out" if self._timeout
                else f"lost connection with {self.host}")
        self._die(None, "4.4.2", f"x-relay; {what} while {self._phase()}")  # RFC 3463 X.4.2

    def _protocol_error(self, what: str) -> None:
        if self.state is ClientState.QUIT:
            return self._closed()
        # RFC 3463 X.5.0: other or undefined protocol status.
        self._die(None, "4.5.0",
                  f"x-relay; protocol error from {self.host} while {self._phase()}: {what}")

    def _die(self, reply: Reply | None, status: str, diagnostic: str) -> None:
        """The connection is gone mid-whatever: unfinished recipients are delayed."""
        txn = self._txn
        if txn is not None:
            for i, outcome in enumerate(txn.outcomes):
                if outcome is None:
                    txn.outcomes[i] = self._outcome(txn.recipients[i], "delayed", status,
                                                    diagnostic)
            self._finish()
        self._fail(False, reply, status, diagnostic, quit=False)

    def _fail(self, permanent: bool, reply: Reply | None, status: str, diagnostic: str,
              quit: bool) -> None:
        if quit:
            self._out.append(b"QUIT\r\n")  # RFC 5321 §3.1: a 554 server waits for QUIT
        self._stop()
        self._events.append(
            Failed(permanent, reply, status, diagnostic, self.remote_mta, self.tls_active))

    def _closed(self) -> None:
        self._stop()
        self._events.append(Closed())

    def _stop(self) -> None:
        self.state = ClientState.CLOSED
        self._expect.clear()
        self._buf.clear()
        self._lines = []
        self._txn = None

    # ---- helpers --------------------------------------------------------------------

    def _send(self, octets: bytes, kind: Expect, index: int = 0) -> None:
        self._out.append(octets)
        self._expect.append((kind, index))

    def _phase(self) -> str:
        kind = self._current
        if kind is None and self._expect:
            kind = self._expect[0][0]
        if kind is not None:
            return kind.value
        if self.state is ClientState.TLS_HANDSHAKE:
            return "performing the TLS handshake"
        return "idle"

    def _refuse_locally(self, sender: str, size: int, utf8: bool) -> tuple[str, str] | None:
        """(status, text) when the message cannot go to this server at all, sending nothing."""
        if self.max_size is not None and size > self.max_size:
            # RFC 1870 §6: do not send a message the server already said it cannot take.
            return "5.3.4", (f"message size {size} exceeds size limit {self.max_size} "
                             f"of server {self.host}")
        if utf8 and "SMTPUTF8" not in self.extensions:
            # RFC 6531 §3.2: no downgrade; the message cannot be delivered here.
            return "5.6.7", f"SMTPUTF8 is required, but was not offered by host {self.host}"
        if sender and not _valid_path(sender):
            return "5.1.7", "bad sender address syntax"  # RFC 3463 X.1.7
        return None

    def _local(self, recipient: str, status: str, text: str) -> Outcome:
        return self._outcome(recipient, "failed", status, f"x-relay; {text}")

    def _from_reply(self, recipient: str, reply: Reply) -> Outcome:
        return self._outcome(recipient, ACTIONS[reply.code // 100], reply_status(reply),
                             reply_diagnostic(reply))

    def _outcome(self, recipient: str, action: str, status: str, diagnostic: str) -> Outcome:
        return Outcome(recipient, action, status, diagnostic, self.remote_mta, self.tls_active)

    def _mail_command(self, sender: str, size: int, utf8: bool, eight_bit: bool) -> bytes:
        params = []
        if "SIZE" in self.extensions:
            params.append(f" SIZE={size}")  # RFC 1870 §5
        if eight_bit and "8BITMIME" in self.extensions:
            params.append(" BODY=8BITMIME")  # RFC 6152 §3
        if utf8:
            params.append(" SMTPUTF8")  # RFC 6531 §3.4 (only reached when announced)
        return f"MAIL FROM:<{sender}>{''.join(params)}\r\n".encode()


_HANDLERS = {
    Expect.GREETING: ClientMachine._on_greeting,
    Expect.EHLO: ClientMachine._on_ehlo,
    Expect.HELO: ClientMachine._on_helo,
    Expect.STARTTLS: ClientMachine._on_starttls,
    Expect.MAIL: ClientMachine._on_mail,
    Expect.RCPT: ClientMachine._on_rcpt,
    Expect.DATA: ClientMachine._on_data,
    Expect.BODY: ClientMachine._on_body,
    Expect.DOT: ClientMachine._on_dot,
    Expect.BDAT: ClientMachine._on_bdat,
    Expect.RSET: ClientMachine._on_rset,
}


def _rcpt_command(recipient: str) -> bytes:
    return f"RCPT TO:<{recipient}>\r\n".encode()


def _valid_path(address: str) -> bool:
    """RFC 5321 §4.1.2 (RFC 6531 §3.3): also what keeps CR, LF and ">" out of commands."""
    try:
        parse_mailbox(address.encode("utf-8"), utf8=True)
    except (GrammarError, UnicodeEncodeError):
        return False
    return True
