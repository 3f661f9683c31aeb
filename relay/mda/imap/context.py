"""Context: the logged-in side of one IMAP session, as the command implementations see it.

It holds the account (relay.mda.store.Account), the selected mailbox if any
(selected.SelectedMailbox), the extensions the client enabled (CONDSTORE, RFC 7162 §3.1),
the APPENDLIMIT and a clock. One session owns it and uses it from one thread at a time.
Also here: the mapping of store errors to tagged completions (RFC 5530 codes), shared by
every command module.

Imports: stdlib, relay.mda.{model,store}, relay.mda.imap.{parser,responses,selected}.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from relay.mda.imap.parser import MAX_APPEND
from relay.mda.imap.responses import (
    ALREADY_EXISTS,
    CANNOT,
    NO_SUCH_MAILBOX,
    Done,
    no,
)
from relay.mda.imap.selected import Output, SelectedMailbox
from relay.mda.model import StoreError, StoreErrorKind
from relay.mda.store import Account


class Context:
    """State the commands act on (see the module docstring)."""

    def __init__(self, account: Account, *, append_limit: int = MAX_APPEND,
                 clock: Callable[[], float] = time.time) -> None:
        self.account = account
        self.selected: SelectedMailbox | None = None
        self.condstore = False
        self.append_limit = append_limit
        self.clock = clock

    def enable_condstore(self, out: Output) -> None:
        """RFC 7162 §3.1: a CONDSTORE-enabling command. When a mailbox is already selected,
        the client learns its HIGHESTMODSEQ now (§3.1.2.1)."""
        if self.condstore:
            return
        self.condstore = True
        if self.selected is not None:
            out.write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n"
                      % self.selected.folder.highestmodseq)

    def is_selected(self, name: str, inferiors: bool = False) -> bool:
        """Whether `name` (or, with `inferiors`, one of its superiors) is selected."""
        if self.selected is None:
            return False
        current = _canonical(self.selected.folder.name)
        name = _canonical(name)
        return current == name or (inferiors and current.startswith(name + "/"))


def _canonical(name: str) -> str:
    head, sep, rest = name.partition("/")
    return "INBOX" + sep + rest if head.upper() == "INBOX" else name


def store_error(exc: StoreError) -> Done:
    """The tagged NO for a refused mailbox operation (RFC 5530 §3 response codes)."""
    kind = exc.kind
    if kind is StoreErrorKind.NONEXISTENT:
        return NO_SUCH_MAILBOX
    if kind is StoreErrorKind.EXISTS:
        return ALREADY_EXISTS
    if kind is StoreErrorKind.HAS_CHILDREN:
        return no("Mailbox has inferior mailboxes: delete them first", "HASCHILDREN")
    if kind is StoreErrorKind.INBOX:
        return no("INBOX cannot be deleted", "CANNOT")
    return no(f"{CANNOT.text}: {exc.detail}" if exc.detail else CANNOT.text, "CANNOT")
