"""The values the mailbox API hands out: errors, LIST entries, messages, sync() changes,
and the one normalisation of IMAP flags (RFC 3501 §2.3.2).

StoreError kinds map to IMAP response codes (RFC 5530) in the IMAP layer; Message and
Changes are what a Folder's view holds and what sync() reports (RFC 7162 MODSEQ included).

Imports: stdlib. Trust: flags come from IMAP clients (validated here: StoreError).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

_SYSTEM_FLAGS = {f.lower(): f for f in ("\\Answered", "\\Deleted", "\\Draft", "\\Flagged",
                                        "\\Seen")}
_ATOM_SPECIALS = frozenset('(){ %*"\\]')  # RFC 3501 §9 atom-specials (and resp-specials)


class StoreErrorKind(str, enum.Enum):
    """Why a mailbox operation was refused; the IMAP server maps each to a response code
    (RFC 5530)."""

    EXISTS = "exists"  # CREATE/RENAME target exists: [ALREADYEXISTS]
    NONEXISTENT = "nonexistent"  # no such mailbox, or the selected one was deleted,
    #                              renamed or got a new UIDVALIDITY: [NONEXISTENT] / BYE
    INVALID = "invalid"  # a name or flag that cannot be: [CANNOT]
    INBOX = "inbox"  # DELETE INBOX (RFC 3501 §6.3.4): [CANNOT]
    HAS_CHILDREN = "has_children"  # DELETE of a folder with inferiors: [INUSE]


class StoreError(Exception):
    def __init__(self, kind: StoreErrorKind | str, detail: str = "") -> None:
        self.kind = StoreErrorKind(kind)
        self.detail = detail
        super().__init__(f"{self.kind.value}: {detail}" if detail else self.kind.value)


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """One LIST line: name ("/"-delimited), RFC 6154 attribute, \\Subscribed,
    \\HasChildren/\\HasNoChildren (RFC 3348)."""

    name: str
    special_use: str | None
    subscribed: bool
    has_children: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a session sees it. `flags` are IMAP forms ("\\Seen", keywords);
    `internaldate` is a POSIX time; `modseq` is its RFC 7162 mod-sequence; `filename` its
    name in cur/ when the view was made (a hint: it changes with the flags)."""

    uid: int
    flags: frozenset[str]
    size: int
    internaldate: float
    modseq: int
    filename: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Changes:
    """What sync() found: new messages, expunged UIDs, flag changes by others (all
    ascending by UID), and the mailbox's UIDNEXT and HIGHESTMODSEQ now."""

    added: list[Message]
    expunged: list[int]
    flags: list[Message]
    uidnext: int
    highestmodseq: int


def normalise_flags(flags: Iterable[str]) -> frozenset[str]:
    """IMAP flags as stored: system flags in their canonical case (RFC 3501 §2.3.2 says
    they are case-insensitive), \\Recent dropped (the server sets it, never a client).
    Raises StoreError(INVALID) for another "\\" flag or a keyword that is not an atom."""
    out = set()
    for flag in flags:
        low = flag.lower()
        if low in _SYSTEM_FLAGS:
            out.add(_SYSTEM_FLAGS[low])
        elif low == "\\recent":
            continue
        elif low == "$forwarded":
            out.add("$Forwarded")  # one spelling, so it maps to the Maildir "P" letter
        elif flag and flag.isascii() and flag.isprintable() and not _ATOM_SPECIALS & set(flag):
            out.add(flag)
        else:
            raise StoreError(StoreErrorKind.INVALID, f"flag {flag!r}")
    return frozenset(out)
