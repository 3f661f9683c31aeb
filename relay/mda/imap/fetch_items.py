"""FETCH attributes (RFC 3501 §6.4.5 fetch-att, section-spec, partial; BINARY RFC 3516
§4.1; MODSEQ RFC 7162 §3.1.4): the values and their grammar.

`FetchItem` is one attribute as the FETCH response names it and `Section` its section-spec;
`FetchItemGrammar` reads them, expanding the ALL / FAST / FULL macros; `parse_section` reads
a section-spec from text (message.py).

Imports: stdlib only, and relay.mda.imap.tokens. No I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.mda.imap.tokens import ATOM, GrammarError, TokenGrammar

_FETCH_WORD = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_TEXT = re.compile(rb"[A-Za-z.]+")

_FETCH_MACROS = {  # RFC 3501 §6.4.5
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_SIMPLE = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                           "RFC822.SIZE", "RFC822.TEXT", "BODYSTRUCTURE", "UID", "MODSEQ"})


@dataclass(frozen=True, slots=True)
class Section:
    """RFC 3501 §6.4.5 section-spec: part numbers, then HEADER, HEADER.FIELDS,
    HEADER.FIELDS.NOT, TEXT or MIME (or nothing), and the field names of the FIELDS forms."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        pieces = [str(n) for n in self.part]
        if self.text:
            pieces.append(self.text)
        out = ".".join(pieces)
        if self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            out += " (" + " ".join(_quote_if_needed(f) for f in self.fields) + ")"
        return out


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One fetch-att (RFC 3501 §6.4.5; BINARY RFC 3516; MODSEQ RFC 7162).

    name: ENVELOPE, FLAGS, INTERNALDATE, RFC822, RFC822.HEADER, RFC822.SIZE, RFC822.TEXT,
    BODY (section None: the non-extensible structure; else BODY[section]), BODYSTRUCTURE, UID,
    MODSEQ, BINARY, BINARY.SIZE. `peek` is BODY.PEEK / BINARY.PEEK (do not set \\Seen).
    `partial` is (origin, length).
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def response_key(self) -> str:
        """The item's name in the FETCH response: "BODY[1.MIME]<0>" (RFC 3501 §7.4.2)."""
        if self.section is None:
            return self.name
        key = f"{self.name}[{self.section}]"
        return key if self.partial is None else f"{key}<{self.partial[0]}>"


def _quote_if_needed(text: str) -> str:
    """A header field name as an astring: an atom as it is, anything else quoted."""
    if text and ATOM.fullmatch(text.encode("latin-1", "replace")):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class FetchItemGrammar(TokenGrammar):
    """fetch-att, section and partial (RFC 3501 §9)."""

    def section(self, binary: bool) -> Section:
        c = self.c
        c.expect(b"[")
        parts: list[int] = []
        text = None
        fields: tuple[str, ...] = ()
        while c.peek() != 0x5D:
            if 0x30 <= c.peek() <= 0x39:
                parts.append(self.number(nonzero=True))
                if c.peek() == 0x2E and not binary:
                    c.pos += 1
                    if c.peek() == 0x5D:
                        raise GrammarError("section ends in '.'")
                    continue
                break
            text = c.take(_SECTION_TEXT, "section text").decode("ascii").upper()
            if binary or text not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT",
                                      "TEXT", "MIME") or (text == "MIME" and not parts):
                raise GrammarError(f"bad section {text}")
            if text.startswith("HEADER.FIELDS"):
                c.sp()
                fields = tuple(self.paren_list(self.field_name, allow_empty=False))
            break
        c.expect(b"]")
        return Section(tuple(parts), text, fields)

    def partial(self) -> tuple[int, int] | None:
        c = self.c
        if c.peek() != 0x3C:
            return None
        c.pos += 1
        origin = self.number()
        c.expect(b".")
        length = self.number(nonzero=True)
        c.expect(b">")
        return origin, length

    def fetch_att(self, macros: bool) -> list[FetchItem]:
        c = self.c
        word = c.take(_FETCH_WORD, "fetch attribute").decode("ascii").upper()
        if macros and word in _FETCH_MACROS:
            return [FetchItem(n) for n in _FETCH_MACROS[word]]
        if word in _FETCH_SIMPLE:
            return [FetchItem(word)]
        if word == "BODY" and c.peek() != 0x5B:
            return [FetchItem("BODY")]
        if word in ("BODY", "BODY.PEEK"):
            section = self.section(binary=False)
            return [FetchItem("BODY", section, self.partial(), word == "BODY.PEEK")]
        if word in ("BINARY", "BINARY.PEEK"):  # RFC 3516 §4.1
            section = self.section(binary=True)
            return [FetchItem("BINARY", section, self.partial(), word == "BINARY.PEEK")]
        if word == "BINARY.SIZE":
            return [FetchItem("BINARY.SIZE", self.section(binary=True))]
        raise GrammarError(f"unknown fetch attribute {word}")


def parse_section(text: str) -> Section:
    """Parse a section-spec such as "1.2.HEADER.FIELDS (DATE FROM)" (without brackets).

    Raises:
        ValueError: not section-spec syntax.
    """
    g = FetchItemGrammar([b"[" + text.encode("latin-1") + b"]"], [], False)
    try:
        spec = g.section(binary=False)
        g.end()
    except GrammarError as exc:
        raise ValueError(exc.text) from None
    return spec
