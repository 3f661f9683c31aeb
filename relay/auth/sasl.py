"""SASL (RFC 4422) server exchanges for PLAIN (RFC 4616) and LOGIN, as sans-I/O steps.

One `SaslExchange` serves one AUTH/AUTHENTICATE command of any protocol: SMTP AUTH
(RFC 4954), IMAP AUTHENTICATE (RFC 3501 §6.2.2, SASL-IR RFC 4959) and POP3 AUTH
(RFC 5034). `start()` and `step()` return one of three results:

- `Challenge(encoded)`: send `encoded` (already base64) framed by the protocol
  ("334 " in SMTP, "+ " in IMAP and POP3), then feed the client's next line to `step()`;
- `Credentials(user, password)`: the exchange is over; verify them (AccountStore.verify);
- `SaslError(kind)`: the exchange is over and failed; `kind` says why, so each protocol
  can pick its own reply (SMTP 501 5.5.2 for bad base64, 501 5.7.0 for a cancel, ...).

Base64 is handled here in both directions; callers only frame lines. Only the two
plaintext mechanisms exist: they carry the password itself, so callers must offer them
only over TLS or on trusted connections (Dovecot's disable_plaintext_auth).

Trust: every octet comes from an unauthenticated peer; nothing raises on bad input.
Imports: stdlib only (a protocol machine: no I/O, clock or randomness).
"""

from __future__ import annotations

import binascii
import enum
from dataclasses import dataclass

MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN")
"""Mechanisms we implement, in the order we advertise them (RFC 4422 §3.1 names)."""

# RFC 4616 §2: servers MUST accept authcid, authzid and passwd of up to 255 octets;
# we accept four times that and refuse more, so a hostile peer cannot make us decode
# and hash megabytes.
MAX_FIELD = 1024

# draft-murchison-sasl-login §2.1: the two fixed challenges, base64 of the prompts.
USERNAME_CHALLENGE = binascii.b2a_base64(b"Username:", newline=False)
PASSWORD_CHALLENGE = binascii.b2a_base64(b"Password:", newline=False)


