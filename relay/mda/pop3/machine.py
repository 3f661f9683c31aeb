"""Pop3Machine: one POP3 server session as a sans-I/O state machine.

RFC 1939 (POP3), RFC 2449 (CAPA, response codes, PIPELINING, line lengths), RFC 2595
(STLS), RFC 5034 (SASL AUTH, [AUTH] / [SYS/TEMP] / [IN-USE] codes of RFC 3206).

Same surface as relay.smtp.machine: `receive_data(bytes)` (b"" = peer closed),
`next_event()`, `data_to_send()`. Decisions the machine cannot make are events that stop
it until the glue answers; commands pipelined behind them wait in the buffer, so
responses always leave in command order (RFC 2449 §6.6):

    Authenticate      -> auth_ok() then open_maildrop(messages), or auth_failed(...)
    NeedMessage       -> message(data) or message_failed(reason)
    StartTls          -> tls_started() once the handshake is done
    Update            -> update_done(ok); then Closed
    Closed            -> write data_to_send() and close the connection

Messages are addressed in events by their 0-based position in the list given to
`open_maildrop`; the client sees 1-based message numbers (RFC 1939 §5).

Trust: everything received is hostile; no input may raise out of this module. The glue
is trusted: answering a decision that was not asked is a bug and raises UsageError.
Imports: stdlib, relay.mda.pop3.{events,replies}, relay.auth.sasl (the SASL steps; itself a
sans-I/O machine).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from relay.auth.sasl import (
    MECHANISMS,
    Challenge,
    Credentials,
    SaslErrorKind,
    SaslExchange,
    SaslResult,
)
from relay.mda.pop3 import replies as R
from relay.mda.pop3.events import (
    Authenticate,
    Closed,
    Event,
    NeedMessage,
    Signal,
    StartTls,
    Update,
)

# RFC 2449 §4: command lines up to 255 octets including CRLF.
MAX_LINE = 255
# SASL continuation lines carry base64 credentials and are not commands; a PLAIN
# response for long names and passwords can exceed 255 octets, so they get more room.
MAX_SASL_LINE = 8192
# An over-long line is answered once and skipped; a peer that keeps sending one line
# past this many octets is not speaking POP3 and is cut off.
MAX_GARBAGE = 64 * 1024
# Errors before we hang up (Postfix smtpd_hard_error_limit spirit).
MAX_ERRORS = 20
# RFC 1939 §4 / RFC 1725: the server may close after failed authentication attempts.
MAX_AUTH_FAILURES = 3
# RFC 1939 §7 UIDL: a unique-id is 1 to 70 characters in 0x21..0x7E.
MAX_UID = 70
# Message numbers longer than this cannot exist; refuse before int() sees them.
MAX_NUMBER_DIGITS = 10


class UsageError(RuntimeError):
    """The glue called a method the machine's state does not allow (a bug, not the peer's)."""


class State(enum.Enum):
    AUTHORIZATION = "authorization"  # RFC 1939 §4
    TRANSACTION = "transaction"  # RFC 1939 §5
    UPDATE = "update"  # RFC 1939 §6: QUIT received, waiting for update_done()
    CLOSED = "closed"


class _Pending(enum.Enum):
    NONE = 0
    AUTH = 1  # Authenticate emitted
    MAILDROP = 2  # auth_ok() received, open_maildrop() expected
    MESSAGE = 3  # NeedMessage emitted
    TLS = 4  # StartTls emitted
    UPDATE = 5  # Update emitted


class Pop3Machine:
    """One POP3 server session's dialogue.

    Args:
        plaintext_allowed: may the client send a password (USER/PASS, AUTH PLAIN/LOGIN)?
            The glue sets it when TLS is active, the peer is loopback, or the operator
            allows plaintext; tls_started() turns it on.
        tls_available: offer STLS (RFC 2595) while TLS is not yet active.
        tls_active: the connection is already TLS (implicit TLS on port 995).
    """

    def __init__(self, plaintext_allowed: bool, tls_available: bool = False,
                 tls_active: bool = False) -> None:
        self.plaintext_allowed = plaintext_allowed or tls_active
        self.tls_available = tls_available
        self.tls_active = tls_active
        self.state = State.AUTHORIZATION
        self.errors = 0
        self.auth_failures = 0
        self.user = ""  # the authenticated user once auth_ok() was called
        self._buf = bytearray()
        self._out: list[bytes | memoryview] = []
        self._events: list[Event] = []
        self._pending = _Pending.NONE
        self._peer_closed = False
        self._discarding = 0  # octets skipped of an over-long line (0: not skipping)
        self._user_arg: str | None = None  # USER given, PASS expected next
        self._prev_user: str | None = None  # _user_arg as it was before this command
        self._sasl: SaslExchange | None = None  # AUTH exchange awaiting a client line
        self._claimed = ""  # user named in the pending Authenticate
        self._uids: list[str] = []
        self._sizes: list[int] = []
        self._deleted: set[int] = set()
        self._wanted: NeedMessage | None = None

    # ---- input/output -------------------------------------------------------------------

    def greeting(self) -> bytes:
        """RFC 1939 §4: the +OK the glue writes when the connection is accepted."""
        return R.GREETING

    def receive_data(self, data: bytes) -> None:
        """Append octets from the peer; b"" means the peer closed its side."""
        if self.state is State.CLOSED:
            return
        if not data:
            self._peer_closed = True
            return
        self._buf += data

    def data_to_send(self) -> bytes:
        """Every response produced so far, as one buffer (message octets copied once, here)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def chunks_to_send(self) -> list[bytes | memoryview]:
        """The same as data_to_send() without joining, for transport.writelines(): a large
        RETR then reaches the socket without the machine copying the message at all."""
        out = self._out
        self._out = []
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

    # ---- decisions ----------------------------------------------------------------------

    def auth_ok(self) -> None:
        """The credentials of the pending Authenticate are good; open_maildrop() follows
        (the +OK is sent then, RFC 1939 §7: only once the maildrop is locked)."""
        self._take(_Pending.AUTH)
        self.user = self._claimed
        self._pending = _Pending.MAILDROP

    def auth_failed(self, reason: str, temporary: bool = False, in_use: bool = False) -> None:
        """Refuse the pending Authenticate, or the maildrop after auth_ok().

        RFC 2449 §8 / RFC 3206: in_use -> "-ERR [IN-USE] reason" (maildrop locked by
        another session), temporary -> "-ERR [SYS/TEMP] reason", else "-ERR [AUTH] reason".
        After MAX_AUTH_FAILURES refusals the session is closed.
        """
        if self._pending not in (_Pending.AUTH, _Pending.MAILDROP):
            raise UsageError("auth_failed() without a pending authentication")
        self._pending = _Pending.NONE
        self.user = ""
        code = "IN-USE" if in_use else "SYS/TEMP" if temporary else "AUTH"
        self._err(f"[{code}] {R.clean(reason)}")
        self.auth_failures += 1
        if self.auth_failures >= MAX_AUTH_FAILURES:
            self._close()

    def open_maildrop(self, messages: Sequence[tuple[str, int]]) -> None:
        """After auth_ok(): the locked maildrop as (unique-id, size in octets) per message,
        in message-number order. Enters TRANSACTION (RFC 1939 §5)."""
        self._take(_Pending.MAILDROP)
        uids: list[str] = []
        sizes: list[int] = []
        for uid, size in messages:
            # RFC 1939 §7: unique-id = 1*70 (0x21..0x7E); a bad one is a glue bug.
            if not 1 <= len(uid) <= MAX_UID or not all("!" <= c <= "~" for c in uid):
                raise UsageError(f"invalid unique-id {uid!r}")
            if not isinstance(size, int) or size < 0:
                raise UsageError(f"invalid size {size!r}")
            uids.append(uid)
            sizes.append(size)
        self._uids, self._sizes, self._deleted = uids, sizes, set()
        self.state = State.TRANSACTION
        self._ok(f"maildrop has {len(uids)} messages ({sum(sizes)} octets)")

    def message(self, data: bytes) -> None:
        """The octets of the message asked for by the pending NeedMessage.

        Sent as a multi-line response (RFC 1939 §3): lines end in CRLF (bare LF is
        converted), a line starting with "." gets another ".", ".\r\n" ends it. `data` is
        not copied here: the outbox holds slices of it until data_to_send().
        """
        self._take(_Pending.MESSAGE)
        wanted = self._wanted
        assert wanted is not None
        self._wanted = None
        if wanted.top_lines is None:
            self._ok(f"{self._sizes[wanted.index]} octets")  # RFC 1939 §5 RETR
            end = len(data)
        else:
            self._ok("top of message follows")  # RFC 1939 §7 TOP
            end = R.top_end(data, wanted.top_lines)
        R.dot_stuff(data, end, self._out)

    def message_failed(self, reason: str) -> None:
        """The pending NeedMessage cannot be served (file vanished, I/O error)."""
        self._take(_Pending.MESSAGE)
        self._wanted = None
        self._err(R.clean(reason))

    def tls_started(self) -> None:
        """RFC 2595 §4: the TLS handshake finished. Plaintext received before it is
        forgotten (CVE-2011-0411 class); passwords may now be sent."""
        self._take(_Pending.TLS)
        del self._buf[:]
        self._discarding = 0
        self._user_arg = None
        self.tls_active = True
        self.plaintext_allowed = True

    def update_done(self, ok: bool) -> None:
        """The glue finished the UPDATE state (RFC 1939 §6): answer QUIT and close."""
        self._take(_Pending.UPDATE)
        if ok:
            self._ok(R.SIGNING_OFF)
        else:
            self._err(R.E_UPDATE_FAILED)
        self._close()

    def close(self, reason: str | None = None) -> None:
        """The glue ends the session (idle timeout, shutdown): optional "-ERR reason",
        then Closed. No UPDATE: deletions are forgotten (RFC 1939 §6)."""
        if self.state is State.CLOSED:
            return
        if reason is not None:
            self._err(R.clean(reason))
        self._pending = _Pending.NONE
        self._close()

    # ---- internals: output --------------------------------------------------------------

    def _take(self, expected: _Pending) -> None:
        if self._pending is not expected:
            raise UsageError(f"{expected.name.lower()} answer while pending is "
                             f"{self._pending.name.lower()}")
        self._pending = _Pending.NONE

    def _ok(self, text: str = "") -> None:
        self._out.append(f"+OK {text}\r\n".encode() if text else b"+OK\r\n")

    def _err(self, text: str) -> None:
        self._out.append(f"-ERR {text}\r\n".encode())

    def _error(self, text: str) -> None:
        """A client error: "-ERR text"; too many of them end the session."""
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            self._err(R.E_TOO_MANY_ERRORS)
            self._close()
        else:
            self._err(text)

    def _multiline(self, first: str, lines: list[str]) -> None:
        """RFC 1939 §3 multi-line response of lines we generate (none starts with ".")."""
        body = "".join(f"{line}\r\n" for line in lines)
        self._out.append(f"+OK {first}\r\n{body}.\r\n".encode())

    def _close(self) -> None:
        self.state = State.CLOSED
        self._sasl = None
        self._events.append(Closed(by_peer=False))

    # ---- internals: input ---------------------------------------------------------------

    def _step(self) -> bool:
        """Handle one buffered line; False when more data is needed."""
        buf = self._buf
        nl = buf.find(b"\n")
        if self._discarding:
            # Skipping the rest of an over-long line (already answered).
            if nl < 0:
                self._discarding += len(buf)
                del buf[:]
                if self._discarding > MAX_GARBAGE:
                    self._err(R.E_GARBAGE)
                    self._close()
                    return True
                return False
            del buf[: nl + 1]
            self._discarding = 0
            return True
        limit = MAX_SASL_LINE if self._sasl is not None else MAX_LINE
        if nl < 0:
            if len(buf) >= limit:
                # RFC 2449 §4: no CRLF within the limit; answer now, skip to the line end.
                self._discarding = len(buf)
                del buf[:]
                self._too_long()
                return True
            return False
        line = bytes(buf[:nl])
        del buf[: nl + 1]
        if nl + 1 > limit:
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
            self._sasl = None  # the exchange cannot continue without that line
        self._user_arg = None
        self._error(R.E_LINE_TOO_LONG)

    def _command(self, line: bytes) -> None:
        verb, _, arg = line.partition(b" ")
        # RFC 1939 §7: PASS is valid only immediately after a successful USER.
        self._prev_user, self._user_arg = self._user_arg, None
        entry = _COMMANDS.get(verb.upper())
        if entry is None:
            self._error(R.E_UNKNOWN)
            return
        handler, states = entry
        if self.state not in states:
            self._error(R.E_STATE)
            return
        handler(self, arg)

    # ---- AUTHORIZATION commands (RFC 1939 §4, §7; RFC 5034; RFC 2595) ---------------------

    def _user(self, arg: bytes) -> None:
        if not self.plaintext_allowed:
            return self._error(R.E_PLAINTEXT)
        name = _text(arg.strip(b" "))
        if not name or " " in name:
            return self._error(R.E_SYNTAX)
        self._user_arg = name
        self._ok("send PASS")

    def _pass(self, arg: bytes) -> None:
        if not self.plaintext_allowed:
            return self._error(R.E_PLAINTEXT)
        user = self._prev_user
        if user is None:
            return self._error(R.E_NEED_USER)
        # RFC 1939 §7: PASS has exactly one argument, so spaces belong to the password.
        password = _text(arg)
        if not password:
            return self._error(R.E_SYNTAX)
        self._authenticate(Credentials(user, password, "USER"))

    def _apop(self, arg: bytes) -> None:
        self._error(R.E_APOP)

    def _auth(self, arg: bytes) -> None:
        args = arg.split()
        if not args:
            # RFC 5034 §4 / RFC 2449 §6.3 practice (Outlook): bare AUTH lists mechanisms.
            mechanisms = list(MECHANISMS) if self.plaintext_allowed else []
            self._out.append(b"+OK\r\n" + b"".join(m.encode() + b"\r\n" for m in mechanisms)
                             + b".\r\n")
            return
        if len(args) > 2:
            return self._error(R.E_SYNTAX)
        mechanism = _text(args[0]).upper()
        if mechanism not in MECHANISMS:
            return self._error(SaslErrorKind.UNSUPPORTED_MECHANISM.value)
        if not self.plaintext_allowed:
            # PLAIN and LOGIN carry the password itself: same rule as USER/PASS.
            return self._error(R.E_PLAINTEXT)
        exchange = SaslExchange()
        # RFC 5034 §4: optional initial response, "=" for an empty one.
        self._sasl_result(exchange, exchange.start(mechanism, args[1] if len(args) == 2
                                                   else None))

    def _sasl_line(self, line: bytes) -> None:
        exchange = self._sasl
        assert exchange is not None
        self._sasl = None
        self._sasl_result(exchange, exchange.step(line))

    def _sasl_result(self, exchange: SaslExchange, result: SaslResult) -> None:
        if isinstance(result, Challenge):
            # RFC 5034 §4: "+" SP base64 challenge.
            self._out.append(b"+ " + result.encoded + b"\r\n")
            self._sasl = exchange
        elif isinstance(result, Credentials):
            self._authenticate(result)
        elif result.kind is SaslErrorKind.CANCELLED:
            self._err(result.message)  # RFC 5034 §4: "*" -> -ERR; not the client's error
        else:
            self._error(result.message)

    def _authenticate(self, credentials: Credentials) -> None:
        self._claimed = credentials.user
        self._pending = _Pending.AUTH
        self._events.append(Authenticate(credentials.user, credentials.password,
                                         credentials.mechanism))

    def _stls(self, arg: bytes) -> None:
        if arg:
            return self._error(R.E_SYNTAX)
        if self.tls_active:
            return self._error(R.E_TLS_ACTIVE)
        if not self.tls_available:
            return self._error(R.E_TLS_UNAVAILABLE)
        # RFC 2595 §4 / CVE-2011-0411: nothing pipelined after STLS survives it.
        del self._buf[:]
        self._ok("Begin TLS negotiation")
        self._pending = _Pending.TLS
        self._events.append(StartTls())

    # ---- commands valid in any state ----------------------------------------------------------

    def _capa(self, arg: bytes) -> None:
        """RFC 2449 §5: capabilities; those usable only before login are listed only then."""
        if arg:
            return self._error(R.E_SYNTAX)
        caps = ["TOP", "UIDL"]
        before_login = self.state is State.AUTHORIZATION
        if before_login and self.plaintext_allowed:
            caps.append("USER")  # RFC 2449 §6.2
            caps.append("SASL " + " ".join(MECHANISMS))  # RFC 2449 §6.3, RFC 5034 §6
        caps += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]  # RFC 2449 §6.4/6.6, RFC 3206
        if before_login and self.tls_available and not self.tls_active:
            caps.append("STLS")  # RFC 2595 §4
        caps.append(f"IMPLEMENTATION {R.IMPLEMENTATION}")  # RFC 2449 §6.9
        self._multiline("Capability list follows", caps)

    def _quit(self, arg: bytes) -> None:
        if self.state is State.AUTHORIZATION:
            # RFC 1939 §4: QUIT before login ends the session without UPDATE.
            self._ok(R.SIGNING_OFF)
            self._close()
            return
        # RFC 1939 §6: enter UPDATE; the glue removes the deleted messages.
        self.state = State.UPDATE
        deleted = tuple(sorted(self._deleted))
        self._pending = _Pending.UPDATE
        self._events.append(Update(deleted, tuple(self._uids[i] for i in deleted)))

    # ---- TRANSACTION commands (RFC 1939 §5, §7) -----------------------------------------------

    def _number(self, arg: bytes) -> int | None:
        """A message number argument as a 0-based index, or None after answering -ERR."""
        if not arg.isdigit() or len(arg) > MAX_NUMBER_DIGITS:
            self._error(R.E_BAD_NUMBER)
            return None
        n = int(arg)
        if not 1 <= n <= len(self._uids):
            self._error(R.E_NO_MESSAGE)
            return None
        if n - 1 in self._deleted:
            self._error(f"message {n} already deleted")  # RFC 1939 §5
            return None
        return n - 1

    def _one_number(self, arg: bytes) -> int | None:
        args = arg.split()
        if len(args) != 1:
            self._error(R.E_SYNTAX)
            return None
        return self._number(args[0])

    def _live(self) -> list[int]:
        return [i for i in range(len(self._uids)) if i not in self._deleted]

    def _stat(self, arg: bytes) -> None:
        if arg.strip():
            return self._error(R.E_SYNTAX)
        live = self._live()
        self._ok(f"{len(live)} {sum(self._sizes[i] for i in live)}")  # RFC 1939 §5 drop listing

    def _list(self, arg: bytes) -> None:
        args = arg.split()
        if len(args) > 1:
            return self._error(R.E_SYNTAX)
        if args:
            index = self._number(args[0])
            if index is not None:
                self._ok(f"{index + 1} {self._sizes[index]}")  # RFC 1939 §5 scan listing
            return
        live = self._live()
        self._multiline(f"{len(live)} messages ({sum(self._sizes[i] for i in live)} octets)",
                        [f"{i + 1} {self._sizes[i]}" for i in live])

    def _uidl(self, arg: bytes) -> None:
        args = arg.split()
        if len(args) > 1:
            return self._error(R.E_SYNTAX)
        if args:
            index = self._number(args[0])
            if index is not None:
                self._ok(f"{index + 1} {self._uids[index]}")  # RFC 1939 §7
            return
        self._multiline("unique-id listing follows",
                        [f"{i + 1} {self._uids[i]}" for i in self._live()])

    def _retr(self, arg: bytes) -> None:
        index = self._one_number(arg)
        if index is not None:
            self._need(index, None)

    def _top(self, arg: bytes) -> None:
        args = arg.split()
        if len(args) != 2:
            return self._error(R.E_SYNTAX)
        # RFC 1939 §7: the line count must be non-negative.
        if not args[1].isdigit() or len(args[1]) > MAX_NUMBER_DIGITS:
            return self._error(R.E_SYNTAX)
        index = self._number(args[0])
        if index is not None:
            self._need(index, int(args[1]))

    def _need(self, index: int, top_lines: int | None) -> None:
        self._wanted = NeedMessage(index, self._uids[index], top_lines)
        self._pending = _Pending.MESSAGE
        self._events.append(self._wanted)

    def _dele(self, arg: bytes) -> None:
        index = self._one_number(arg)
        if index is not None:
            self._deleted.add(index)  # RFC 1939 §5: marked; removed only in UPDATE
            self._ok(f"message {index + 1} deleted")

    def _rset(self, arg: bytes) -> None:
        if arg.strip():
            return self._error(R.E_SYNTAX)
        self._deleted.clear()  # RFC 1939 §5: unmark every message
        self._ok(f"maildrop has {len(self._uids)} messages ({sum(self._sizes)} octets)")

    def _noop(self, arg: bytes) -> None:
        if arg.strip():
            return self._error(R.E_SYNTAX)
        self._ok()


