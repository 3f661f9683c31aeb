"""SEARCH keys (RFC 3501 §6.4.4; MODSEQ RFC 7162 §3.1.5; OLDER / YOUNGER RFC 5032 §3): the
program tree and its grammar.

`SearchKey` is one node of a search program; `SearchKeyGrammar` reads a key, recursing into
parenthesised lists, NOT and OR at most MAX_SEARCH_DEPTH deep, and decodes strings with the
command's CHARSET (read by grammar.CommandGrammar.search). Evaluation is search.py's.

Imports: stdlib only, and relay.mda.imap.{tokens,sequence_set}. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.mda.imap.sequence_set import SequenceSetGrammar
from relay.mda.imap.tokens import ATOM, MAX_MODSEQ, GrammarError

MAX_SEARCH_DEPTH = 64  # nesting of (), NOT and OR in one SEARCH

_SEARCH_FLAG_KEYS = frozenset({"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD",
                               "RECENT", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT",
                               "UNFLAGGED", "UNSEEN"})
_SEARCH_TEXT_KEYS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})


@dataclass(frozen=True, slots=True)
class SearchKey:
    """A node of a SEARCH program (RFC 3501 §6.4.4, RFC 7162 §3.1.5, RFC 5032).

    name / args:
      AND (k1, k2, ...) -- a parenthesised list or the top level; OR (k1, k2); NOT (k,)
      ALL ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN UNANSWERED UNDELETED UNDRAFT
      UNFLAGGED UNSEEN -- ()
      BCC BODY CC FROM SUBJECT TEXT TO -- (str,);  HEADER -- (field name, str)
      KEYWORD UNKEYWORD -- (keyword,)
      BEFORE ON SINCE SENTBEFORE SENTON SENTSINCE -- (datetime.date,)
      LARGER SMALLER -- (octets,);  OLDER YOUNGER -- (seconds,)
      SEQ UID -- (SequenceSet,);  MODSEQ -- (value, entry name or None, entry type or None)
    """

    name: str
    args: tuple[object, ...] = ()


class SearchKeyGrammar(SequenceSetGrammar):
    """search-key (RFC 3501 §9, RFC 7162 §7, RFC 5032 §3)."""

    def search_string(self) -> str:
        data = self.astring()
        if self.charset is None:  # RFC 3501 says US-ASCII; clients send UTF-8 regardless
            return data.decode("utf-8", "replace")
        try:
            return data.decode(self.charset)
        except (UnicodeError, LookupError, ValueError):
            raise GrammarError(f"search string is not valid {self.charset}") from None

    def search_key(self, depth: int) -> SearchKey:
        c = self.c
        if depth > MAX_SEARCH_DEPTH:
            raise GrammarError("search program nested too deeply")
        p = c.peek()
        if p == 0x28:
            keys = self.paren_list(lambda: self.search_key(depth + 1), allow_empty=False)
            return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
        if 0x30 <= p <= 0x39 or p in (0x2A, 0x24):
            return SearchKey("SEQ", (self.sequence_set(),))
        key = self.word("search key")
        if key in _SEARCH_FLAG_KEYS:
            return SearchKey(key)
        c.sp()
        if key in _SEARCH_TEXT_KEYS:
            return SearchKey(key, (self.search_string(),))
        if key in _SEARCH_DATE_KEYS:
            return SearchKey(key, (self.date(),))
        if key in ("KEYWORD", "UNKEYWORD"):
            return SearchKey(key, (c.take(ATOM, "keyword").decode("ascii"),))
        if key in ("LARGER", "SMALLER"):
            return SearchKey(key, (self.number(),))
        if key in ("OLDER", "YOUNGER"):  # RFC 5032 §3
            return SearchKey(key, (self.number(nonzero=True),))
        if key == "HEADER":
            field = self.field_name()
            c.sp()
            return SearchKey(key, (field, self.search_string()))
        if key == "NOT":
            return SearchKey(key, (self.search_key(depth + 1),))
        if key == "OR":
            first = self.search_key(depth + 1)
            c.sp()
            return SearchKey(key, (first, self.search_key(depth + 1)))
        if key == "UID":
            return SearchKey(key, (self.sequence_set(),))
        if key == "MODSEQ":  # RFC 7162 §3.1.5
            entry = kind = None
            if c.peek() == 0x22:
                entry = self.string().decode("latin-1")
                c.sp()
                kind = self.word("entry type")
                if kind not in ("PRIV", "SHARED", "ALL"):
                    raise GrammarError("bad MODSEQ entry type")
                c.sp()
            return SearchKey(key, (self.number(MAX_MODSEQ), entry, kind))
        raise GrammarError(f"unknown search key {key}")

