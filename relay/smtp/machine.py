"""ServerMachine: the inbound SMTP dialogue as a sans-I/O state machine (RFC 5321).

Bytes go in through `receive_data`, events come out of `next_event`, reply octets
accumulate in an outbox read by `data_to_send`. The machine never touches a socket,
clock or random source. Protocol-level outcomes (syntax, sequence, limits) are decided
here; policy and queueing are decisions the glue answers with accept()/reject().

Extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
ENHANCEDSTATUSCODES (RFC 2034), SMTPUTF8 (RFC 6531), CHUNKING (RFC 3030),
STARTTLS (RFC 3207), AUTH PLAIN LOGIN (RFC 4954; the SASL steps are relay.auth.sasl's).

AUTH: the machine runs the SASL exchange ("334 " challenges, "*" cancels) and emits
one Authenticate decision with the credentials; the glue checks them and answers
auth_ok(account) or auth_failed(temporary). AUTH is advertised only when the settings
say a password check exists and, with auth_requires_tls (Postfix smtpd_tls_auth_only),
only inside TLS. With auth_required (the submission ports, RFC 6409 §4.3) MAIL needs a
successful AUTH first.

Trust: everything received is hostile; no input may raise out of this module.
SmtpSettings, State and the limits are in relay.smtp.settings.
Imports: stdlib, relay._fast, relay.smtp.{events,grammar,replies,settings}, relay.auth.sasl
(a sans-I/O machine itself).
"""

from __future__ import annotations

import enum

from relay import _fast
from relay.auth.sasl import MECHANISMS, Challenge, Credentials, SaslExchange, SaslResult
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
from relay.smtp.grammar import GrammarError, Mailbox, is_valid_helo, parse_mailbox, parse_size
from relay.smtp.replies import SASL_FAILURE_REPLIES
from relay.smtp.settings import MAX_AUTH_LINE, MAX_BDAT_DIGITS, MAX_ERRORS, SmtpSettings, State


class _Pending(enum.Enum):
    NONE = 0
    MAIL = 1
    RCPT = 2
    MESSAGE = 3
    AUTH = 4


