"""scan_headers, pure Python: the readable twin and the specification of headers_c.pyx.

Finds the end of a message's header section (RFC 5322 §2.2, §3.5) and the few facts
intake needs from it: how many Received: fields (RFC 5321 §6.3 loop detection) and
whether Message-ID:, Date: and From: are present. Fields are not parsed further.
Imports: stdlib and relay._fast.spec only. Does no I/O.

Rules (`message` is unstuffed, with CRLF line ends):

* Lines are split on CRLF only; a bare LF or bare CR is part of its line.
* Walk the lines from offset 0:
  - an empty line (CRLF) ends the section; header_end is just past it (§2.1);
  - a line starting with SP or HTAB continues the previous field (§2.2.3 folding);
    as the first line it has nothing to continue and ends the section (header_end 0);
  - a field line is field-name (1+ octets 33-126 except ":", §3.6.8) then optional
    SP/HTAB (obs-optional, §4.5.8) then ":";
  - any other line ends the section; header_end is the start of that line.
* A last line without CRLF counts like any other line: if it is a field or a
  continuation, header_end = len(message); otherwise header_end = its start.
* If every line is a field or a continuation, header_end = len(message) (0 for b"").
* Field names are compared without regard to ASCII case.
"""

from __future__ import annotations

from relay._fast.spec import HDR_DATE, HDR_FROM, HDR_MESSAGE_ID, HeaderSummary

__all__ = ["HDR_DATE", "HDR_FROM", "HDR_MESSAGE_ID", "scan_headers"]

_WSP = (0x20, 0x09)
_COLON = 0x3A
_FLAG_BY_NAME = {b"message-id": HDR_MESSAGE_ID, b"date": HDR_DATE, b"from": HDR_FROM}


def scan_headers(message: bytes) -> HeaderSummary:
    """Scan the header section of `message` by the rules above.

    Args:
        message: the whole (or the start of the) unstuffed message.

    Returns:
        HeaderSummary(header_end, received_count, flags).

    Raises:
        TypeError: `message` is not bytes.
    """
    if not isinstance(message, bytes):
        raise TypeError("scan_headers() argument must be bytes")
    received = 0
    flags = 0
    pos = 0
    while pos < len(message):
        eol = message.find(b"\r\n", pos)
        if eol == pos:
            # §2.1: the empty line separates header section and body.
            return HeaderSummary(pos + 2, received, flags)
        line = message[pos:] if eol < 0 else message[pos:eol]
        if line[0] in _WSP:
            if pos == 0:
                return HeaderSummary(0, received, flags)
        else:
            name = _field_name(line)
            if name is None:
                return HeaderSummary(pos, received, flags)
            name = name.lower()
            if name == b"received":
                received += 1
            flags |= _FLAG_BY_NAME.get(name, 0)
        if eol < 0:
            break
        pos = eol + 2
    return HeaderSummary(len(message), received, flags)


def _field_name(line: bytes) -> bytes | None:
    """The field-name if `line` is a header field line, else None."""
    k = 0
    # §3.6.8 ftext = %d33-57 / %d59-126 (printable ASCII except ":").
    while k < len(line) and 33 <= line[k] <= 126 and line[k] != _COLON:
        k += 1
    if k == 0:
        return None
    m = k
    # §4.5.8 obs-optional: white space before the colon.
    while m < len(line) and line[m] in _WSP:
        m += 1
    if m < len(line) and line[m] == _COLON:
        return line[:k]
    return None
