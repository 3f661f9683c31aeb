"""Every SMTP reply the server sends, as data.

A Reply carries the code, the enhanced status code (RFC 3463, announced as
ENHANCEDSTATUSCODES per RFC 2034 and sent on every reply but the greeting and EHLO
lines, as RFC 2034 §3 allows) and the text. Each constant cites the rule it follows.
`FAILURE_REPLIES` maps every `_fast.FailureKind` to its reply, `SASL_FAILURE_REPLIES`
every `auth.sasl.SaslErrorKind` (RFC 4954 §4, §6).

Imports: stdlib, relay._fast.spec, relay.auth.sasl.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay._fast.spec import FailureKind
from relay.auth.sasl import SaslErrorKind


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    status: str  # enhanced status code "x.y.z", or "" (greeting, EHLO)
    text: str

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.status, text)

    def encode(self) -> bytes:
        """The reply as wire octets; multi-line when text has newlines (RFC 5321 §4.2.1)."""
        lines = self.text.split("\n")
        prefix = f"{self.status} " if self.status else ""
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8")

    @property
    def is_positive(self) -> bool:
        return self.code < 400


# 2xx
OK = Reply(250, "2.0.0", "OK")  # RFC 5321 §4.2.2
SENDER_OK = Reply(250, "2.1.0", "Sender OK")  # RFC 3463 §3.2 X.1.0 other address status
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")  # RFC 3463 §3.2 X.1.5 destination valid
RESET_OK = Reply(250, "2.0.0", "Reset OK")  # RFC 5321 §4.1.1.5
NOOP_OK = Reply(250, "2.0.0", "OK")  # RFC 5321 §4.1.1.9
CLOSING = Reply(221, "2.0.0", "Bye")  # RFC 5321 §4.1.1.10
VRFY_CANNOT = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")  # RFC 5321 §3.5.3
HELP = Reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH; see RFC 5321")  # RFC 5321 §4.1.1.8
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")  # RFC 3207 §4
CHUNK_OK = Reply(250, "2.0.0", "Chunk accepted")  # RFC 3030 §2
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")  # RFC 5321 §4.1.1.4
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")  # RFC 4954 §6

# 4xx
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")  # RFC 3463 X.3.2
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")  # RFC 5321 §3.8, RFC 3463 X.7.0
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")  # RFC 5321 §4.5.3.2, RFC 3463 X.4.2
LOCAL_ERROR = Reply(421, "4.3.0", "Local error, closing connection")  # RFC 3463 X.3.0
QUEUE_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")  # RFC 5321 §4.2.2, RFC 3463 X.3.1
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")  # RFC 5321 §4.5.3.1.10, RFC 3463 X.5.3
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")  # RFC 3207 §4
LOCAL_PROCESSING_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")  # RFC 5321 §4.2.3
TEMP_RECIPIENT_FAILURE = Reply(451, "4.3.0", "Temporary recipient lookup failure")  # RFC 3463 X.3.0
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure, try again later")  # RFC 4954 §6 (the throttle blocks this client)

# 5xx syntax and sequence
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")  # RFC 5321 §4.5.3.1.4, RFC 3463 X.5.2
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command not recognized")  # RFC 5321 §4.2.4
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")  # RFC 5321 §4.2.2, RFC 3463 X.5.4
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")  # RFC 3463 X.1.7
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")  # RFC 3463 X.1.3
BAD_HELO = Reply(501, "5.5.4", "Syntax: EHLO hostname")  # RFC 5321 §4.1.1.1
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")  # RFC 5321 §4.2.4
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")  # RFC 5321 §4.1.4
NEED_HELO = Reply(503, "5.5.1", "Send EHLO/HELO first")  # RFC 5321 §4.1.4
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")  # RFC 5321 §4.1.4
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")  # RFC 5321 §4.1.4
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")  # RFC 5321 §4.1.4
MIXED_DATA_BDAT = Reply(503, "5.5.1", "DATA and BDAT cannot be mixed")  # RFC 3030 §3
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")  # RFC 5321 §4.1.1.11
ALREADY_TLS = Reply(503, "5.5.1", "TLS already active")  # RFC 3207 §4
TLS_NO_PARAMETERS = Reply(501, "5.5.4", "STARTTLS takes no parameters")  # RFC 3207 §4
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")  # RFC 4954 §4
AUTH_NEEDS_EHLO = Reply(503, "5.5.1", "Send EHLO first")  # RFC 4954 §3: AUTH is an EHLO extension
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")  # RFC 4954 §4: a second AUTH gets 503
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not permitted during a mail transaction")  # RFC 4954 §4
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")  # RFC 4954 §4, §6
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")  # RFC 4954 §4: client sent "*"
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Invalid base64 data")  # RFC 4954 §4
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")  # RFC 4954 §6

# 5xx policy and content
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")  # RFC 5321 §3.6.2, RFC 3463 X.7.1
USER_UNKNOWN = Reply(550, "5.1.1", "Mailbox unavailable: no such user")  # RFC 3463 X.1.1
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")  # RFC 1870 §6, RFC 3463 X.3.4
BARE_LINE_ENDING = Reply(550, "5.6.0", "Message contains bare CR or LF; use CRLF line endings")  # RFC 5321 §2.3.8, §4.1.1.4
NUL_IN_DATA = Reply(550, "5.6.0", "Message contains NUL octets")  # RFC 5321 §4.5.2
MAIL_LOOP = Reply(554, "5.4.6", "Too many Received headers: mail loop")  # RFC 5321 §6.3, RFC 3463 X.4.6
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")  # RFC 6531 §3.5
BODY_8BIT_DENIED = Reply(554, "5.6.1", "BODY=BINARYMIME not supported")  # RFC 3030 §3
NEED_BDAT_SIZE = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")  # RFC 3030 §2
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")  # RFC 4954 §6: submission needs AUTH first
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")  # RFC 4954 §6, Postfix smtpd_tls_auth_only
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")  # RFC 4954 §6
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")  # Postfix reject_sender_login_mismatch, RFC 3463 X.7.1
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")  # Postfix smtpd_hard_error_limit

FAILURE_REPLIES: dict[FailureKind, Reply] = {
    FailureKind.EMPTY: UNKNOWN_COMMAND,
    FailureKind.BAD_VERB: UNKNOWN_COMMAND,
    FailureKind.BAD_PATH: SYNTAX_ERROR,
    FailureKind.BAD_PARAMETER: SYNTAX_ERROR,
    FailureKind.NUL: SYNTAX_ERROR,
}

# How each failed SASL exchange is answered (RFC 4954 §4, §6).
SASL_FAILURE_REPLIES: dict[SaslErrorKind, Reply] = {
    SaslErrorKind.CANCELLED: AUTH_CANCELLED,
    SaslErrorKind.UNSUPPORTED_MECHANISM: AUTH_UNKNOWN_MECHANISM,
    SaslErrorKind.BAD_BASE64: AUTH_BAD_BASE64,
    SaslErrorKind.TOO_LONG: AUTH_LINE_TOO_LONG,
    SaslErrorKind.NOT_UTF8: AUTH_FAILED,
    SaslErrorKind.MALFORMED: AUTH_FAILED,
    SaslErrorKind.EMPTY_USERNAME: AUTH_FAILED,
    SaslErrorKind.EMPTY_PASSWORD: AUTH_FAILED,
    SaslErrorKind.AUTHZID_DENIED: AUTH_FAILED,
}


def greeting(hostname: str) -> Reply:
    """RFC 5321 §4.2: 220 greeting naming this host."""
    return Reply(220, "", f"{hostname} ESMTP relay")


def ehlo(hostname: str, client: str, extensions: list[str]) -> Reply:
    """RFC 5321 §4.1.1.1: 250 with one extension keyword per line."""
    return Reply(250, "", "\n".join([f"{hostname} greets {client}", *extensions]))


def helo(hostname: str) -> Reply:
    return Reply(250, "", hostname)


def challenge(encoded: bytes) -> Reply:
    """RFC 4954 §4: "334 " and a base64 server challenge (empty for PLAIN without an initial
    response); an intermediate reply, so no enhanced status code."""
    return Reply(334, "", encoded.decode("ascii"))


def queued(queue_id: str) -> Reply:
    """RFC 5321 §4.1.1.4 end of data: the message is ours now."""
    return Reply(250, "2.0.0", f"OK queued as {queue_id}")
