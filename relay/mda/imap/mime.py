"""The MIME structure of a stored message: header fields, RFC 2047 encoded words, content
types and the tree of entities, as byte offsets into the raw octets (RFC 2045, RFC 2046,
RFC 5322 §2.2).

One pass over the bytes records, for every part, its header start, body start and end, so
callers (mda/imap/message.py) answer BODY[...] with exact slices. Malformed MIME never
raises: like Dovecot, a missing boundary makes a multipart a single empty text/plain part,
an unknown Content-Type falls back to RFC 2045 §5.2's text/plain, a header without its
blank line is all header, a part nested deeper than MAX_DEPTH is opaque.

Imports: stdlib only.
"""

from __future__ import annotations

import binascii
import codecs
import re

# Parts nested deeper than this are treated as opaque leaves (bounds recursion on hostile mail).
MAX_DEPTH = 48

_BLANK_LINE = re.compile(rb"\n\r?\n")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 2045 §5.1 token
_TOKEN_TYPE = re.compile(rf"\s*({_TOKEN})\s*/\s*({_TOKEN})\s*")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_ENCODED_GAP = re.compile(r"[ \t\r\n]*")
_B64_WORD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_IDENTITY_ENCODINGS = ("", "7bit", "8bit", "binary")


# ---- header fields --------------------------------------------------------------------------


class HeaderField:
    """One header field: `name` as written (None for a line without a colon), and offsets of
    the field's first octet, its value (after the colon) and one past its last line end."""

    __slots__ = ("name", "start", "value_start", "end")

    def __init__(self, name: str | None, start: int, value_start: int, end: int) -> None:
        self.name = name
        self.start = start
        self.value_start = value_start
        self.end = end


def split_fields(raw: bytes, start: int, end: int) -> list[HeaderField]:
    """Split the header text raw[start:end] into fields (RFC 5322 §2.2: a line starting with
    WSP continues the previous field)."""
    out: list[HeaderField] = []
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if raw[pos] in (0x20, 0x09) and out:
            out[-1].end = line_end
        else:
            colon = raw.find(b":", pos, line_end)
            if colon < 0:
                out.append(HeaderField(None, pos, line_end, line_end))
            else:
                name = raw[pos:colon].rstrip(b" \t").decode("latin-1")
                out.append(HeaderField(name, pos, colon + 1, line_end))
        pos = line_end
    return out


def unfold(value: bytes) -> bytes:
    """RFC 5322 §2.2.3 unfolding (drop the line breaks), outer whitespace trimmed."""
    return value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")


def header_str(value: bytes) -> str:
    """Header octets as text: UTF-8 (RFC 6532) when valid, else latin-1 (never fails)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; whitespace between adjacent encoded words is dropped
    (§6.2), and adjacent words in one charset are joined before decoding, so a multi-octet
    character split across words survives. Undecodable words are left as written."""
    out: list[str] = []
    run: list[bytes] = []
    run_charset = ""
    pos = 0

    def flush() -> None:
        if run:
            out.append(decode_charset(b"".join(run), run_charset))
            run.clear()

    for m in _ENCODED_WORD.finditer(text):
        gap = text[pos : m.start()]
        charset = m.group(1).split("*", 1)[0]  # RFC 2231 §5 language suffix
        try:
            octets = _decode_word(m.group(2), m.group(3))
        except (binascii.Error, ValueError):
            flush()
            out.append(text[pos : m.end()])
            pos = m.end()
            continue
        if not (run and _ENCODED_GAP.fullmatch(gap)):
            flush()
            out.append(gap)
        elif charset.lower() != run_charset.lower():
            flush()
        run_charset = charset
        run.append(octets)
        pos = m.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


def _decode_word(encoding: str, payload: str) -> bytes:
    if encoding in "Bb":
        if not _B64_WORD.fullmatch(payload):
            raise ValueError("bad base64 in encoded word")
        data = payload.encode("ascii")
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    # RFC 2047 §4.2: "_" is a space, =XX an octet.
    return binascii.a2b_qp(payload.replace("_", " ").encode("latin-1", "replace"))


