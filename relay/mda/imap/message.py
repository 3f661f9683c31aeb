"""What FETCH returns, computed from a stored message's octets (RFC 3501 §6.4.5, §7.4.2).

A small MIME splitter walks the raw bytes once and records byte offsets for every part (header
start, body start, end), so BODY[...] sections are exact slices of the stored file, never a
re-serialisation. ENVELOPE and BODYSTRUCTURE are built from those parts as wire-ready IMAP
s-expressions (bytes, because strings that cannot be quoted go out as {n} literals). The same
parse serves SEARCH: decoded header text (RFC 2047) and decoded body text.

Malformed MIME never raises: like Dovecot, a missing boundary makes a multipart a single empty
text/plain part, an unknown Content-Type falls back to RFC 2045 §5.2's text/plain, a header
without its blank line is all header, a part nested deeper than MAX_DEPTH is opaque.

Imports: stdlib only (+ relay.mda.imap.fetch_items for the Section type).
"""

from __future__ import annotations

import binascii
import codecs
import datetime as dt
import email.utils
import re
from collections.abc import Iterator

from relay.mda.imap.fetch_items import Section, parse_section

# Parts nested deeper than this are treated as opaque leaves (bounds recursion on hostile mail).
MAX_DEPTH = 48

_BLANK_LINE = re.compile(rb"\n\r?\n")
_QUOTED_SPECIALS = frozenset(b'"\\')
_LITERAL_NEEDED = frozenset(range(0x80, 0x100)) | {0x0A, 0x0D}
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 2045 §5.1 token
_TOKEN_TYPE = re.compile(rf"\s*({_TOKEN})\s*/\s*({_TOKEN})\s*")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_ENCODED_GAP = re.compile(r"[ \t\r\n]*")
_B64_WORD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_IDENTITY_ENCODINGS = ("", "7bit", "8bit", "binary")


# ---- IMAP strings ---------------------------------------------------------------------------


def istring(data: bytes) -> bytes:
    """`data` as an IMAP string: quoted when it can be (RFC 3501 §4.3), else a {n} literal.

    NUL cannot appear in either form (CHAR8 excludes it) and is dropped.
    """
    if b"\0" in data:
        data = data.replace(b"\0", b"")
    if _LITERAL_NEEDED.isdisjoint(data):
        if not _QUOTED_SPECIALS.isdisjoint(data):
            data = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def nstring(data: bytes | None) -> bytes:
    """`data` as an IMAP nstring: NIL for None."""
    return b"NIL" if data is None else istring(data)


def _s(text: str) -> bytes:
    """A header-derived str (latin-1 mapped, so octets survive) as an IMAP string."""
    return istring(text.encode("latin-1", "replace"))


def _ns(text: str | None) -> bytes:
    return b"NIL" if text is None else _s(text)


def partial(data: bytes, origin: int, length: int | None) -> bytes:
    """RFC 3501 §6.4.5 <origin.length>: the octets from `origin`, at most `length` of them;
    empty when `origin` is past the end."""
    return data[origin:] if length is None else data[origin : origin + length]


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


def _fields(raw: bytes, start: int, end: int) -> list[HeaderField]:
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


def _unfold(value: bytes) -> bytes:
    """RFC 5322 §2.2.3 unfolding (drop the line breaks), outer whitespace trimmed."""
    return value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")


def _header_str(value: bytes) -> str:
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
            out.append(_decode_charset(b"".join(run), run_charset))
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


def _decode_charset(data: bytes, charset: str) -> str:
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


def _strip_comments(text: str) -> str:
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


def _split_unquoted(text: str, sep: str) -> list[str]:
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


def _params(pieces: list[str]) -> list[tuple[str, str]]:
    """RFC 2045 §5.1 parameters (attribute "=" value), names and values as written; RFC 2231
    continuations are passed through for the client, as Dovecot does."""
    out: list[tuple[str, str]] = []
    for piece in pieces:
        name, eq, value = piece.partition("=")
        name = name.strip()
        if eq and name and not any(c in name for c in ' \t"'):
            out.append((name, _unquote(value)))
    return out


class _ContentType:
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
def _text_plain() -> _ContentType:
    return _ContentType("TEXT", "PLAIN", [("CHARSET", "US-ASCII")], defaulted=True)


def _message_rfc822() -> _ContentType:
    # RFC 2046 §5.1.5: the default inside multipart/digest.
    return _ContentType("MESSAGE", "RFC822", [], defaulted=True)