class SaslErrorKind(enum.Enum):
    """Why an exchange failed; the value is a short text protocols may send as-is."""

    CANCELLED = "authentication cancelled"  # RFC 4422 §3.5: client sent "*"
    UNSUPPORTED_MECHANISM = "unsupported authentication mechanism"  # RFC 4422 §3.1
    BAD_BASE64 = "invalid base64 data"  # RFC 4648 §4; RFC 4954 §4 501 5.5.2
    NOT_UTF8 = "credentials are not valid UTF-8"  # RFC 4616 §2: UTF8-SAFE
    MALFORMED = "malformed response"  # RFC 4616 §2 NUL count; a NUL in a LOGIN field
    EMPTY_USERNAME = "empty user name"  # RFC 4616 §2: authcid = 1*SAFE
    EMPTY_PASSWORD = "empty password"  # RFC 4616 §2: passwd = 1*SAFE
    AUTHZID_DENIED = "proxy authorization not permitted"  # RFC 4616 §2, RFC 4422 §3.4.1
    TOO_LONG = "credentials too long"  # MAX_FIELD


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send `encoded` (base64, possibly empty) to the client and await its answer."""

    encoded: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """The client claims to be `user` with `password`: the caller verifies them."""

    user: str
    password: str
    mechanism: str

    def __repr__(self) -> str:  # keep passwords out of logs and test failure output
        return (f"Credentials(user={self.user!r}, password=<hidden>, "
                f"mechanism={self.mechanism!r})")


@dataclass(frozen=True, slots=True)
class SaslError:
    """The exchange failed; see `kind`. `message` is a human-readable text."""

    kind: SaslErrorKind

    @property
    def message(self) -> str:
        return self.kind.value


SaslResult = Challenge | Credentials | SaslError


class _Step(enum.Enum):
    IDLE = "idle"  # start() not called yet
    PLAIN = "plain"  # PLAIN: sent the empty challenge, awaiting the whole response
    LOGIN_USER = "login_user"  # LOGIN: sent "Username:"
    LOGIN_PASSWORD = "login_password"  # LOGIN: sent "Password:"
    DONE = "done"  # Credentials or SaslError returned


class SaslExchange:
    """One server-side SASL exchange: `start()` once, then `step()` per client line.

    Calling `step()` when no challenge is outstanding, or `start()` twice, is a bug in
    the caller and raises RuntimeError; anything the client sends yields a result.
    """

    def __init__(self, mechanisms: tuple[str, ...] = MECHANISMS) -> None:
        for name in mechanisms:
            if name not in MECHANISMS:
                raise ValueError(f"mechanism not implemented: {name}")
        self.mechanisms = mechanisms
        self.mechanism = ""
        self._step = _Step.IDLE
        self._login_user = ""

    @property
    def done(self) -> bool:
        """True once a Credentials or SaslError has been returned."""
        return self._step is _Step.DONE

    @property
    def waiting(self) -> bool:
        """True while a Challenge is outstanding: the next client line goes to step()."""
        return self._step in (_Step.PLAIN, _Step.LOGIN_USER, _Step.LOGIN_PASSWORD)

    def start(self, mechanism: str, initial: bytes | None) -> SaslResult:
        """Begin the exchange.

        Args:
            mechanism: the name the client chose (case-insensitive, RFC 4422 §3.1).
            initial: the initial response exactly as sent (base64, or b"=" for an empty
                one per RFC 4954 §4 / RFC 4959 §3 / RFC 5034 §4), or None if absent.
        Returns:
            Challenge, Credentials or SaslError.
        """
        if self._step is not _Step.IDLE:
            raise RuntimeError("SaslExchange.start() called twice")
        name = mechanism.upper()
        if name not in self.mechanisms:
            return self._fail(SaslErrorKind.UNSUPPORTED_MECHANISM)
        self.mechanism = name
        if name == "PLAIN":
            if initial is None:
                # RFC 4616 §2 / RFC 4422 §5: no initial response, send an empty challenge.
                self._step = _Step.PLAIN
                return Challenge(b"")
            return self._plain(initial)
        # LOGIN: many clients send the user name as an initial response (Postfix and
        # Cyrus accept it); otherwise prompt for it.
        if initial is None:
            self._step = _Step.LOGIN_USER
            return Challenge(USERNAME_CHALLENGE)
        return self._login_username(initial)

    def step(self, client_line: bytes) -> SaslResult:
        """Feed the client's answer to the last Challenge (one line, CRLF optional)."""
        if not self.waiting:
            raise RuntimeError("SaslExchange.step() without an outstanding challenge")
        line = client_line.rstrip(b"\r\n")
        if line.strip() == b"*":
            # RFC 4422 §3.5, RFC 4954 §4, RFC 3501 §6.2.2, RFC 5034 §4: "*" cancels.
            return self._fail(SaslErrorKind.CANCELLED)
        if self._step is _Step.PLAIN:
            return self._plain(line)
        if self._step is _Step.LOGIN_USER:
            return self._login_username(line)
        return self._login_password(line)

    # ---- mechanisms ---------------------------------------------------------------------

    def _plain(self, encoded: bytes) -> SaslResult:
        """RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd."""
        raw = self._decode(encoded)
        if isinstance(raw, SaslError):
            return raw
        fields = raw.split(b"\0")
        if len(fields) != 3:
            return self._fail(SaslErrorKind.MALFORMED)
        texts: list[str] = []
        for field in fields:
            if len(field) > MAX_FIELD:
                return self._fail(SaslErrorKind.TOO_LONG)
            try:
                texts.append(field.decode("utf-8"))
            except UnicodeDecodeError:
                return self._fail(SaslErrorKind.NOT_UTF8)
        authzid, authcid, password = texts
        if not authcid:
            return self._fail(SaslErrorKind.EMPTY_USERNAME)
        if not password:
            return self._fail(SaslErrorKind.EMPTY_PASSWORD)
        # RFC 4616 §2: an authzid different from authcid asks to act as another user;
        # we have no proxy authorization. Case-insensitive: accounts are lower-cased.
        if authzid and authzid != authcid and authzid.lower() != authcid.lower():
            return self._fail(SaslErrorKind.AUTHZID_DENIED)
        self._step = _Step.DONE
        return Credentials(authcid, password, "PLAIN")

    def _login_username(self, encoded: bytes) -> SaslResult:
        """draft-murchison-sasl-login §2.1: the answer to "Username:"."""
        text = self._decode_text(encoded)
        if isinstance(text, SaslError):
            return text
        if not text:
            return self._fail(SaslErrorKind.EMPTY_USERNAME)
        self._login_user = text
        self._step = _Step.LOGIN_PASSWORD
        return Challenge(PASSWORD_CHALLENGE)

    def _login_password(self, encoded: bytes) -> SaslResult:
        """draft-murchison-sasl-login §2.1: the answer to "Password:"."""
        text = self._decode_text(encoded)
        if isinstance(text, SaslError):
            return text
        if not text:
            return self._fail(SaslErrorKind.EMPTY_PASSWORD)
        self._step = _Step.DONE
        return Credentials(self._login_user, text, "LOGIN")

    # ---- encoding -----------------------------------------------------------------------

    def _decode(self, encoded: bytes) -> bytes | SaslError:
        """Strict base64 (RFC 4648 §4, padding required, no whitespace); "=" is empty."""
        encoded = encoded.strip(b" ")
        if encoded == b"=":
            return b""  # RFC 4954 §4 / RFC 5034 §4: "=" is a present but empty response
        # 4/3 expansion: refuse before decoding anything absurdly long.
        if len(encoded) > (MAX_FIELD * 3 + 2) * 4 // 3 + 4:
            return self._fail(SaslErrorKind.TOO_LONG)
        try:
            return binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            return self._fail(SaslErrorKind.BAD_BASE64)

    def _decode_text(self, encoded: bytes) -> str | SaslError:
        raw = self._decode(encoded)
        if isinstance(raw, SaslError):
            return raw
        if len(raw) > MAX_FIELD:
            return self._fail(SaslErrorKind.TOO_LONG)
        if b"\0" in raw:
            return self._fail(SaslErrorKind.MALFORMED)  # no NUL may reach an account lookup
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(SaslErrorKind.NOT_UTF8)

    def _fail(self, kind: SaslErrorKind) -> SaslError:
        self._step = _Step.DONE
        self._login_user = ""
        return SaslError(kind)
