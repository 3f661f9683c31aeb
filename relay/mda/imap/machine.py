"""ImapMachine: one IMAP4rev1 server connection as a sans-I/O state machine.

RFC 3501 (IMAP4rev1; RFC 9051 clients are served by the same dialogue), with the
connection-level extensions: STARTTLS (§6.2.1), LOGIN (§6.2.3) and AUTHENTICATE PLAIN /
LOGIN (§6.2.2, SASL-IR RFC 4959), LOGINDISABLED, IDLE (RFC 2177), ID (RFC 2971),
NAMESPACE (RFC 2342), LITERAL+ (RFC 7888) and the RFC 5530 response codes.

The machine owns the session state (RFC 3501 §3: not authenticated, authenticated,
selected, logout), the command reader (parser.CommandReader), literal continuation, the
state rules of every command, and every response it can produce on its own. Work that
needs I/O is an event that stops the machine until the glue answers it, so responses
leave in command order however long the answer takes:

    Login       -> login_ok() or login_failed(temporary)
    Execute     -> run commands.execute() against the store, then finish(done)
    StartTls    -> write data_to_send(), upgrade the transport, tls_started()
    IdleStart   -> poll the selected mailbox and write its updates until IdleStop
    IdleStop    -> stop polling, write the last updates, idle_stopped()
    Closed      -> write data_to_send() and close the connection

Input keeps being read during IDLE (only DONE ends it, RFC 2177 §3); during the other
decisions the machine processes nothing further (Signal.PAUSED) and the glue stops reading.

Trust: every octet is from an unauthenticated peer and nothing it sends raises out of
here: malformed commands get BAD and the session goes on; an over-long line, a huge
refused literal, or MAX_BAD_COMMANDS bad commands in a row end it with BYE. The glue is
trusted: answering a decision that was not asked raises UsageError.
Imports: stdlib, relay.mda.imap.{arguments,parser,responses,tokens}, relay.auth.sasl (pure
machines).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.auth.sasl import MECHANISMS, Challenge, Credentials, SaslErrorKind, SaslExchange
from relay.mda.imap import arguments, parser
from relay.mda.imap.arguments import Command
from relay.mda.imap.parser import CommandReader, NeedLiteral, ParseError
from relay.mda.imap.responses import Done, Transition, quoted, tagged
from relay.mda.imap.tokens import ErrorKind

# Bad commands in a row before we hang up (Dovecot's CLIENT_MAX_BAD_COMMANDS).
MAX_BAD_COMMANDS = 20
# RFC 3501 §6.2.3 leaves it open; we close after this many failed logins.
MAX_AUTH_FAILURES = 5
# A refused non-synchronizing literal is read and thrown away; past this size we would
# rather close than read it (RFC 7888 §4 lets a server close after a too-large literal).
MAX_DISCARD = 1024 * 1024

GREETING_TEXT = "relay IMAP4rev1 ready"
BYE_LOGOUT = b"* BYE relay IMAP4rev1 server logging out\r\n"  # RFC 3501 §6.1.3
CONTINUE_LITERAL = b"+ Ready for literal data\r\n"  # RFC 3501 §7.5
CONTINUE_IDLE = b"+ idling\r\n"  # RFC 2177 §3

# Texts of the responses the machine produces itself.
T_NOT_AUTHENTICATED = "Not authenticated"
T_AUTHENTICATED = "Already authenticated"
T_NOT_SELECTED = "No mailbox selected"
T_UNSUPPORTED = "Command not supported"
T_PLAINTEXT = "Plaintext authentication disallowed on non-secure connections"
T_AUTH_FAILED = "Authentication failed"
T_AUTH_BLOCKED = "Too many failed logins, try again later"
T_TOO_MANY_AUTH = "Too many authentication failures"
T_TOO_MANY_BAD = "Too many invalid commands"
T_TOO_MUCH = "Too much data"
T_EXPECTED_DONE = "Expected DONE"


class UsageError(RuntimeError):
    """The glue answered a decision the machine did not ask for (a bug, not the peer's)."""


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"  # RFC 3501 §3.1
    AUTHENTICATED = "authenticated"  # §3.2
    SELECTED = "selected"  # §3.3
    LOGOUT = "logout"  # §3.4: the connection is closing


class Signal(enum.Enum):
    NEED_DATA = "need_data"  # nothing more to do until receive_data()
    PAUSED = "paused"  # waiting for the glue to answer the last decision


@dataclass(frozen=True, slots=True)
class Login:
    """Decision: are these credentials good? Answer login_ok() or login_failed()."""

    tag: str
    user: str
    password: str
    mechanism: str  # "LOGIN" (the command), or the SASL mechanism "PLAIN" / "LOGIN"

    def __repr__(self) -> str:
        return f"Login(tag={self.tag!r}, user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class Execute:
    """Decision: run `command` against the mailbox store (its untagged responses are
    written by the glue), then answer finish(done)."""

    command: Command


@dataclass(frozen=True, slots=True)
class StartTls:
    """The tagged OK to STARTTLS is in the outbox: write it, upgrade, tls_started()."""


@dataclass(frozen=True, slots=True)
class IdleStart:
    """"+ idling" is in the outbox (RFC 2177 §3): report mailbox changes until IdleStop."""

    tag: str


@dataclass(frozen=True, slots=True)
class IdleStop:
    """IDLE ended (DONE, or anything else: a protocol error): stop polling, write the last
    updates, then idle_stopped()."""

    tag: str


@dataclass(frozen=True, slots=True)
class Closed:
    """Write data_to_send(), then close. by_peer: the client went away."""

    by_peer: bool


Event = Login | Execute | StartTls | IdleStart | IdleStop | Closed | Signal


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """What the glue knows about this connection and server, built from config."""

    plaintext_allowed: bool  # TLS, loopback, or [mda] allow_plaintext_auth
    tls_available: bool = False  # offer STARTTLS
    tls_active: bool = False  # implicit TLS (imaps, RFC 8314)
    append_limit: int = parser.MAX_APPEND  # RFC 7889 APPENDLIMIT
    max_command: int = parser.MAX_COMMAND
    server_id: tuple[tuple[str, str], ...] = field(default=(("name", "relay"),))


class _Pending(enum.Enum):
    NONE = 0
    LOGIN = 1
    EXECUTE = 2
    TLS = 3
    IDLE_STOP = 4


# Extensions usable once logged in (RFC 3501 §7.2.1 lets the list change with the state).
_AUTHENTICATED_CAPS = ("NAMESPACE", "UNSELECT", "UIDPLUS", "MOVE", "CHILDREN", "SPECIAL-USE",
                       "LIST-EXTENDED", "LIST-STATUS", "CONDSTORE", "ESEARCH", "STATUS=SIZE")


class ImapMachine:
    """One IMAP server connection's dialogue (see the module docstring)."""

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self.tls_active = settings.tls_active
        self.plaintext_allowed = settings.plaintext_allowed or settings.tls_active
        self.state = State.NOT_AUTHENTICATED
        self.bad_commands = 0
        self.auth_failures = 0
        self.user = ""
        self.reader = self._new_reader()
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._pending = _Pending.NONE
        self._tag = ""  # tag of the command awaiting a decision
        self._idle_tag: str | None = None
        self._idle_ok = True
        self._sasl: SaslExchange | None = None
        self._peer_closed = False
        self._counted: list[str] = []

    def _new_reader(self) -> CommandReader:
        # Before login no APPEND literal is read at all: an unauthenticated client must
        # not make us buffer megabytes (not even as a non-synchronizing literal).
        return CommandReader(max_command=self.settings.max_command,
                             max_append=0 if self.state is State.NOT_AUTHENTICATED
                             else self.settings.append_limit)

    # ---- input / output ----------------------------------------------------------------

    def greeting(self) -> bytes:
        """RFC 3501 §7.1.1: the untagged OK written when the connection opens."""
        return tagged("*", "OK", GREETING_TEXT, self._capability_code())

    def receive_data(self, data: bytes) -> None:
        """Octets from the client; b"" means it closed its side."""
        if self.state is State.LOGOUT:
            return
        if not data:
            self._peer_closed = True
            return
        self.reader.feed(data)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def counted(self) -> list[str]:
        """Names of the commands read since the last call ("FETCH", "UID FETCH"), for the
        relay_imap_commands_total metric."""
        names, self._counted = self._counted, []
        return names

    @property
    def idling(self) -> bool:
        return self._idle_tag is not None

    def next_event(self) -> Event:
        """Process buffered input until an event is ready or more input is needed."""
        while not self._events:
            if self.state is State.LOGOUT:
                return Signal.NEED_DATA
            if self._pending is not _Pending.NONE:
                return Signal.PAUSED
            if not self._step():
                if self._peer_closed:
                    self.state = State.LOGOUT
                    return Closed(by_peer=True)
                return Signal.NEED_DATA
        return self._events.pop(0)

    # ---- answers to decisions ------------------------------------------------------------

    def login_ok(self, user: str) -> None:
        """The pending Login succeeded and the account is open (RFC 3501 §6.2.3)."""
        self._take(_Pending.LOGIN)
        self.user = user
        self.state = State.AUTHENTICATED
        self.reader.max_append = self.settings.append_limit
        self._send(tagged(self._tag, "OK", "Logged in", self._capability_code()))

    def login_failed(self, temporary: bool = False) -> None:
        """Refuse the pending Login: [AUTHENTICATIONFAILED], or [UNAVAILABLE] while the
        throttle blocks this client or account (RFC 5530 §3)."""
        self._take(_Pending.LOGIN)
        if temporary:
            self._send(tagged(self._tag, "NO", T_AUTH_BLOCKED, "UNAVAILABLE"))
        else:
            self._send(tagged(self._tag, "NO", T_AUTH_FAILED, "AUTHENTICATIONFAILED"))
        self.auth_failures += 1
        if self.auth_failures >= MAX_AUTH_FAILURES:
            self.close(T_TOO_MANY_AUTH)

    def finish(self, done: Done) -> None:
        """The pending Execute completed: its tagged response, then its state change."""
        self._take(_Pending.EXECUTE)
        self._send(done.line(self._tag))
        if done.transition is Transition.SELECTED:
            self.state = State.SELECTED
        elif done.transition is Transition.UNSELECTED:
            self.state = State.AUTHENTICATED
        elif done.transition is Transition.LOGOUT:
            self._close()

    def tls_started(self) -> None:
        """RFC 3501 §6.2.1: TLS is up. Anything received before it is forgotten (a fresh
        reader), and passwords may now be sent."""
        self._take(_Pending.TLS)
        self.reader = self._new_reader()
        self.tls_active = True
        self.plaintext_allowed = True

    def idle_stopped(self) -> None:
        """The glue stopped polling after IdleStop: complete the IDLE command."""
        self._take(_Pending.IDLE_STOP)
        tag, self._idle_tag = self._tag, None
        if self._idle_ok:
            self._send(tagged(tag, "OK", "IDLE terminated"))
        else:
            self._send(tagged(tag, "BAD", T_EXPECTED_DONE))

    def close(self, reason: str) -> None:
        """The server ends the session (autologout, shutdown, an error): "* BYE reason"."""
        if self.state is State.LOGOUT:
            return
        self._send(tagged("*", "BYE", reason))
        self._pending = _Pending.NONE
        self._close()

    # ---- internals -----------------------------------------------------------------------

    def _take(self, expected: _Pending) -> None:
        if self._pending is not expected:
            raise UsageError(f"answer for {expected.name} while pending is {self._pending.name}")
        self._pending = _Pending.NONE

    def _send(self, data: bytes) -> None:
        self._out.append(data)

    def _close(self) -> None:
        self.state = State.LOGOUT
        self._sasl = None
        self._idle_tag = None
        self._events.append(Closed(by_peer=False))

    def _step(self) -> bool:
        """Handle one unit of input; False when more octets are needed."""
        if self._sasl is not None:
            line = self.reader.next_line()
            if line is None:
                return False
            if isinstance(line, ParseError):
                self.close(line.text)
            else:
                self._sasl_line(line)
            return True
        result = self.reader.next()
        if result is None:
            return False
        if isinstance(result, NeedLiteral):
            self._literal(result)
        elif isinstance(result, ParseError):
            self._parse_error(result)
        else:
            self._command(result)
        return True

    def _literal(self, need: NeedLiteral) -> None:
        """RFC 3501 §7.5: "+" to go on with a synchronizing literal, or refuse the command
        before the client sends the octets."""
        refusal: Done | None = None
        if self.idling:
            refusal = Done("BAD", T_EXPECTED_DONE)
        elif need.command == "APPEND" and self.state not in (State.AUTHENTICATED,
                                                              State.SELECTED):
            refusal = Done("BAD", self._state_text())
        elif need.command in ("LOGIN", "AUTHENTICATE") and not self.plaintext_allowed:
            refusal = Done("NO", T_PLAINTEXT, "PRIVACYREQUIRED")  # RFC 5530 §3
        if refusal is None:
            self.reader.accept_literal()
            self._send(CONTINUE_LITERAL)
            return
        self.reader.reject_literal()
        self._send(refusal.line(need.tag))
        if self.idling:
            self._stop_idle(ok=False)
        elif refusal.status == "BAD":
            self._count_bad()

    def _parse_error(self, error: ParseError) -> None:
        if error.fatal:
            self.close(error.text)  # RFC 3501 §7.1.5 BYE: the stream cannot be resynced
            return
        if self.idling:
            self._send(tagged(error.tag or "*", "BAD", error.text, error.code))
            self._stop_idle(ok=False)
            return
        if error.command:
            self._counted.append(error.command)
        if error.command == "APPEND" and self.state is State.NOT_AUTHENTICATED:
            # Refused for its size (max_append is 0 before login); the real reason is:
            self._send(tagged(error.tag or "*", "BAD", T_NOT_AUTHENTICATED))
        else:
            self._send(tagged(error.tag or "*", error.status, error.text, error.code))
        if error.kind is ErrorKind.TOO_BIG and self.reader.discarding > MAX_DISCARD:
            self.close(T_TOO_MUCH)
            return
        if error.status == "BAD":
            self._count_bad()

    def _count_bad(self) -> None:
        self.bad_commands += 1
        if self.bad_commands >= MAX_BAD_COMMANDS:
            self.close(T_TOO_MANY_BAD)

    def _state_text(self) -> str:
        return {State.NOT_AUTHENTICATED: T_NOT_AUTHENTICATED,
                State.AUTHENTICATED: T_NOT_SELECTED}.get(self.state, T_AUTHENTICATED)

    def _command(self, cmd: Command) -> None:
        if cmd.name == "DONE":
            if self.idling:
                self._stop_idle(ok=True)
            else:
                self._send(tagged("*", "BAD", "Unexpected DONE"))
                self._count_bad()
            return
        self._counted.append(f"UID {cmd.name}" if cmd.uid else cmd.name)
        if self.idling:  # RFC 2177 §3: only DONE may follow IDLE
            self._stop_idle(ok=False)
            return
        handler, states = _COMMANDS.get(cmd.name, (None, _ANY))
        if self.state not in states:
            # RFC 3501 §6: a command outside its states is a protocol error.
            text = T_AUTHENTICATED if State.NOT_AUTHENTICATED in states else self._state_text()
            self._send(tagged(cmd.tag, "BAD", text))
            self._count_bad()
            return
        self.bad_commands = 0
        if handler is None:
            self._execute(cmd)
        else:
            handler(self, cmd)

    def _execute(self, cmd: Command) -> None:
        self._tag = cmd.tag
        self._pending = _Pending.EXECUTE
        self._events.append(Execute(cmd))

    def _stop_idle(self, ok: bool) -> None:
        assert self._idle_tag is not None
        self._idle_ok = ok
        self._tag = self._idle_tag
        self._pending = _Pending.IDLE_STOP
        self._events.append(IdleStop(self._idle_tag))

    # ---- capabilities (RFC 3501 §6.1.1, §7.2.1) ------------------------------------------

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
        if self.state is State.NOT_AUTHENTICATED:
            if self.settings.tls_available and not self.tls_active:
                caps.append("STARTTLS")
            if self.plaintext_allowed:
                caps += [f"AUTH={m}" for m in MECHANISMS]
            else:
                caps.append("LOGINDISABLED")  # RFC 3501 §6.2.3
        else:
            caps += [*_AUTHENTICATED_CAPS, f"APPENDLIMIT={self.settings.append_limit}"]
        return caps

    def _capability_code(self) -> str:
        return "CAPABILITY " + " ".join(self.capabilities())

    # ---- commands answered here ---------------------------------------------------------

    def _capability(self, cmd: Command) -> None:
        self._send(b"* CAPABILITY " + " ".join(self.capabilities()).encode() + b"\r\n")
        self._send(tagged(cmd.tag, "OK", "CAPABILITY completed"))

    def _noop(self, cmd: Command) -> None:
        if self.state is State.NOT_AUTHENTICATED:
            self._send(tagged(cmd.tag, "OK", "NOOP completed"))
        else:
            self._execute(cmd)  # RFC 3501 §6.1.2: a chance to report mailbox updates

    def _logout(self, cmd: Command) -> None:
        self._send(BYE_LOGOUT)  # RFC 3501 §6.1.3: BYE, then the tagged OK
        self._send(tagged(cmd.tag, "OK", "LOGOUT completed"))
        self._close()

    def _id(self, cmd: Command) -> None:
        """RFC 2971 §3.1: answer with our own identification whatever the client sent."""
        pairs = b" ".join(quoted(k) + b" " + quoted(v) for k, v in self.settings.server_id)
        self._send(b"* ID (" + pairs + b")\r\n" if pairs else b"* ID NIL\r\n")
        self._send(tagged(cmd.tag, "OK", "ID completed"))

    def _namespace(self, cmd: Command) -> None:
        """RFC 2342 §5: one personal namespace, no prefix, "/" as delimiter."""
        self._send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        self._send(tagged(cmd.tag, "OK", "NAMESPACE completed"))

    def _unsupported(self, cmd: Command) -> None:
        self._send(tagged(cmd.tag, "BAD", T_UNSUPPORTED))

    def _starttls(self, cmd: Command) -> None:
        if self.tls_active:
            self._send(tagged(cmd.tag, "BAD", "TLS is already active"))
            return
        if not self.settings.tls_available:
            self._send(tagged(cmd.tag, "BAD", "STARTTLS is not available"))
            return
        self._send(tagged(cmd.tag, "OK", "Begin TLS negotiation now"))
        # RFC 3501 §6.2.1 / CVE-2011-0411: nothing sent after STARTTLS in plaintext
        # may be taken as a command once TLS is up.
        self.reader = self._new_reader()
        self._pending = _Pending.TLS
        self._events.append(StartTls())

    def _login(self, cmd: Command) -> None:
        if not self.plaintext_allowed:  # RFC 3501 §6.2.3 LOGINDISABLED
            self._send(tagged(cmd.tag, "NO", T_PLAINTEXT, "PRIVACYREQUIRED"))
            return
        args = cmd.args
        assert isinstance(args, arguments.Login)
        self._ask_login(cmd.tag, args.user, args.password, "LOGIN")

    def _ask_login(self, tag: str, user: str, password: str, mechanism: str) -> None:
        self._tag = tag
        self._pending = _Pending.LOGIN
        self._events.append(Login(tag, user, password, mechanism))

    def _authenticate(self, cmd: Command) -> None:
        args = cmd.args
        assert isinstance(args, arguments.Authenticate)
        if args.mechanism not in MECHANISMS:
            self._send(tagged(cmd.tag, "NO", "Unsupported authentication mechanism", "CANNOT"))
            return
        if not self.plaintext_allowed:
            self._send(tagged(cmd.tag, "NO", T_PLAINTEXT, "PRIVACYREQUIRED"))
            return
        self._tag = cmd.tag
        exchange = SaslExchange()
        self._sasl_result(exchange, exchange.start(args.mechanism, args.initial_response))

    def _sasl_line(self, line: bytes) -> None:
        exchange, self._sasl = self._sasl, None
        assert exchange is not None
        self._sasl_result(exchange, exchange.step(line))

    def _sasl_result(self, exchange: SaslExchange, result: object) -> None:
        if isinstance(result, Challenge):
            self._send(b"+ " + result.encoded + b"\r\n")  # RFC 3501 §7.5
            self._sasl = exchange
        elif isinstance(result, Credentials):
            self._ask_login(self._tag, result.user, result.password, result.mechanism)
        else:
            kind = getattr(result, "kind", None)
            # RFC 3501 §6.2.2: a cancel ("*") or invalid BASE64 is rejected with BAD.
            if kind in (SaslErrorKind.CANCELLED, SaslErrorKind.BAD_BASE64):
                self._send(tagged(self._tag, "BAD", kind.value.capitalize()))
            else:
                self._send(tagged(self._tag, "NO", T_AUTH_FAILED, "AUTHENTICATIONFAILED"))

    def _idle(self, cmd: Command) -> None:
        self._idle_tag = cmd.tag
        self._idle_ok = True
        self._send(CONTINUE_IDLE)
        self._events.append(IdleStart(cmd.tag))


# name -> (handler, or None for Execute; states in which the command is valid)
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})
_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
_Handler = Callable[[ImapMachine, Command], None] | None
_COMMANDS: dict[str, tuple[_Handler, frozenset[State]]] = {
    # RFC 3501 §6.1: any state
    "CAPABILITY": (ImapMachine._capability, _ANY),
    "NOOP": (ImapMachine._noop, _ANY),
    "LOGOUT": (ImapMachine._logout, _ANY),
    "ID": (ImapMachine._id, _ANY),  # RFC 2971 §3.1
    # §6.2: not authenticated
    "STARTTLS": (ImapMachine._starttls, _NOT_AUTH),
    "LOGIN": (ImapMachine._login, _NOT_AUTH),
    "AUTHENTICATE": (ImapMachine._authenticate, _NOT_AUTH),
    # §6.3: authenticated (and selected)
    "NAMESPACE": (ImapMachine._namespace, _AUTH),
    "IDLE": (ImapMachine._idle, _AUTH),
    "GETQUOTA": (ImapMachine._unsupported, _AUTH),
    "GETQUOTAROOT": (ImapMachine._unsupported, _AUTH),
    **{name: (None, _AUTH) for name in (
        "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
        "LIST", "LSUB", "STATUS", "APPEND", "ENABLE")},
    # §6.4: selected
    **{name: (None, _SELECTED) for name in (
        "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY",
        "MOVE")},
}
