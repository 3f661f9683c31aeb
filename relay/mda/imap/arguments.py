"""Parsed IMAP commands: `Command` and the typed argument object of each command (RFC 3501
§6, RFC 9051 §6, and the extensions named at each class).

`Command.args` is one of these frozen dataclasses (grammar.COMMAND_ARGS maps each command
name to its type); machine.py, commands.py, mailboxes.py, messages.py and fetch.py dispatch
on them. The values inside them (SequenceSet, FetchItem, SearchKey) live beside their
grammars.

Imports: stdlib only, and relay.mda.imap.{sequence_set,fetch_items,search_keys}. No I/O.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from relay.mda.imap.fetch_items import FetchItem
from relay.mda.imap.search_keys import SearchKey
from relay.mda.imap.sequence_set import SequenceSet


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command. `name` is upper case; `uid` marks "UID FETCH" etc.; `args` is the
    typed argument object for `name` (see grammar.COMMAND_ARGS), None for commands without
    arguments. The IDLE terminator arrives as Command(tag="", name="DONE")."""

    tag: str
    name: str
    uid: bool = False
    args: object = None


# Arguments per command (Command.args):


@dataclass(frozen=True, slots=True)
class Login:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    mechanism: str  # upper case
    initial_response: bytes | None = None  # RFC 4959 SASL-IR, as sent (base64, or b"=")


@dataclass(frozen=True, slots=True)
class Select:  # SELECT, EXAMINE
    mailbox: str
    condstore: bool = False  # RFC 7162 §3.1.8


@dataclass(frozen=True, slots=True)
class MailboxName:  # DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT
    mailbox: str


@dataclass(frozen=True, slots=True)
class Create:
    mailbox: str
    special_use: tuple[str, ...] = ()  # RFC 6154 §3 CREATE ... (USE (\Drafts))


@dataclass(frozen=True, slots=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Status:
    mailbox: str
    items: tuple[str, ...]  # upper case, each in grammar.STATUS_ITEMS


@dataclass(frozen=True, slots=True)
class ListQuery:  # LIST (RFC 3501 §6.3.8, RFC 5258 LIST-EXTENDED), LSUB
    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()  # e.g. ("SUBSCRIBED", "SPECIAL-USE"), upper case
    return_options: tuple[str, ...] = ()  # e.g. ("CHILDREN", "SPECIAL-USE", "STATUS")
    status_items: tuple[str, ...] = ()  # RFC 5819 RETURN (STATUS (...))


@dataclass(frozen=True, slots=True)
class AppendMessage:
    flags: tuple[str, ...]
    internaldate: dt.datetime | None  # timezone-aware
    data: bytes
    binary: bool = False  # sent as literal8 (RFC 3516 §4.4)


@dataclass(frozen=True, slots=True)
class Append:
    mailbox: str
    messages: tuple[AppendMessage, ...]  # more than one: RFC 3502 MULTIAPPEND


@dataclass(frozen=True, slots=True)
class Fetch:
    sequence: SequenceSet
    items: tuple[FetchItem, ...]  # macros ALL / FAST / FULL already expanded
    changedsince: int | None = None  # RFC 7162 §3.1.4 (implies MODSEQ in the response)
    vanished: bool = False  # RFC 7162 §3.2.6 (UID FETCH only)


class StoreMode(enum.Enum):
    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


@dataclass(frozen=True, slots=True)
class Store:
    sequence: SequenceSet
    mode: StoreMode
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None  # RFC 7162 §3.1.3


@dataclass(frozen=True, slots=True)
class Copy:  # COPY, MOVE (RFC 6851)
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Search:
    key: SearchKey
    charset: str | None = None  # as given; strings in `key` are already decoded with it
    return_options: tuple[str, ...] | None = None  # RFC 4731 ESEARCH RETURN (...)


@dataclass(frozen=True, slots=True)
class Expunge:
    sequence: SequenceSet | None = None  # UID EXPUNGE (RFC 4315 §2.1)


@dataclass(frozen=True, slots=True)
class Id:
    params: tuple[tuple[str, str | None], ...] | None  # RFC 2971; None for NIL


@dataclass(frozen=True, slots=True)
class Enable:
    capabilities: tuple[str, ...]  # upper case (RFC 5161)


@dataclass(frozen=True, slots=True)
class QuotaRoot:  # GETQUOTA (RFC 9208)
    root: str

