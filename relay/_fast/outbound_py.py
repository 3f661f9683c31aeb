"""crlf_lines and dot_stuff, pure Python: the readable twin and the specification of
outbound_c.pyx. The message octets an SMTP client writes (delivery/client.py).

Rules (RFC 5321 §2.3.8: CR and LF only ever travel together as CRLF; §4.5.2
transparency):

* crlf_lines(body): every CRLF stays; every other CR or LF becomes CRLF ("\\r\\r\\n"
  is a bare CR and a CRLF: two line ends); a non-empty body that does not end in CRLF
  gets one. No receiver can then see a different end of data than we meant (the "SMTP
  smuggling" class).
* dot_stuff(body): crlf_lines(body), every line that begins with "." gets one more
  in front, then CRLF "." CRLF ends it: the octets after a 354.
Imports: stdlib only. Does no I/O.
"""

from __future__ import annotations

import re

__all__ = ["crlf_lines", "dot_stuff"]

_LINE_END = re.compile(rb"\r\n|\r|\n")


def crlf_lines(body: bytes) -> bytes:
    """`body` with CRLF line ends only, ending in CRLF unless empty (rules above)."""
    if not (body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")):
        body = _LINE_END.sub(b"\r\n", body)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body


def dot_stuff(body: bytes) -> bytes:
    """The DATA octets for `body`: crlf_lines, dot-stuffed, ending CRLF "." CRLF."""
    body = crlf_lines(body)
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"
