"""Delivery status notifications: the bounce and delay messages we send back (Postfix's bounce).

Owns the exact bytes of every DSN relay composes from queue `Outcome`s, and the rule that a
bounce is never bounced. Pure functions of plain values: no I/O, no clock (the caller passes
`now`), no `relay.config`; imports only the stdlib and `relay.queue.model`.

Standards:
  RFC 3464  message/delivery-status: per-message and per-recipient fields (§2.2, §2.3),
            sent from the null reverse-path (§2, RFC 5321 §4.5.5)
  RFC 3463  enhanced status codes (class.subject.detail) in the Status field
  RFC 6522  multipart/report; report-type=delivery-status: three parts, in order (§3)
  RFC 6533  "utf-8" address type for SMTPUTF8 recipients, in its 7-bit xtext form (§3)
  RFC 3834  Auto-Submitted: auto-replied on every notification (§5)
  RFC 5321  §6.1 / §4.5.5: notifications go to the reverse-path, and a message with the null
            reverse-path (itself a notification) is never answered with another one
  RFC 5322  header syntax, dates, folding; no line over 998 octets (§2.1.1)

Trust: every string here except `reporting_mta`/`message_id_domain` (our own configuration)
can come from a peer: addresses from the envelope, diagnostics from a remote server's reply,
the header section from the submitted message. Values are flattened to one line (CR, LF and
other controls become spaces) before they are placed in a field, so they can never start a
new header field or MIME part; the boundary is checked against every part's content.

Decisions (documented for callers):
  * Diagnostic-Code always carries the diagnostic: its own type when it starts with "smtp;"
    or an "x-..." type (the queue's "x-relay; connection refused"), else it is wrapped as
    "x-relay; <text>". We use no separate X-Relay-Diagnostic field.
  * Remote-MTA accepts "dns; host" (the Outcome convention) or a bare "host" (typed "dns").
  * message/delivery-status stays 7-bit (RFC 3464 §2.1 / its media-type registration):
    non-ASCII addresses use the RFC 6533 "utf-8;" type with \\x{HHHH} escapes, and
    non-ASCII in other fields is escaped the same way.
  * The human-readable part is UTF-8 (8bit) only when it has to be; the text/rfc822-headers
    part carries a non-ASCII original header section unchanged as 8bit (strictly that is
    message/global-headers, RFC 6533 §3; we keep the RFC 6522 type that every MUA reads).
    When any 8-bit octet is present the top level says Content-Transfer-Encoding: 8bit and
    the caller should send with 8BITMIME (or SMTPUTF8 for a non-ASCII sender).
  * Part 3 is the original header section only (like Postfix's default), line endings made
    CRLF, lines longer than 998 octets folded.
  * Per-message fields follow RFC 3464's grammar order: Reporting-MTA, Arrival-Date, then
    the extension fields X-Relay-Queue-ID and X-Relay-Sender.
"""

from __future__ import annotations

import hashlib
import re
import textwrap
from datetime import datetime, timezone
from email.utils import format_datetime

from relay.queue.model import Outcome

__all__ = ["build_dsn", "is_bounce", "KINDS", "ACTIONS"]

#: Notification kinds and their Subject lines (Postfix's wording).
KINDS: dict[str, str] = {
    "failure": "Undelivered Mail Returned to Sender",
    "delay": "Delayed Mail (still being retried)",
}

#: RFC 3464 §2.3.3 action-value.
ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})

# Status class to use when an Outcome's status is not a valid RFC 3463 code.
_DEFAULT_STATUS = {"failed": "5.0.0", "delayed": "4.0.0"}

_MAX_LINE = 998  # RFC 5322 §2.1.1, octets excluding CRLF
_FOLD_AT = 78  # RFC 5322 §2.1.1 SHOULD
_TEXT_WIDTH = 72

