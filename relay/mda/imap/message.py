"""What FETCH returns, computed from a stored message's octets (RFC 3501 §6.4.5, §7.4.2).

The MIME tree (mda/imap/mime.py) records byte offsets for every part (header start, body
start, end), so BODY[...] sections are exact slices of the stored file, never a
re-serialisation. ENVELOPE and BODYSTRUCTURE are built from those parts as wire-ready IMAP
s-expressions (bytes, because strings that cannot be quoted go out as {n} literals). The same
parse serves SEARCH: decoded header text (RFC 2047) and decoded body text.

Imports: stdlib only (+ relay.mda.imap.{mime,addresses}, and fetch_items for the Section
type).
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Iterator

from relay.mda.imap.addresses import parse_addresses
from relay.mda.imap.fetch_items import Section, parse_section
from relay.mda.imap.mime import (
    MimePart,
    decode_charset,
    decode_transfer,
    decode_words,
    first_value,
    header_str,
    parse_entity,
    parse_params,
    split_fields,
    split_header,
    split_unquoted,
    strip_comments,
    text_plain,
    transfer_encoding,
    unfold,
)

_QUOTED_SPECIALS = frozenset(b'"\\')
_LITERAL_NEEDED = frozenset(range(0x80, 0x100)) | {0x0A, 0x0D}


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


# ---- addresses ------------------------------------------------------------------------------


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
        return first_value(raw, part.fields, name)

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
    dsp = first_value(raw, part.fields, "content-disposition")
    dsp_out = b"NIL"
    if dsp is not None:
        pieces = split_unquoted(strip_comments(dsp.decode("latin-1")), ";")
        if pieces[0].strip():
            dsp_out = (b"(" + _s(pieces[0].strip()) + b" "
                       + _param_list(parse_params(pieces[1:])) + b")")
    lang = first_value(raw, part.fields, "content-language")
    lang_out = b"NIL"
    if lang is not None:
        tags = [t.strip() for t in strip_comments(lang.decode("latin-1")).split(",")]
        tags = [t for t in tags if t]
        if len(tags) == 1:
            lang_out = _s(tags[0])
        elif tags:
            lang_out = b"(" + b" ".join(_s(t) for t in tags) + b")"
    return [dsp_out, lang_out, nstring(first_value(raw, part.fields, "content-location"))]


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
    encoding = transfer_encoding(raw, part)
    fields = [_s(ct.maintype), _s(ct.subtype), _param_list(params),
              nstring(first_value(raw, part.fields, "content-id")),
              nstring(first_value(raw, part.fields, "content-description")),
              _s(encoding or "7BIT"), b"%d" % (part.end - part.body_start)]
    if part.message is not None:
        fields += [_envelope(raw, part.message), _body(raw, part.message, extensible),
                   _lines(raw, part)]
    elif ct.is_("text"):
        fields.append(_lines(raw, part))
    if extensible:
        fields += [nstring(first_value(raw, part.fields, "content-md5")), *_extension(raw, part)]
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


# ---- the public face ------------------------------------------------------------------------


class Message:
    """One stored message, parsed once; every FETCH item and SEARCH key reads from it."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.root = parse_entity(raw, 0, len(raw), text_plain(), 0)
        self._fields_memo: dict[tuple, bytes] | None = None  # HEADER.FIELDS answers

    @classmethod
    def of_header(cls, raw: bytes) -> Message:
        """A parse of a header section alone, for what needs only its fields (ENVELOPE,
        BODY[HEADER...], header_values, has_header, sent_date): Content-Type is not
        looked at, so its structure answers nothing else."""
        msg = cls.__new__(cls)
        msg.raw = raw
        header_end, body_start = split_header(raw, 0, len(raw))
        msg.root = MimePart(0, body_start, len(raw), split_fields(raw, 0, header_end), text_plain())
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
        return [decode_words(header_str(unfold(self.raw[f.value_start : f.end])))
                for f in self.root.fields if f.name is not None and f.name.lower() == name]

    def has_header(self, name: str) -> bool:
        name = name.lower()
        return any(f.name is not None and f.name.lower() == name for f in self.root.fields)

    def header_text(self) -> str:
        """The whole header, RFC 2047-decoded (for SEARCH TEXT)."""
        return decode_words(header_str(self.raw[self.root.start : self.root.body_start]))

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
            yield decode_words(header_str(self.raw[inner.start : inner.body_start]))
            yield from self._texts(inner, top=True)
        elif node.ctype.is_("text") or (top and node.ctype.defaulted):
            data = decode_transfer(self.raw[node.body_start : node.end],
                                   transfer_encoding(self.raw, node))
            if data is not None:
                yield decode_charset(data, node.ctype.param("charset") or "utf-8")

    def sent_date(self) -> dt.date | None:
        """The calendar date of the Date header in its own zone (RFC 3501 §6.4.4 SENT*), or
        None when absent or unparseable."""
        value = first_value(self.raw, self.root.fields, "date")
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