def decode_charset(data: bytes, charset: str) -> str:
    """Text in `charset`; unknown or non-text codecs fall back to UTF-8 (with replacement)."""
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        info = None
    if info is not None and getattr(info, "_is_text_encoding", True):
        try:
            return data.decode(info.name, "replace")
        except (UnicodeError, ValueError, TypeError):
            pass  # codecs such as idna and punycode refuse the "replace" handler
    return data.decode("utf-8", "replace")


# ---- structured header values ---------------------------------------------------------------


def strip_comments(text: str) -> str:
    """Remove RFC 5322 §3.2.2 comments (nested, outside quoted strings)."""
    out: list[str] = []
    depth, quoted, escaped = 0, False, False
    for ch in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
        elif ch == "\\" and (quoted or depth):
            escaped = True
            if depth == 0:
                out.append(ch)
        elif quoted:
            quoted = ch != '"'
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            quoted = ch == '"'
            out.append(ch)
    return "".join(out)


def split_unquoted(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside quoted strings."""
    parts: list[str] = []
    cur: list[str] = []
    quoted, escaped = False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if not value.startswith('"'):
        return value
    out: list[str] = []
    escaped = False
    for ch in value[1:]:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            break
        else:
            out.append(ch)
    return "".join(out)


def parse_params(pieces: list[str]) -> list[tuple[str, str]]:
    """RFC 2045 §5.1 parameters (attribute "=" value), names and values as written; RFC 2231
    continuations are passed through for the client, as Dovecot does."""
    out: list[tuple[str, str]] = []
    for piece in pieces:
        name, eq, value = piece.partition("=")
        name = name.strip()
        if eq and name and not any(c in name for c in ' \t"'):
            out.append((name, _unquote(value)))
    return out


class ContentType:
    __slots__ = ("maintype", "subtype", "params", "defaulted")

    def __init__(self, maintype: str, subtype: str, params: list[tuple[str, str]],
                 defaulted: bool = False) -> None:
        self.maintype = maintype  # as written
        self.subtype = subtype
        self.params = params
        self.defaulted = defaulted

    def is_(self, maintype: str, subtype: str | None = None) -> bool:
        return self.maintype.lower() == maintype and (
            subtype is None or self.subtype.lower() == subtype)

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None


# RFC 2045 §5.2 default, spelt as RFC 3501's examples spell it.
def text_plain() -> ContentType:
    return ContentType("TEXT", "PLAIN", [("CHARSET", "US-ASCII")], defaulted=True)


def _message_rfc822() -> ContentType:
    # RFC 2046 §5.1.5: the default inside multipart/digest.
    return ContentType("MESSAGE", "RFC822", [], defaulted=True)


def _parse_content_type(value: str) -> ContentType | None:
    pieces = split_unquoted(strip_comments(value), ";")
    m = _TOKEN_TYPE.fullmatch(pieces[0])
    if m is None:
        return None
    return ContentType(m.group(1), m.group(2), parse_params(pieces[1:]))


# ---- the MIME tree --------------------------------------------------------------------------


class MimePart:
    """One entity (RFC 2045 §2.4): a message or a body part, with offsets into the raw octets.

    raw[start:body_start] is the header including its blank line, raw[body_start:end] the
    body. `children` are the parts of a multipart; `message` the encapsulated message of a
    message/rfc822 part.
    """

    __slots__ = ("start", "body_start", "end", "fields", "ctype", "children", "message")

    def __init__(self, start: int, body_start: int, end: int, fields: list[HeaderField],
                 ctype: ContentType) -> None:
        self.start = start
        self.body_start = body_start
        self.end = end
        self.fields = fields
        self.ctype = ctype
        self.children: list[MimePart] = []
        self.message: MimePart | None = None


def split_header(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the header fields, start of the body) of the entity at raw[start:end]."""
    if raw.startswith(b"\r\n", start, end):
        return start, start + 2
    if raw.startswith(b"\n", start, end):
        return start, start + 1
    m = _BLANK_LINE.search(raw, start, end)
    if m is None:
        return end, end  # no blank line: all header (Dovecot does the same)
    return m.start() + 1, m.end()


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Ranges of the body parts of the multipart body raw[start:end] (RFC 2046 §5.1.1).

    A delimiter line is "--" boundary, then "--" for the close delimiter (anything after it is
    ignored), else only transport padding (whitespace), so boundary "b1" does not match a line
    "--b12". The line break before it belongs to the delimiter, not to the part. A missing
    close delimiter ends the last part at the end of the body.
    """
    delim = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while True:
        i = raw.find(delim, pos, end)
        if i < 0:
            break
        pos = i + 1
        if i != start and raw[i - 1] != 0x0A:
            continue  # not at the start of a line
        nl = raw.find(b"\n", i, end)
        line_end = end if nl < 0 else nl + 1
        after = i + len(delim)
        closing = raw.startswith(b"--", after, end)
        if not closing and raw[after:line_end].strip(b" \t\r\n"):
            continue  # "--b12" is not a delimiter of boundary "b1"
        if part_start is not None:
            part_end = i
            if part_end > part_start and raw[part_end - 1] == 0x0A:
                part_end -= 1
                if part_end > part_start and raw[part_end - 1] == 0x0D:
                    part_end -= 1
            ranges.append((part_start, part_end))
        if closing:
            return ranges  # the rest is epilogue
        part_start = pos = line_end
    if part_start is not None:
        ranges.append((part_start, end))
    return ranges


def first_value(raw: bytes, fields: list[HeaderField], name: str) -> bytes | None:
    """Unfolded value of the first field called `name` (lower case), or None."""
    for f in fields:
        if f.name is not None and f.name.lower() == name:
            return unfold(raw[f.value_start : f.end])
    return None


def parse_entity(raw: bytes, start: int, end: int, default: ContentType,
                  depth: int) -> MimePart:
    header_end, body_start = split_header(raw, start, end)
    fields = split_fields(raw, start, header_end)
    value = first_value(raw, fields, "content-type")
    ctype = (_parse_content_type(value.decode("latin-1")) if value is not None else None) \
        or default
    part = MimePart(start, body_start, end, fields, ctype)
    if depth >= MAX_DEPTH:
        return part
    if ctype.is_("multipart"):
        boundary = ctype.param("boundary")
        if not boundary:
            part.ctype = text_plain()  # a multipart without a boundary cannot be split
            return part
        child_default = _message_rfc822 if ctype.is_("multipart", "digest") else text_plain
        for s, e in _split_multipart(raw, body_start, end, boundary.encode("latin-1")):
            part.children.append(parse_entity(raw, s, e, child_default(), depth + 1))
        if not part.children:
            # No delimiter at all: one empty text/plain part (Dovecot's EMPTY_BODYSTRUCTURE).
            part.children.append(MimePart(end, end, end, [], text_plain()))
    elif _is_encapsulated(raw, part):
        part.message = parse_entity(raw, body_start, end, text_plain(), depth + 1)
    return part


def transfer_encoding(raw: bytes, part: MimePart) -> str:
    value = first_value(raw, part.fields, "content-transfer-encoding")
    return "" if value is None else strip_comments(value.decode("latin-1")).strip()


def _is_encapsulated(raw: bytes, part: MimePart) -> bool:
    # RFC 2046 §5.2.1 message/rfc822 (RFC 6532 §3.7 message/global); an encoded one (not
    # allowed, but seen) is opaque.
    return (part.ctype.is_("message", "rfc822") or part.ctype.is_("message", "global")) and \
        transfer_encoding(raw, part).lower() in _IDENTITY_ENCODINGS


# ---- transfer encodings ---------------------------------------------------------------------


def decode_transfer(data: bytes, encoding: str) -> bytes | None:
    """Undo a Content-Transfer-Encoding (RFC 2045 §6), leniently; None if unknown."""
    encoding = encoding.lower()
    if encoding in _IDENTITY_ENCODINGS:
        return data
    if encoding == "base64":
        clean = _B64_JUNK.sub(b"", data.split(b"=", 1)[0])
        clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
        try:
            return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
        except binascii.Error:
            return None
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    return None