class ServerMachine:
    """One SMTP server session's dialogue."""

    def __init__(self, settings: SmtpSettings, tls_active: bool = False) -> None:
        self.settings = settings
        self.tls_active = tls_active
        self.state = State.GREETING
        self.helo_name = ""
        self.esmtp = False
        self.authenticated = ""  # the account after a successful AUTH (RFC 4954 §4)
        self.errors = 0
        self._buf = bytearray()
        self._out: list[bytes] = []
        self.reply_codes: list[int] = []  # codes of replies in the outbox, for metrics
        self._events: list[Event] = []
        self._pending = _Pending.NONE
        self._discard_line = False  # inside an over-long command line
        self._peer_closed = False
        self._sasl: SaslExchange | None = None  # AUTH exchange awaiting a client line
        self._reset_transaction()

    # ---- input/output ---------------------------------------------------------------

    def greeting(self) -> bytes:
        """RFC 5321 §3.1: the 220 the glue writes when the connection is accepted."""
        return R.greeting(self.settings.hostname).encode()

    def receive_data(self, data: bytes) -> None:
        """Append octets from the peer; b"" means the peer closed its side."""
        if self.state is State.CLOSED:
            return
        if not data:
            self._peer_closed = True
            return
        if self._reader is not None and not self._buf and self._pending is _Pending.NONE:
            # Common DATA path: feed the chunk straight to the reader, no copy into _buf.
            used = self._reader.feed(data)
            if used < len(data):
                self._buf += data[used:]
        else:
            self._buf += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event:
        """Process buffered input until an event is ready or more data is needed."""
        while not self._events:
            if self.state is State.CLOSED:
                return Signal.NEED_DATA
            if self._pending is not _Pending.NONE:
                return Signal.PAUSED
            if not self._step():
                if self._peer_closed:
                    self.state = State.CLOSED
                    return Closed(by_peer=True)
                return Signal.NEED_DATA
        return self._events.pop(0)

    # ---- decisions ------------------------------------------------------------------

    def accept(self, reply: R.Reply | None = None) -> None:
        """The glue approves the pending MailFrom/RcptTo/MessageReceived."""
        pending = self._take_pending(auth=False)
        if pending is _Pending.MAIL:
            self.state = State.MAIL
            self._reply(reply or R.SENDER_OK)
        elif pending is _Pending.RCPT:
            assert self._candidate is not None
            self._recipients.append(self._candidate)
            self.state = State.RCPT
            self._reply(reply or R.RECIPIENT_OK)
        else:
            self._reply(reply or R.OK)
            self._end_transaction()

    def reject(self, reply: R.Reply) -> None:
        """The glue refuses the pending decision with `reply` (4xx/5xx)."""
        pending = self._take_pending(auth=False)
        self._reply(reply)
        if pending is _Pending.MESSAGE:
            self._end_transaction()
        if reply.code == 421:
            self._close()

    def auth_ok(self, account: str) -> None:
        """The pending Authenticate succeeded: the session now acts for `account`."""
        self._take_pending(auth=True)
        self.authenticated = account
        self._reply(R.AUTH_OK)

    def auth_failed(self, temporary: bool = False) -> None:
        """The pending Authenticate failed: 535 5.7.8, or 454 4.7.0 when `temporary`
        (the throttle refused to check, RFC 4954 §6)."""
        self._take_pending(auth=True)
        self._error(R.AUTH_TEMPORARY_FAILURE if temporary else R.AUTH_FAILED)

    def tls_started(self) -> None:
        """RFC 3207 §4.2: after the handshake the client must greet again; forget everything."""
        self.tls_active = True
        # RFC 3207 §4.2 / CVE-2011-0411: nothing sent in plaintext survives the upgrade.
        del self._buf[:]
        self._discard_line = False
        self.state = State.GREETING
        self.helo_name = ""
        self.esmtp = False
        self.authenticated = ""  # RFC 3207 §4.2: AUTH included (it is only offered in TLS anyway)
        self._sasl = None
        self._reset_transaction()

    def close_with(self, reply: R.Reply) -> None:
        """The glue ends the session (idle timeout, shutdown): queue a final reply."""
        self._reply(reply)
        self._close()

    # ---- internals ------------------------------------------------------------------

    def _take_pending(self, auth: bool) -> _Pending:
        pending = self._pending
        if pending is _Pending.NONE or (pending is _Pending.AUTH) is not auth:
            what = "auth_ok()/auth_failed()" if auth else "accept()/reject()"
            raise RuntimeError(f"{what} without a matching pending decision")
        self._pending = _Pending.NONE
        return pending

    def _reply(self, reply: R.Reply) -> None:
        self._out.append(reply.encode())
        self.reply_codes.append(reply.code)

    def _error(self, reply: R.Reply) -> None:
        self._reply(reply)
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            self.close_with(R.TOO_MANY_ERRORS)

    def _close(self) -> None:
        self.state = State.CLOSED
        self._events.append(Closed(by_peer=False))

    def _reset_transaction(self) -> None:
        self._sender: Mailbox | None = None
        self._recipients: list[Mailbox] = []
        self._candidate: Mailbox | None = None
        self._smtputf8 = False
        self._reader: _fast.DataReader | None = None
        self._chunks = bytearray()  # BDAT body so far
        self._chunk_open = False  # a BDAT chunk header was read; its octets are pending
        self._chunk_left = 0  # BDAT octets still to read in the current chunk
        self._chunk_last = False
        self._chunk_outside = False  # BDAT outside a transaction: read, then refuse
        self._chunk_failure: R.Reply | None = None  # BDAT: the transaction already failed

    def _end_transaction(self) -> None:
        self._reset_transaction()
        if self.state is not State.CLOSED:
            self.state = State.READY

    def _step(self) -> bool:
        """Make progress on buffered input; False when more data is needed."""
        if self._reader is not None:
            return self._step_data()
        if self._chunk_open:
            return self._step_bdat()
        return self._step_command()

    def _step_command(self) -> bool:
        buf = self._buf
        nl = buf.find(b"\n")
        # RFC 4954 §4: AUTH lines and SASL responses get more room than commands.
        limit = (MAX_AUTH_LINE if self._sasl is not None or buf[:5].upper() == b"AUTH "
                 else _fast.MAX_COMMAND_LINE)
        if nl < 0:
            if len(buf) > limit:
                # RFC 5321 §4.5.3.1.4: over-long line; answer once, skip to its end.
                if not self._discard_line:
                    self._discard_line = True
                    self._too_long()
                del buf[:]
                return True
            return False
        line = bytes(buf[:nl])
        del buf[: nl + 1]
        if self._discard_line:
            self._discard_line = False
            return True
        if len(line) + 1 > limit:
            self._too_long()
            return True
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._sasl is not None:
            self._sasl_line(line)
        else:
            self._command(line)
        return True

    def _too_long(self) -> None:
        if self._sasl is not None:
            self._sasl = None  # the exchange cannot go on without that line
            self._error(R.AUTH_LINE_TOO_LONG)  # RFC 4954 §6
        else:
            self._error(R.LINE_TOO_LONG)

    def _command(self, line: bytes) -> None:
        try:
            cmd = _fast.parse_command(line)
        except _fast.CommandSyntaxError as exc:
            self._error(R.FAILURE_REPLIES[exc.kind])
            return
        handler = _COMMANDS.get(cmd.verb)
        if handler is None:
            self._error(R.UNKNOWN_COMMAND)
            return
        handler(self, cmd)

    # ---- commands (RFC 5321 §4.1.1) ---------------------------------------------------

    def _ehlo(self, cmd: _fast.Command) -> None:
        self._hello(cmd, esmtp=True)

    def _helo(self, cmd: _fast.Command) -> None:
        self._hello(cmd, esmtp=False)

    def _hello(self, cmd: _fast.Command, esmtp: bool) -> None:
        if not is_valid_helo(cmd.arg):
            self._error(R.BAD_HELO)
            return
        # RFC 5321 §4.1.4: EHLO/HELO mid-transaction resets it.
        self._reset_transaction()
        self.state = State.READY
        self.esmtp = esmtp
        self.helo_name = cmd.arg.decode("ascii")
        if not esmtp:
            self._reply(R.helo(self.settings.hostname))
            return
        ext = [
            "PIPELINING",
            f"SIZE {self.settings.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "CHUNKING",
        ]
        if self.settings.tls_available and not self.tls_active:
            ext.append("STARTTLS")
        if self._auth_offered():
            ext.append("AUTH " + " ".join(MECHANISMS))  # RFC 4954 §3
        self._reply(R.ehlo(self.settings.hostname, self.helo_name, ext))

    def _mail(self, cmd: _fast.Command) -> None:
        if self.state is State.GREETING:
            return self._error(R.NEED_HELO)
        if self.state is not State.READY:
            return self._error(R.NESTED_MAIL)
        if self.settings.auth_required and not self.authenticated:
            return self._error(R.AUTH_REQUIRED)  # RFC 4954 §6, RFC 6409 §4.3
        size: int | None = None
        body = "7BIT"
        utf8 = False
        for key, value in cmd.params:
            if not self.esmtp:
                return self._error(R.UNKNOWN_PARAMETER)
            if key == b"SIZE":
                size = parse_size(value)
                if size is None:
                    return self._error(R.SYNTAX_ERROR)
            elif key == b"BODY" and value is not None and value.upper() in (b"7BIT", b"8BITMIME"):
                body = value.upper().decode()
            elif key == b"SMTPUTF8" and value is None:
                utf8 = True
            elif key == b"AUTH" and value is not None and self.settings.auth_available:
                pass  # RFC 4954 §5: the original submitter; accepted and ignored
            else:
                return self._error(R.UNKNOWN_PARAMETER)
        # RFC 1870 §6: refuse at MAIL when the declared size is over the limit.
        if size is not None and size > self.settings.max_message_size:
            return self._error(R.MESSAGE_TOO_BIG)
        sender: Mailbox | None = None
        if cmd.path:
            try:
                sender = parse_mailbox(cmd.path, utf8)
            except GrammarError:
                if not utf8 and any(b > 127 for b in cmd.path):
                    return self._error(R.NEED_SMTPUTF8)  # RFC 6531 §3.5, X.6.7
                return self._error(R.BAD_SENDER_SYNTAX)
        self._sender = sender
        self._smtputf8 = utf8
        self._pending = _Pending.MAIL
        self._events.append(MailFrom(sender, size, utf8, body))

    def _rcpt(self, cmd: _fast.Command) -> None:
        if self.state is State.GREETING:
            return self._error(R.NEED_HELO)
        if self.state not in (State.MAIL, State.RCPT):
            # Not counted as an error: a pipelining client (RFC 2920) whose MAIL was
            # refused sends every RCPT anyway.
            return self._reply(R.NEED_MAIL)
        if cmd.params:
            return self._error(R.UNKNOWN_PARAMETER)
        if not cmd.path:
            return self._error(R.BAD_RECIPIENT_SYNTAX)
        try:
            if cmd.path.lower() == b"postmaster":
                rcpt = Mailbox("postmaster", self.settings.postmaster_domain
                               or self.settings.hostname)
            else:
                rcpt = parse_mailbox(cmd.path, self._smtputf8)
        except GrammarError:
            if not self._smtputf8 and any(b > 127 for b in cmd.path):
                return self._error(R.NEED_SMTPUTF8)
            return self._error(R.BAD_RECIPIENT_SYNTAX)
        # RFC 5321 §4.5.3.1.10: 452 for recipients beyond the limit.
        if len(self._recipients) >= self.settings.max_recipients:
            return self._reply(R.TOO_MANY_RECIPIENTS)
        self._candidate = rcpt
        self._pending = _Pending.RCPT
        self._events.append(RcptTo(rcpt))

    def _data(self, cmd: _fast.Command) -> None:
        if cmd.arg:
            return self._error(R.SYNTAX_ERROR)
        if self.state is State.GREETING:
            return self._error(R.NEED_HELO)
        if self.state is State.BDAT:
            return self._error(R.MIXED_DATA_BDAT)
        if self.state is State.MAIL:
            return self._error(R.NEED_RCPT)
        if self.state is not State.RCPT:
            return self._error(R.NEED_MAIL)
        self.state = State.DATA
        self._reader = _fast.DataReader(self.settings.max_message_size)
        self._reply(R.START_DATA)

    def _step_data(self) -> bool:
        reader = self._reader
        assert reader is not None
        if not reader.done:
            if not self._buf:
                return False
            used = reader.feed(self._buf)
            del self._buf[:used]
            if not reader.done:
                return False
        flags = reader.flags
        self._reader = None
        if flags & _fast.FLAG_TOO_BIG:
            self._reply(R.MESSAGE_TOO_BIG)
        elif flags & (_fast.FLAG_BARE_LF | _fast.FLAG_BARE_CR):
            # CVE-2023-51764 class: we refuse rather than normalise (see README).
            self._reply(R.BARE_LINE_ENDING)
        elif flags & _fast.FLAG_NUL:
            self._reply(R.NUL_IN_DATA)
        else:
            self._deliver(reader.body(), chunked=False)
            return True
        self._end_transaction()
        return True

    def _deliver(self, body: bytes, chunked: bool) -> None:
        self._pending = _Pending.MESSAGE
        self._events.append(
            MessageReceived(self._sender, tuple(self._recipients), body, self._smtputf8, chunked)
        )

    def _bdat(self, cmd: _fast.Command) -> None:
        # RFC 3030 §2: BDAT <size> [LAST]; the chunk octets follow and must always be read.
        parts = cmd.arg.split()
        if (not parts or len(parts) > 2 or not parts[0].isdigit()
                or len(parts[0]) > MAX_BDAT_DIGITS
                or (len(parts) == 2 and parts[1].upper() != b"LAST")):
            # Without a valid size we cannot know how much to skip: answer and carry on.
            return self._error(R.NEED_BDAT_SIZE)
        failure: R.Reply | None = None
        if self.state is State.GREETING:
            failure = R.NEED_HELO
        elif self.state is State.MAIL:
            failure = R.NEED_RCPT
        elif self.state not in (State.RCPT, State.BDAT):
            failure = R.NEED_MAIL
        if failure is not None:
            # Outside a transaction: swallow the chunk, then answer with the failure.
            self._chunk_outside = True
            self._chunk_failure = failure
        else:
            self.state = State.BDAT
        self._chunk_open = True
        self._chunk_left = int(parts[0])
        self._chunk_last = len(parts) == 2

    def _step_bdat(self) -> bool:
        if self._chunk_left:
            if not self._buf:
                return False
            take = min(self._chunk_left, len(self._buf))
            if self._chunk_failure is None:
                if len(self._chunks) + take > self.settings.max_message_size:
                    self._chunk_failure = R.MESSAGE_TOO_BIG  # RFC 3030 §4, RFC 1870
                    self._chunks = bytearray()
                else:
                    self._chunks += memoryview(self._buf)[:take]
            del self._buf[:take]
            self._chunk_left -= take
            if self._chunk_left:
                return False
        # The chunk is complete.
        self._chunk_open = False
        failure = self._chunk_failure
        if self._chunk_outside:
            self._chunk_outside = False
            self._chunk_failure = None
            assert failure is not None
            self._error(failure)
        elif not self._chunk_last:
            self._reply(failure or R.CHUNK_OK)
        elif failure is not None:
            self._reply(failure)
            self._end_transaction()
        else:
            self._deliver(bytes(self._chunks), chunked=True)
        return True

    def _rset(self, cmd: _fast.Command) -> None:
        if cmd.arg:
            return self._error(R.SYNTAX_ERROR)
        self._reset_transaction()
        if self.state is not State.GREETING:
            self.state = State.READY
        self._reply(R.RESET_OK)

    def _noop(self, cmd: _fast.Command) -> None:
        self._reply(R.NOOP_OK)

    def _quit(self, cmd: _fast.Command) -> None:
        self._reply(R.CLOSING)
        self._close()

    def _vrfy(self, cmd: _fast.Command) -> None:
        if not cmd.arg:
            return self._error(R.SYNTAX_ERROR)
        self._reply(R.VRFY_CANNOT)

    def _help(self, cmd: _fast.Command) -> None:
        self._reply(R.HELP)

    def _starttls(self, cmd: _fast.Command) -> None:
        if cmd.arg:
            return self._error(R.TLS_NO_PARAMETERS)
        if self.tls_active:
            return self._error(R.ALREADY_TLS)
        if not self.settings.tls_available:
            return self._error(R.NOT_IMPLEMENTED)
        if self.state is State.GREETING:
            return self._error(R.NEED_HELO)
        if self._buf:
            # RFC 3207 §4.2 / CVE-2011-0411: nothing may be pipelined after STARTTLS.
            del self._buf[:]
        self._reply(R.READY_TLS)
        self._events.append(StartTls())

    # ---- AUTH (RFC 4954) -----------------------------------------------------------------

    def _auth_offered(self) -> bool:
        return self.settings.auth_available and (
            self.tls_active or not self.settings.auth_requires_tls)

    def _auth(self, cmd: _fast.Command) -> None:
        if not self.settings.auth_available:
            return self._error(R.NOT_IMPLEMENTED)
        args = cmd.arg.split()
        if not args or len(args) > 2:
            return self._error(R.AUTH_SYNTAX)
        if self.state is State.GREETING:
            return self._error(R.NEED_HELO)
        if not self.esmtp:
            return self._error(R.AUTH_NEEDS_EHLO)
        if self.authenticated:
            return self._error(R.ALREADY_AUTHENTICATED)
        if self.state is not State.READY:
            return self._error(R.AUTH_IN_TRANSACTION)
        if not self._auth_offered():
            return self._error(R.AUTH_NEEDS_TLS)
        mechanism = args[0].decode("ascii", "replace").upper()
        if mechanism not in MECHANISMS:
            return self._error(R.AUTH_UNKNOWN_MECHANISM)
        exchange = SaslExchange()
        # RFC 4954 §4: an optional initial response; "=" is an empty one.
        self._sasl_result(exchange, exchange.start(mechanism, args[1] if len(args) == 2
                                                   else None))

    def _sasl_line(self, line: bytes) -> None:
        exchange = self._sasl
        assert exchange is not None
        self._sasl = None
        self._sasl_result(exchange, exchange.step(line))

    def _sasl_result(self, exchange: SaslExchange, result: SaslResult) -> None:
        if isinstance(result, Challenge):
            self._reply(R.challenge(result.encoded))
            self._sasl = exchange
        elif isinstance(result, Credentials):
            self._pending = _Pending.AUTH
            self._events.append(Authenticate(result.user, result.password, result.mechanism))
        else:
            self._error(SASL_FAILURE_REPLIES[result.kind])


_COMMANDS = {
    b"EHLO": ServerMachine._ehlo,
    b"HELO": ServerMachine._helo,
    b"MAIL": ServerMachine._mail,
    b"RCPT": ServerMachine._rcpt,
    b"DATA": ServerMachine._data,
    b"BDAT": ServerMachine._bdat,
    b"RSET": ServerMachine._rset,
    b"NOOP": ServerMachine._noop,
    b"QUIT": ServerMachine._quit,
    b"VRFY": ServerMachine._vrfy,
    b"HELP": ServerMachine._help,
    b"STARTTLS": ServerMachine._starttls,
    b"AUTH": ServerMachine._auth,
}