def _parse_content_type(value: str) -> _ContentType | None:
    pieces = _split_unquoted(_strip_comments(value), ";")
    m = _TOKEN_TYPE.fullmatch(pieces[0])
    if m is None:
        return None
    return _ContentType(m.group(1), m.group(2), _params(pieces[1:]))


# ---- the MIME tree --------------------------------------------------------------------------


class MimePart:
    """One entity (RFC 2045 §2.4): a message or a body part, with offsets into the raw octets.

    raw[start:body_start] is the header including its blank line, raw[body_start:end] the
    body. `children` are the parts of a multipart; `message` the encapsulated message of a
    message/rfc822 part.
    """

    __slots__ = ("start", "body_start", "end", "fields", "ctype", "children", "message")

    def __init__(self, start: int, body_start: int, end: int, fields: list[HeaderField],
                 ctype: _ContentType) -> None:
        self.start = start
        self.body_start = body_start
        self.end = end
        self.fields = fields
        self.ctype = ctype
        self.children: list[MimePart] = []
        self.message: MimePart | None = None


def _split_header(raw: bytes, start: int, end: int) -> tuple[int, int]:
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


def _first(raw: bytes, fields: list[HeaderField], name: str) -> bytes | None:
    """Unfolded value of the first field called `name` (lower case), or None."""
    for f in fields:
        if f.name is not None and f.name.lower() == name:
            return _unfold(raw[f.value_start : f.end])
    return None


def _parse_entity(raw: bytes, start: int, end: int, default: _ContentType,
                  depth: int) -> MimePart:
    header_end, body_start = _split_header(raw, start, end)
    fields = _fields(raw, start, header_end)
    value = _first(raw, fields, "content-type")
    ctype = (_parse_content_type(value.decode("latin-1")) if value is not None else None) \
        or default
    part = MimePart(start, body_start, end, fields, ctype)
    if depth >= MAX_DEPTH:
        return part
    if ctype.is_("multipart"):
        boundary = ctype.param("boundary")
        if not boundary:
            part.ctype = _text_plain()  # a multipart without a boundary cannot be split
            return part
        child_default = _message_rfc822 if ctype.is_("multipart", "digest") else _text_plain
        for s, e in _split_multipart(raw, body_start, end, boundary.encode("latin-1")):
            part.children.append(_parse_entity(raw, s, e, child_default(), depth + 1))
        if not part.children:
            # No delimiter at all: one empty text/plain part (Dovecot's EMPTY_BODYSTRUCTURE).
            part.children.append(MimePart(end, end, end, [], _text_plain()))
    elif _is_encapsulated(raw, part):
        part.message = _parse_entity(raw, body_start, end, _text_plain(), depth + 1)
    return part


def _encoding(raw: bytes, part: MimePart) -> str:
    value = _first(raw, part.fields, "content-transfer-encoding")
    return "" if value is None else _strip_comments(value.decode("latin-1")).strip()


def _is_encapsulated(raw: bytes, part: MimePart) -> bool:
    # RFC 2046 §5.2.1 message/rfc822 (RFC 6532 §3.7 message/global); an encoded one (not
    # allowed, but seen) is opaque.
    return (part.ctype.is_("message", "rfc822") or part.ctype.is_("message", "global")) and \
        _encoding(raw, part).lower() in _IDENTITY_ENCODINGS


# ---- addresses ------------------------------------------------------------------------------

_ADDR_SPECIALS = frozenset('()<>[]:;@\\,."')

# (name, adl, mailbox, host) as in RFC 3501 §7.4.2; a group is opened by
# (None, None, group name, None) and closed by (None, None, None, None).
Address = tuple[str | None, str | None, str | None, str | None]


class _Token:
    __slots__ = ("kind", "text", "space")

    def __init__(self, kind: str, text: str, space: bool) -> None:
        self.kind = kind  # "atom", "qs", "comment", "dlit", or the special character itself
        self.text = text
        self.space = space  # whitespace came before it


