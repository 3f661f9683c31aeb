"""Reading the outbound client's replies (RFC 5321 §4.2): the bounds on a reply, what
each command may be answered with, and the pure functions that turn reply lines into a
sanitised Reply, EHLO keywords (§4.1.1.1), an RFC 3463 status and an RFC 3464 §2.3.6
diagnostic. The mirror of relay.smtp.replies, read instead of written.

Trust: every reply octet is hostile; text is sanitised before it reaches a diagnostic,
which ends up in a DSN and a log line.
Imports: stdlib, relay.smtp.replies.
"""

from __future__ import annotations

import enum
import re

from relay.smtp.replies import Reply

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including CRLF.
MAX_REPLY_LINE = 512
# No RFC bound on lines per reply; an EHLO reply has a dozen. More is a broken or hostile peer.
MAX_REPLY_LINES = 100

# RFC 3463 §3.1 (RFC 2034 §4): "class.subject.detail" at the start of the reply text.
_ENHANCED = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?= |$)")
# C0 controls and DEL: "?" in reply text; refused in a remote MTA name.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 5321 §4.1.1.1 ehlo-keyword.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")

# RFC 3464 §2.3.3: the Action of an Outcome, by reply class.
ACTIONS = {2: "delivered", 4: "delayed", 5: "failed"}


class Expect(enum.Enum):
    """The command whose reply is owed; the value is the diagnostic's "while ..." phrase."""

    GREETING = "receiving the initial server greeting"
    EHLO = "performing the EHLO handshake"
    HELO = "performing the HELO handshake"
    STARTTLS = "sending STARTTLS"
    MAIL = "sending MAIL FROM"
    RCPT = "sending RCPT TO"
    DATA = "sending DATA command"
    BODY = "sending message body"  # body and "." sent; the final reply is owed
    DOT = "ending an empty DATA phase"  # RFC 2920 §3.1 lone "."
    BDAT = "sending message body (BDAT)"  # RFC 3030: the whole message in one chunk
    RSET = "sending RSET"
    QUIT = "sending QUIT"


# Reply classes each command may get; anything else is a protocol error.
REPLY_CLASSES = {kind: frozenset((2, 4, 5)) for kind in Expect}
REPLY_CLASSES[Expect.DATA] = frozenset((3, 4, 5))
REPLY_CLASSES[Expect.QUIT] = frozenset((2, 3, 4, 5))


def parse_reply(code: int, raw: list[bytes]) -> Reply:
    """Reply(code, enhanced status or "", text lines joined by "\\n"), text sanitised."""
    texts = [CONTROL.sub("?", line.decode("utf-8", "replace")) for line in raw]
    status = ""
    m = _ENHANCED.match(texts[0])
    if m and int(m.group(1)) == code // 100:  # RFC 3463 §2: class matches the reply code
        status = m.group(0)
        # RFC 2034 §4: every line of a multi-line reply repeats the code; keep it once.
        texts = [t[len(status) + 1:] if t == status or t.startswith(status + " ") else t
                 for t in texts]
    return Reply(code, status, "\n".join(texts))


def parse_extensions(reply: Reply) -> dict[str, str]:
    """RFC 5321 §4.1.1.1: lines after the first are "keyword [params]"."""
    extensions: dict[str, str] = {}
    for line in reply.text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if _KEYWORD.fullmatch(keyword):
            extensions.setdefault(keyword.upper(), params.strip())
    return extensions


def reply_status(reply: Reply) -> str:
    return reply.status or f"{reply.code // 100}.0.0"


def reply_diagnostic(reply: Reply) -> str:
    """RFC 3464 §2.3.6 "smtp; 550 5.1.1 text", a multi-line reply joined with spaces."""
    parts = [str(reply.code)]
    if reply.status:
        parts.append(reply.status)
    text = " ".join(t.strip() for t in reply.text.split("\n") if t.strip())
    if text:
        parts.append(text)
    return "smtp; " + " ".join(parts)
