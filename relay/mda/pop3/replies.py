"""What the POP3 server machine sends: the fixed response texts and the multi-line encoding.

RFC 1939 leaves the text after "+OK" / "-ERR" to the server; every -ERR text is here, with
the response codes of RFC 2449 / RFC 3206 where one applies. A multi-line response (RFC 1939
§3) carries a message or its TOP cut (§7) dot-stuffed, as slices of the stored octets.

Imports: stdlib only.
"""

from __future__ import annotations

MAX_REASON = 200  # characters of a glue-supplied reason kept in a response line

GREETING = b"+OK relay POP3 ready\r\n"  # RFC 1939 §4 (no APOP timestamp: APOP unsupported)
SIGNING_OFF = "relay POP3 server signing off"  # RFC 1939 §6
IMPLEMENTATION = "relay"  # RFC 2449 §6.9

# -ERR texts, one place (RFC 1939 leaves the text to the server).
E_UNKNOWN = "unknown command"
E_STATE = "command not valid in this state"  # RFC 1939 §3: commands per state
E_SYNTAX = "syntax error"
E_LINE_TOO_LONG = "line too long"  # RFC 2449 §4
E_GARBAGE = "line too long, closing connection"
E_TOO_MANY_ERRORS = "too many errors, closing connection"
E_PLAINTEXT = "[AUTH] plaintext authentication disabled"  # RFC 3206 §4, RFC 2595 §4
E_NEED_USER = "send USER first"  # RFC 1939 §7: PASS only right after USER
E_APOP = "APOP not supported"
E_BAD_NUMBER = "invalid message number"
E_NO_MESSAGE = "no such message"
E_TLS_ACTIVE = "command not permitted when TLS active"  # RFC 2595 §4
E_TLS_UNAVAILABLE = "STLS not available"
E_UPDATE_FAILED = "some deleted messages not removed"  # RFC 1939 §6


def clean(text: str) -> str:
    """Glue-supplied text made safe for one response line (no CR/LF or controls)."""
    text = "".join(c if " " <= c < "\x7f" or c > "\x9f" else " " for c in text)
    return text[:MAX_REASON]


def top_end(data: bytes, body_lines: int) -> int:
    """RFC 1939 §7 TOP: offset just past the header, the blank line and `body_lines` lines."""
    size = len(data)
    # The header ends at the first empty line (RFC 5322 §2.1); it may be the first line.
    if data.startswith(b"\n"):
        pos = 1
    elif data.startswith(b"\r\n"):
        pos = 2
    else:
        lf_lf = data.find(b"\n\n")
        lf_crlf = data.find(b"\n\r\n")
        ends = [p for p in (lf_lf + 2 if lf_lf >= 0 else -1, lf_crlf + 3 if lf_crlf >= 0 else -1)
                if p >= 0]
        if not ends:
            return size  # no body: the whole message is header
        pos = min(ends)
    if data.count(b"\n", pos) < body_lines:
        return size  # fewer body lines than asked for
    for _ in range(body_lines):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return size
        pos = nl + 1
    return pos


def dot_stuff(data: bytes, end: int, out: list[bytes | memoryview]) -> None:
    """Append data[:end] to `out` as a multi-line body (RFC 1939 §3), then ".\r\n".

    Appends slices (memoryviews) of `data` with the stuffing dots between them, so
    nothing is copied here. A body not ending in a line break gets CRLF before the ".".
    """
    view = memoryview(data)
    if end and data.count(b"\n", 0, end) == data.count(b"\r\n", 0, end):
        # Fast path, every line already ends in CRLF: cut only where a line starts
        # with "." and insert one more.
        if data.startswith(b".", 0, end):
            out.append(b".")
        start = 0
        pos = data.find(b"\n.", 0, end)
        while pos >= 0:
            out.append(view[start:pos + 1])
            out.append(b".")
            start = pos + 1
            pos = data.find(b"\n.", start, end)
        out.append(view[start:end])
        if not data.endswith(b"\r\n", 0, end):
            out.append(b"\r\n")
    else:
        # Bare LF present (Maildir written by a Unix tool): rebuild line by line.
        start = 0
        while start < end:
            nl = data.find(b"\n", start, end)
            stop = end if nl < 0 else nl
            # Drop the CR of a CRLF; a CR not followed by LF is data and stays.
            crlf = nl >= 0 and stop > start and data[stop - 1] == 0x0D
            content_end = stop - 1 if crlf else stop
            if data[start] == 0x2E:  # "."
                out.append(b".")
            out.append(view[start:content_end])
            out.append(b"\r\n")
            start = stop + 1
    out.append(b".\r\n")