def _lex_addresses(text: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(text)
    space = False
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            space = True
            i += 1
            continue
        if ch == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            out.append(_Token("qs", "".join(buf), space))
            i = j + 1
        elif ch == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                c = text[j]
                if c == "\\" and j + 1 < n:
                    j += 1
                    c = text[j]
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if not depth:
                        break
                buf.append(c)
                j += 1
            out.append(_Token("comment", "".join(buf), space))
            i = j + 1
        elif ch == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            out.append(_Token("dlit", text[i : j + 1], space))
            i = j + 1
        elif ch in _ADDR_SPECIALS:
            out.append(_Token(ch, ch, space))
            i += 1
        else:
            j = i
            while j < n and text[j] not in _ADDR_SPECIALS and text[j] not in " \t\r\n":
                j += 1
            out.append(_Token("atom", text[i:j], space))
            i = j
        space = False
    return out


def _phrase(tokens: list[_Token]) -> str:
    words: list[str] = []
    for t in tokens:
        if t.kind == "comment":
            continue
        if words and t.space:
            words.append(" ")
        words.append(t.text)
    return "".join(words).strip()


def _local_text(tokens: list[_Token]) -> str:
    parts = []
    for t in tokens:
        if t.kind == "qs":
            parts.append('"' + t.text.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            parts.append(t.text)
    return "".join(parts)


def _mailbox(tokens: list[_Token]) -> Address | None:
    comments = [t.text for t in tokens if t.kind == "comment"]
    toks = [t for t in tokens if t.kind != "comment"]
    if not toks:
        return None
    name: str | None = None
    kinds = [t.kind for t in toks]
    if "<" in kinds:
        lt = kinds.index("<")
        gt = kinds.index(">", lt) if ">" in kinds[lt:] else len(toks)
        name = _phrase(toks[:lt]) or None
        spec = toks[lt + 1 : gt]
    else:
        spec = toks
        if comments and comments[-1].strip():
            name = comments[-1].strip()  # old style "user@host (Full Name)"
    adl: str | None = None
    if spec and spec[0].kind == "@":
        colon = next((i for i, t in enumerate(spec) if t.kind == ":"), None)
        if colon is not None:
            adl = "".join(t.text for t in spec[:colon])
            spec = spec[colon + 1 :]
    at = max((i for i, t in enumerate(spec) if t.kind == "@"), default=None)
    if at is None:
        if not spec:
            return (name, adl, "", "")  # "<>"
        return (name, adl, _local_text(spec), "MISSING_DOMAIN")
    local = _local_text(spec[:at]) or "MISSING_MAILBOX"
    host = "".join(t.text for t in spec[at + 1 :]) or "MISSING_DOMAIN"
    return (name, adl, local, host)


def parse_addresses(value: str) -> list[Address]:
    """RFC 5322 §3.4 address-list, leniently: mailboxes, groups (RFC 3501 §7.4.2 group
    markers), obsolete routes; display names keep their encoded words (clients decode)."""
    out: list[Address] = []
    cur: list[_Token] = []
    in_angle = in_group = False

    def flush() -> None:
        mailbox = _mailbox(cur)
        if mailbox is not None:
            out.append(mailbox)
        cur.clear()

    for tok in _lex_addresses(value):
        if tok.kind == "<":
            in_angle = True
        elif tok.kind == ">":
            in_angle = False
        elif not in_angle:
            if tok.kind == ",":
                flush()
                continue
            if tok.kind == ":" and not in_group:
                out.append((None, None, _phrase(cur), None))
                cur.clear()
                in_group = True
                continue
            if tok.kind == ";":
                flush()
                if in_group:
                    out.append((None, None, None, None))
                    in_group = False
                continue
        cur.append(tok)
    flush()
    if in_group:
        out.append((None, None, None, None))
    return out


def _address_list(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    addresses = parse_addresses(value.decode("latin-1"))
    if not addresses:
        return None
    return b"(" + b"".join(b"(" + b" ".join(_ns(x) for x in a) + b")" for a in addresses) + b")"


# ---- ENVELOPE and BODYSTRUCTURE -------------------------------------------------------------


def _envelope(raw: bytes, part: MimePart) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE of the entity `part` (a message)."""
    def get(name: str) -> bytes | None:
        return _first(raw, part.fields, name)

    from_ = _address_list(get("from"))
    # RFC 3501 §7.4.2: absent or empty Sender / Reply-To default to From.
    sender = _address_list(get("sender")) or from_
    reply_to = _address_list(get("reply-to")) or from_
    items = [nstring(get("date")), nstring(get("subject")), from_, sender, reply_to,
             _address_list(get("to")), _address_list(get("cc")), _address_list(get("bcc")),
             nstring(get("in-reply-to")), nstring(get("message-id"))]
    return b"(" + b" ".join(b"NIL" if x is None else x for x in items) + b")"


def _param_list(params: list[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(_s(k) + b" " + _s(v) for k, v in params) + b")"


def _lines(raw: bytes, part: MimePart) -> bytes:
    # Text lines: the LFs in the body, as Dovecot counts them (the line break before a
    # boundary belongs to the delimiter).
    return b"%d" % raw.count(b"\n", part.body_start, part.end)


def _extension(raw: bytes, part: MimePart) -> list[bytes]:
    """body-fld-dsp, body-fld-lang, body-fld-loc (RFC 3501 §7.4.2 extension data)."""
    dsp = _first(raw, part.fields, "content-disposition")
    dsp_out = b"NIL"
    if dsp is not None:
        pieces = _split_unquoted(_strip_comments(dsp.decode("latin-1")), ";")
        if pieces[0].strip():
            dsp_out = b"(" + _s(pieces[0].strip()) + b" " + _param_list(_params(pieces[1:])) + \
                b")"
    lang = _first(raw, part.fields, "content-language")
    lang_out = b"NIL"
    if lang is not None:
        tags = [t.strip() for t in _strip_comments(lang.decode("latin-1")).split(",")]
        tags = [t for t in tags if t]
        if len(tags) == 1:
            lang_out = _s(tags[0])
        elif tags:
            lang_out = b"(" + b" ".join(_s(t) for t in tags) + b")"
    return [dsp_out, lang_out, nstring(_first(raw, part.fields, "content-location"))]


def _body(raw: bytes, part: MimePart, extensible: bool) -> bytes:
    """RFC 3501 §7.4.2 BODY / BODYSTRUCTURE of one entity."""
    ct = part.ctype
    if part.children:
        out = b"".join(_body(raw, c, extensible) for c in part.children) + b" " + _s(ct.subtype)
        if extensible:
            out += b" " + b" ".join([_param_list(ct.params), *_extension(raw, part)])
        return b"(" + out + b")"
    params = list(ct.params)
    if ct.is_("text") and ct.param("charset") is None:
        params.append(("CHARSET", "US-ASCII"))  # RFC 2046 §4.1.2 default
    encoding = _encoding(raw, part)
    fields = [_s(ct.maintype), _s(ct.subtype), _param_list(params),
              nstring(_first(raw, part.fields, "content-id")),
              nstring(_first(raw, part.fields, "content-description")),
              _s(encoding or "7BIT"), b"%d" % (part.end - part.body_start)]
    if part.message is not None:
        fields += [_envelope(raw, part.message), _body(raw, part.message, extensible),
                   _lines(raw, part)]
    elif ct.is_("text"):
        fields.append(_lines(raw, part))
    if extensible:
        fields += [nstring(_first(raw, part.fields, "content-md5")), *_extension(raw, part)]
    return b"(" + b" ".join(fields) + b")"


# ---- sections -------------------------------------------------------------------------------


def _find_part(top: MimePart, numbers: tuple[int, ...]) -> MimePart | None:
    """RFC 3501 §6.4.5 part numbering. A message (the top one or an encapsulated one) that is
    not multipart has a single part 1, its body; a multipart's parts count from 1; the parts of
    a message/rfc822 part are those of the message it encapsulates."""
    node, is_message = top, True
    for n in numbers:
        if not is_message and node.message is not None:
            node, is_message = node.message, True
        if node.children:
            if not 1 <= n <= len(node.children):
                return None
            node, is_message = node.children[n - 1], False
        elif is_message and n == 1:
            is_message = False  # the body of a non-multipart message
        else:
            return None
    return node


def _header_fields(raw: bytes, part: MimePart, names: tuple[str, ...], keep: bool) -> bytes:
    """HEADER.FIELDS (keep=True) / HEADER.FIELDS.NOT: the matching (or other) fields in their
    original octets and order, then the blank line (RFC 3501 §6.4.5)."""
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    for f in part.fields:
        match = f.name is not None and f.name.lower() in wanted
        if match == keep:
            line = raw[f.start : f.end]
            out.append(line if line.endswith(b"\n") else line + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def _section(raw: bytes, top: MimePart, spec: Section) -> bytes | None:
    node = _find_part(top, spec.part) if spec.part else top
    if node is None:
        return None
    text = spec.text
    if text is None:
        return raw[node.start : node.end] if not spec.part else raw[node.body_start : node.end]
    if text == "MIME":
        # The part's own MIME header (for part 1 of a non-multipart message, its header).
        return raw[node.start : node.body_start] if spec.part else None
    if spec.part:
        if node.message is None:
            return None
        node = node.message
    if text == "TEXT":
        return raw[node.body_start : node.end]
    if text == "HEADER":
        return raw[node.start : node.body_start]
    return _header_fields(raw, node, spec.fields, keep=text == "HEADER.FIELDS")


# ---- body text for SEARCH -------------------------------------------------------------------


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


# ---- the public face ------------------------------------------------------------------------


class Message:
    """One stored message, parsed once; every FETCH item and SEARCH key reads from it."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.root = _parse_entity(raw, 0, len(raw), _text_plain(), 0)
        self._fields_memo: dict[tuple, bytes] | None = None  # HEADER.FIELDS answers

    @classmethod
    def of_header(cls, raw: bytes) -> Message:
        """A parse of a header section alone, for what needs only its fields (ENVELOPE,
        BODY[HEADER...], header_values, has_header, sent_date): Content-Type is not
        looked at, so its structure answers nothing else."""
        msg = cls.__new__(cls)
        msg.raw = raw
        header_end, body_start = _split_header(raw, 0, len(raw))
        msg.root = MimePart(0, body_start, len(raw), _fields(raw, 0, header_end), _text_plain())
        msg._fields_memo = None
        return msg

    def envelope(self) -> bytes:
        """RFC 3501 §7.4.2 ENVELOPE, wire-ready."""
        return _envelope(self.raw, self.root)

    def bodystructure(self, extensible: bool = True) -> bytes:
        """RFC 3501 §7.4.2 BODYSTRUCTURE (extensible) or BODY (extensible=False), wire-ready."""
        return _body(self.raw, self.root, extensible)

    def section(self, spec: Section | str) -> bytes | None:
        """RFC 3501 §6.4.5 BODY[section] octets, an exact slice of the message (HEADER.FIELDS
        joins the chosen fields). None for a part that does not exist (answer NIL).

        Raises:
            ValueError: `spec` is a str that is not section-spec syntax.
        """
        if isinstance(spec, str):
            spec = parse_section(spec)
        if spec.fields and not spec.part:
            # Messages are shared and parsed once; clients ask the same fields each time.
            memo = self._fields_memo
            if memo is None:
                memo = self._fields_memo = {}
            key = (spec.text, spec.fields)
            hit = memo.get(key)
            if hit is None:
                hit = _section(self.raw, self.root, spec)
                assert hit is not None
                if len(memo) < 8:
                    memo[key] = hit
            return hit
        return _section(self.raw, self.root, spec)

    def header_values(self, name: str) -> list[str]:
        """Every value of header field `name`, unfolded and RFC 2047-decoded."""
        name = name.lower()
        return [decode_words(_header_str(_unfold(self.raw[f.value_start : f.end])))
                for f in self.root.fields if f.name is not None and f.name.lower() == name]

    def has_header(self, name: str) -> bool:
        name = name.lower()
        return any(f.name is not None and f.name.lower() == name for f in self.root.fields)

    def header_text(self) -> str:
        """The whole header, RFC 2047-decoded (for SEARCH TEXT)."""
        return decode_words(_header_str(self.raw[self.root.start : self.root.body_start]))

    def body_text(self) -> str:
        """The text of the body with transfer encodings and charsets undone: every text part,
        and the header and text of encapsulated messages (for SEARCH BODY / TEXT)."""
        return "\n".join(self._texts(self.root, top=True))

    def _texts(self, node: MimePart, top: bool = False) -> Iterator[str]:
        if node.children:
            for child in node.children:
                yield from self._texts(child)
        elif node.message is not None:
            inner = node.message
            yield decode_words(_header_str(self.raw[inner.start : inner.body_start]))
            yield from self._texts(inner, top=True)
        elif node.ctype.is_("text") or (top and node.ctype.defaulted):
            data = decode_transfer(self.raw[node.body_start : node.end],
                                   _encoding(self.raw, node))
            if data is not None:
                yield _decode_charset(data, node.ctype.param("charset") or "utf-8")

    def sent_date(self) -> dt.date | None:
        """The calendar date of the Date header in its own zone (RFC 3501 §6.4.4 SENT*), or
        None when absent or unparseable."""
        value = _first(self.raw, self.root.fields, "date")
        if value is None:
            return None
        try:
            return email.utils.parsedate_to_datetime(value.decode("latin-1")).date()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None


def envelope(raw: bytes) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE of the message `raw`, wire-ready."""
    return Message(raw).envelope()


def bodystructure(raw: bytes, extensible: bool = True) -> bytes:
    """RFC 3501 §7.4.2 BODYSTRUCTURE (or BODY when extensible=False) of `raw`, wire-ready."""
    return Message(raw).bodystructure(extensible)


def section(raw: bytes, spec: Section | str) -> bytes | None:
    """RFC 3501 §6.4.5 BODY[spec] of `raw` (None: no such part, answer NIL)."""
    return Message(raw).section(spec)