def _text(raw: bytes) -> str:
    """Client argument as text; "" when not UTF-8 or containing controls (never valid)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    if any(c < " " or c == "\x7f" for c in text):
        return ""
    return text


# verb -> (handler, states in which it is valid); RFC 1939 §9 command summary.
_AUTH = frozenset({State.AUTHORIZATION})
_TRANS = frozenset({State.TRANSACTION})
_ANY = frozenset({State.AUTHORIZATION, State.TRANSACTION})
_COMMANDS = {
    b"USER": (Pop3Machine._user, _AUTH),
    b"PASS": (Pop3Machine._pass, _AUTH),
    b"APOP": (Pop3Machine._apop, _AUTH),
    b"AUTH": (Pop3Machine._auth, _AUTH),
    b"STLS": (Pop3Machine._stls, _AUTH),
    b"CAPA": (Pop3Machine._capa, _ANY),
    b"QUIT": (Pop3Machine._quit, _ANY),
    b"STAT": (Pop3Machine._stat, _TRANS),
    b"LIST": (Pop3Machine._list, _TRANS),
    b"UIDL": (Pop3Machine._uidl, _TRANS),
    b"RETR": (Pop3Machine._retr, _TRANS),
    b"TOP": (Pop3Machine._top, _TRANS),
    b"DELE": (Pop3Machine._dele, _TRANS),
    b"RSET": (Pop3Machine._rset, _TRANS),
    b"NOOP": (Pop3Machine._noop, _TRANS),
}