_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")  # RFC 3463 §2
_TYPED = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9-]*)\s*;\s*(.*)\Z", re.DOTALL)
_CONTROLS = re.compile(r"[\x00-\x20\x7f]+")
_QCHAR = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")  # RFC 6533 §3
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def is_bounce(sender: str) -> bool:
    """True if a message with this envelope sender is itself a notification.

    The null reverse-path <> (stored as "") marks bounces; RFC 5321 §6.1 and §4.5.5 (and
    RFC 3464 §2) forbid answering one with another, which is what stops bounce loops.
    "<>" is accepted too, in case a caller passes the path with its brackets.
    """
    return sender.strip() in ("", "<>")


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    queue_id: str,
    arrival: float,
    now: float,
    outcomes: list[Outcome],
    original: bytes,
    kind: str = "failure",
    message_id_domain: str | None = None,
    retry_until: float | None = None,
) -> bytes:
    """Compose an RFC 3464 DSN, a complete RFC 5322 message with CRLF line endings.

    The result is to be sent with MAIL FROM:<> to `original_sender`.

    Args:
        reporting_mta: our host name (Reporting-MTA, From, Message-ID, text).
        original_sender: the bounced message's envelope sender; must not be null.
        queue_id: the bounced message's queue id (X-Relay-Queue-ID, Message-ID).
        arrival: when the message was queued (Arrival-Date), seconds since the epoch.
        now: the time of this notification (Date), seconds since the epoch.
        outcomes: one per reported recipient, at least one; each becomes a
            per-recipient group and a line of the human-readable text.
        original: the bounced message as stored; only its header section is returned.
        kind: "failure" (Undelivered Mail) or "delay" (still being retried).
        message_id_domain: right-hand side of the Message-ID (default reporting_mta).
        retry_until: for "delay", when the queue gives up (text and Will-Retry-Until).

    Returns:
        The notification's wire bytes.

    Raises:
        ValueError: null sender (never bounce a bounce), unknown kind or action, no
            outcomes, or a reporting_mta / message_id_domain that is not a host name.
    """
    if is_bounce(original_sender):
        raise ValueError("never bounce a bounce: the original sender is the null path")
    if kind not in KINDS:
        raise ValueError(f"unknown DSN kind {kind!r}")
    if not outcomes:
        raise ValueError("a DSN needs at least one recipient outcome (RFC 3464 §2.1)")
    for outcome in outcomes:
        if outcome.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {outcome.action!r} (RFC 3464 §2.3.3)")
    mid_domain = reporting_mta if message_id_domain is None else message_id_domain
    for name, value in (("reporting_mta", reporting_mta), ("message_id_domain", mid_domain)):
        if not _DOMAIN.match(value) or ".." in value:
            raise ValueError(f"{name} is not a host name: {value!r}")

    sender = _one_line(original_sender)
    qid = _seven_bit(_one_line(queue_id))
    seed = f"{queue_id}\x00{now!r}\x00{kind}"
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()

    text = _human_text(reporting_mta, kind, arrival, now, retry_until, outcomes)
    status = _delivery_status(reporting_mta, qid, sender, arrival, retry_until, outcomes)
    headers = _header_section(original)
    text_bytes = _encode(text)
    text_8bit = not text_bytes.isascii()
    headers_8bit = not headers.isascii()

    # RFC 2046 §5.1.1: the boundary must not occur in any encapsulated part.
    counter = 0
    while True:
        boundary = f"=_relay_{digest[:24]}_{counter}"
        marker = b"--" + boundary.encode("ascii")
        if not any(marker in part for part in (text_bytes, status, headers)):
            break
        counter += 1

    top = [
        _field("From", f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"),
        _field("To", f"<{sender}>"),
        _field("Subject", KINDS[kind]),
        _field("Date", _date(now)),
        _field("Message-ID", f"<{int(now * 1_000_000):x}.{kind}.{digest[:16]}@{mid_domain}>"),
        _field("Auto-Submitted", "auto-replied"),  # RFC 3834 §5
        _field("MIME-Version", "1.0"),
        # RFC 6522 §3: multipart/report, report-type parameter naming the second part.
        _field(
            "Content-Type",
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
    ]
    if text_8bit or headers_8bit:
        top.append(_field("Content-Transfer-Encoding", "8bit"))

    b = boundary.encode("ascii")
    out = [
        *top,
        b"\r\n",
        b"This is a MIME-encapsulated message.\r\n",
        b"\r\n--" + b + b"\r\n",
        _field("Content-Description", "Notification"),
        _field("Content-Type", f"text/plain; charset={'utf-8' if text_8bit else 'us-ascii'}"),
        _field("Content-Transfer-Encoding", "8bit" if text_8bit else "7bit"),
        b"\r\n",
        text_bytes,
        b"\r\n--" + b + b"\r\n",
        _field("Content-Description", "Delivery report"),
        _field("Content-Type", "message/delivery-status"),
        b"\r\n",
        status,
        b"\r\n--" + b + b"\r\n",
        _field("Content-Description", "Undelivered Message Headers"),
        _field("Content-Type", "text/rfc822-headers"),
        _field("Content-Transfer-Encoding", "8bit" if headers_8bit else "7bit"),
        b"\r\n",
        headers,
        b"\r\n--" + b + b"--\r\n",
    ]
    return b"".join(out)


# -- human-readable part (RFC 6522 §3, first part) ---------------------------------------


def _human_text(
    mta: str,
    kind: str,
    arrival: float,
    now: float,
    retry_until: float | None,
    outcomes: list[Outcome],
) -> str:
    """Postfix-style explanation, wrapped; ends without a final line break."""
    paras = [f"This is the mail system at host {mta}."]
    if kind == "failure":
        paras += [
            "I'm sorry to have to inform you that your message could not be delivered"
            " to one or more recipients. The headers of your message are attached below.",
            "For further assistance, please send mail to postmaster.",
            "If you do so, please include this problem report.",
        ]
    else:
        hours = max(0.0, now - arrival) / 3600
        until = (
            f"The mail system will keep trying until {_date(retry_until)}."
            if retry_until is not None
            else "The mail system will keep trying to deliver it."
        )
        paras += [
            "####################################################################\n"
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
            "####################################################################",
            f"Your message could not be delivered for {hours:.1f} hours. {until}",
            "For further assistance, please send mail to postmaster.",
        ]
    paras.append("                   The mail system")
    lines: list[str] = []
    for para in paras:
        if para.startswith("#") or para.startswith(" "):
            lines += para.split("\n")
        else:
            lines += textwrap.wrap(para, _TEXT_WIDTH)
        lines.append("")
    for outcome in outcomes:
        entry = f"<{_one_line(outcome.recipient)}>: {_explain(outcome)}"
        # Hanging indent like Postfix; long words are broken so every line stays short.
        lines += textwrap.wrap(entry, _TEXT_WIDTH, subsequent_indent="    ")
        lines.append("")
    return "\r\n".join(lines[:-1]) + "\r\n"


def _explain(outcome: Outcome) -> str:
    """One recipient's diagnostic in words: 'host mx said: 550 5.1.1 ...' for SMTP replies."""
    dtype, text = _split_typed(_one_line(outcome.diagnostic))
    host = _split_typed(_one_line(outcome.remote_mta))[1]
    if not text:
        text = {"failed": "delivery failed", "delayed": "delivery temporarily suspended"}.get(
            outcome.action, outcome.action
        )
    if dtype == "smtp" and host:
        return f"host {host} said: {text}"
    return text


# -- machine-readable part (RFC 3464 §2.2, §2.3) -----------------------------------------


def _delivery_status(
    mta: str,
    qid: str,
    sender: str,
    arrival: float,
    retry_until: float | None,
    outcomes: list[Outcome],
) -> bytes:
    """message/delivery-status body: per-message block, then one block per recipient.

    Blocks are separated by one empty line; there is no trailing empty line (the CRLF
    before the closing delimiter belongs to the delimiter, RFC 2046 §5.1.1).
    """
    blocks = [
        b"".join(
            [
                _field("Reporting-MTA", f"dns; {mta}"),  # §2.2.2
                _field("Arrival-Date", _date(arrival)),  # §2.2.5
                _field("X-Relay-Queue-ID", qid or "unknown"),  # extension, like Postfix's
                _field("X-Relay-Sender", _address_field(sender)),
            ]
        )
    ]
    for outcome in outcomes:
        fields = [
            _field("Final-Recipient", _address_field(_one_line(outcome.recipient))),  # §2.3.2
            _field("Action", outcome.action),  # §2.3.3
            _field("Status", _status(outcome)),  # §2.3.4
        ]
        remote = _one_line(outcome.remote_mta)
        if remote:  # §2.3.5
            mtype, host = _split_typed(remote)
            if mtype is None:
                mtype, host = "dns", remote
            fields.append(_field("Remote-MTA", f"{mtype}; {_seven_bit(host)}"))
        diagnostic = _one_line(outcome.diagnostic)
        if diagnostic:  # §2.3.6
            dtype, text = _split_typed(diagnostic)
            if dtype is None or not (dtype == "smtp" or dtype.startswith("x-")):
                dtype, text = "x-relay", diagnostic
            fields.append(_field("Diagnostic-Code", f"{dtype}; {_seven_bit(text)}"))
        if outcome.action == "delayed" and retry_until is not None:  # §2.3.9
            fields.append(_field("Will-Retry-Until", _date(retry_until)))
        blocks.append(b"".join(fields))
    return b"\r\n".join(blocks)


def _status(outcome: Outcome) -> str:
    """RFC 3463 code from the outcome; a malformed one falls back to the action's class."""
    status = outcome.status.strip()
    if _STATUS.match(status):
        return status
    return _DEFAULT_STATUS.get(outcome.action, "2.0.0")


def _address_field(address: str) -> str:
    """'rfc822; addr', or RFC 6533 §3 'utf-8; addr' in its 7-bit xtext form if non-ASCII."""
    if address.isascii():
        return f"rfc822; {address}"
    return "utf-8; " + "".join(
        ch if _QCHAR.match(ch) else f"\\x{{{ord(ch):02X}}}" for ch in address
    )


def _split_typed(value: str) -> tuple[str | None, str]:
    """'smtp; 550 ...' -> ('smtp', '550 ...'); an untyped value -> (None, value)."""
    m = _TYPED.match(value)
    if m is None:
        return None, value
    return m.group(1).lower(), m.group(2)


# -- original header section (RFC 6522 §3, third part) -----------------------------------


def _header_section(original: bytes) -> bytes:
    """The original's header section, CRLF line endings, each line at most 998 octets."""
    if original.startswith((b"\r\n", b"\n")):
        return b""  # empty header section
    m = _HEADER_END.search(original)
    section = original if m is None else original[: m.start()]
    lines = _LINE_BREAK.split(section)
    if lines and lines[-1] == b"":
        lines.pop()
    out: list[bytes] = []
    for line in lines:
        out += _limit_line(line)
    return b"".join(line + b"\r\n" for line in out)


def _limit_line(line: bytes) -> list[bytes]:
    """Split an over-long header line: fold at whitespace where possible, else hard.

    A hard split inserts CRLF SP, which adds one space on unfolding: acceptable for a
    diagnostic copy of the headers, and the only way to keep RFC 5322 §2.1.1's limit.
    """
    out: list[bytes] = []
    while len(line) > _MAX_LINE:
        cut = max(line.rfind(b" ", 1, _MAX_LINE + 1), line.rfind(b"\t", 1, _MAX_LINE + 1))
        if cut > 0 and line[:cut].strip():
            out.append(line[:cut])
            line = line[cut:]  # continuation starts with the whitespace (a fold)
        else:
            out.append(line[: _MAX_LINE - 1])
            line = b" " + line[_MAX_LINE - 1 :]
    out.append(line)
    return out


# -- field formatting ----------------------------------------------------------------------


def _one_line(value: str) -> str:
    """Flatten untrusted text: CR, LF, tabs and other controls become single spaces.

    This is what keeps a diagnostic such as "550 x\\r\\nBcc: victim" from becoming a field.
    """
    return _CONTROLS.sub(" ", value).strip()


def _seven_bit(value: str) -> str:
    """Escape non-ASCII as RFC 6533 \\x{HHHH} so message/delivery-status stays 7-bit."""
    if value.isascii():
        return value
    return "".join(ch if ch.isascii() else f"\\x{{{ord(ch):02X}}}" for ch in value)


def _field(name: str, value: str) -> bytes:
    """'Name: value' CRLF, folded at spaces near 78 octets and never over 998 (RFC 5322 §2.2.3).

    `value` has already been flattened by _one_line (no controls, single spaces), so no
    continuation line can be whitespace only. A word too long for one line is broken with
    CRLF SP, which unfolds to an extra space.
    """
    words = _one_line(value).split(" ")
    lines: list[bytes] = []
    current = f"{name}:".encode()
    for word in words:
        wb = _encode(word)
        if not wb:
            continue
        if len(current) + 1 + len(wb) <= _FOLD_AT or current.strip() == f"{name}:".encode():
            current += b" " + wb
        else:
            lines.append(current)
            current = b" " + wb
        while len(current) > _MAX_LINE:
            cut = _MAX_LINE
            while 0x80 <= current[cut] < 0xC0:  # never split a UTF-8 sequence
                cut -= 1
            lines.append(current[:cut])
            current = b" " + current[cut:]
    lines.append(current)
    return b"".join(line + b"\r\n" for line in lines)


def _encode(value: str) -> bytes:
    """UTF-8; a lone surrogate (not valid text) becomes "?" rather than an exception."""
    return value.encode("utf-8", "replace")


def _date(when: float) -> str:
    """RFC 5322 §3.3 date-time in UTC ("+0000": the zone is known)."""
    return format_datetime(datetime.fromtimestamp(when, timezone.utc))
