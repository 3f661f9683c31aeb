"""FETCH and UID FETCH (RFC 3501 §6.4.5, §6.4.8, §7.4.2; CONDSTORE RFC 7162 §3.1.4).

Items are answered in the order asked, UID first for UID FETCH. What the index knows
(FLAGS, UID, INTERNALDATE, RFC822.SIZE, MODSEQ) is answered without opening a file
(FLAGS with \\Recent added for the messages recent in this session, RFC 3501 §2.3.2);
ENVELOPE and top-level header sections need only the header, read in batches (the
process's cache of parsed headers, else the index's header cache, else the files);
everything else reads and parses the message once, through the selected mailbox's
MessageCache (whose parses the sessions of the process share). Each item becomes a
function of the UID once per command (`_getter`), as one FETCH often names thousands.
Body sections go out as literals, exact slices of the stored file (message.Message).

\\Seen: a non-PEEK BODY[...], RFC822 or RFC822.TEXT of a read-write mailbox sets it
(RFC 3501 §6.4.5), in one store call before the responses, and those responses then
carry FLAGS.

Blocking: runs in the session's worker thread (on the event loop only when everything
it needs is in memory: commands.inline). Imports: stdlib, relay.mda.model,
relay.mda.imap.{arguments,context,fetch_items,message,responses,selected}.
"""

from __future__ import annotations

from collections.abc import Callable

from relay.mda.imap import arguments
from relay.mda.imap.arguments import Command
from relay.mda.imap.context import Context
from relay.mda.imap.fetch_items import FetchItem, Section
from relay.mda.imap.message import Message, partial
from relay.mda.imap.responses import (
    EXPUNGE_ISSUED,
    Done,
    bad,
    flag_list,
    internaldate,
    ok,
)
from relay.mda.imap.selected import PREFETCH, Output, SelectedMailbox, with_recent
from relay.mda.model import Message as Stored

# Items answered from the index alone.
_INDEX_ITEMS = frozenset({"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"})
_SETS_SEEN = frozenset({"RFC822", "RFC822.TEXT"})
_HEADER_TEXTS = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"})
_HEADER = Section(text="HEADER")
_TEXT = Section(text="TEXT")


def fetch(ctx: Context, cmd: Command, out: Output) -> Done:
    selected = ctx.selected
    args = cmd.args
    assert selected is not None and isinstance(args, arguments.Fetch)
    items = list(args.items)
    if any(i.name in ("BINARY", "BINARY.SIZE") for i in items):
        return bad("BINARY is not supported")
    if cmd.uid and not any(i.name == "UID" for i in items):
        items.insert(0, FetchItem("UID"))  # RFC 3501 §6.4.8
    if args.changedsince is not None or any(i.name == "MODSEQ" for i in items):
        ctx.enable_condstore(out)  # RFC 7162 §3.1.4: CHANGEDSINCE implies MODSEQ
        if not any(i.name == "MODSEQ" for i in items):
            items.append(FetchItem("MODSEQ"))
    targets = selected.resolve(args.sequence, cmd.uid)
    if args.changedsince is not None:
        targets = [(s, u) for s, u in targets
                   if selected.messages[u].modseq > args.changedsince]
    seen_now: set[int] = set()
    if not selected.readonly and any(sets_seen(i) for i in items):
        unseen = [u for _, u in targets if "\\Seen" not in selected.messages[u].flags]
        if unseen:
            seen_now = {m.uid for m in selected.store(unseen, ["\\Seen"], "+")}
    if seen_now and not any(i.name == "FLAGS" for i in items):
        items.append(FetchItem("FLAGS"))
    missing = False
    msgs = selected.messages  # after our own \Seen above
    cache = selected.cache
    header_items = any(header_only(i) for i in items)
    for start in range(0, len(targets), PREFETCH):
        chunk = targets[start:start + PREFETCH]
        # Header sections of the chunk in one go (the shared cache, the index, the files).
        headers = cache.headers_for([u for _, u in chunk]) if header_items else {}
        getters = [_getter(selected, msgs, headers, item) for item in items]
        for seq, uid in chunk:
            try:
                parts = [get(uid) for get in getters]
            except KeyError:
                missing = True  # expunged by another session and no longer readable
                continue
            out.write(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
    return EXPUNGE_ISSUED if missing else ok("FETCH completed")


def header_only(item: FetchItem) -> bool:
    """Whether the item needs only the header section."""
    section = item.section
    return item.name in ("ENVELOPE", "RFC822.HEADER") or (
        section is not None and not section.part and section.text in _HEADER_TEXTS)


def _getter(selected: SelectedMailbox, msgs: dict[int, Stored], headers: dict[int, Message],
            item: FetchItem) -> Callable[[int], bytes]:
    """uid -> the item's "NAME value" pair, with what can be worked out once done once."""
    name = item.name
    if name == "UID":
        return lambda uid: b"UID %d" % uid
    if name == "FLAGS":
        recent = selected.folder.recent
        if not recent:
            return lambda uid: b"FLAGS " + flag_list(msgs[uid].flags)
        if len(recent.ranges) > 1:
            return lambda uid: b"FLAGS " + flag_list(
                with_recent(msgs[uid].flags) if uid in recent else msgs[uid].flags)
        [(lo, hi)] = recent.ranges  # the usual case: one claim
        return lambda uid: b"FLAGS " + flag_list(
            with_recent(msgs[uid].flags) if lo <= uid < hi else msgs[uid].flags)
    if name == "RFC822.SIZE":
        return lambda uid: b"RFC822.SIZE %d" % msgs[uid].size
    if name == "MODSEQ":
        return lambda uid: b"MODSEQ (%d)" % msgs[uid].modseq
    cache = selected.cache

    def header(uid: int) -> Message:
        msg = headers.get(uid)
        return msg if msg is not None else cache.header(uid)

    if name == "ENVELOPE":
        return lambda uid: b"ENVELOPE " + header(uid).envelope()
    section = item.section
    if (section is not None and not section.part and section.text in _HEADER_TEXTS
            and item.partial is None):
        key = item.response_key().encode("latin-1") + b" "
        return lambda uid: key + _literal(header(uid).section(section))
    key = item.response_key().encode("latin-1") + b" " if section is not None else b""
    return lambda uid: _item(selected, uid, item, key)


def sets_seen(item: FetchItem) -> bool:
    """Whether fetching the item sets \\Seen (RFC 3501 §6.4.5)."""
    return item.name in _SETS_SEEN or (item.name == "BODY" and item.section is not None
                                       and not item.peek)


def _item(selected: SelectedMailbox, uid: int, item: FetchItem, key: bytes) -> bytes:
    """One "NAME value" pair of a FETCH response (RFC 3501 §7.4.2); `key` is the
    item's response key and a space, for body sections."""
    name = item.name
    if name in _INDEX_ITEMS:
        m = selected.messages[uid]
        if name == "UID":
            return b"UID %d" % uid
        if name == "FLAGS":
            return b"FLAGS " + flag_list(selected.flags(uid))
        if name == "INTERNALDATE":
            return b"INTERNALDATE " + internaldate(m.internaldate)
        if name == "RFC822.SIZE":
            return b"RFC822.SIZE %d" % m.size
        return b"MODSEQ (%d)" % m.modseq  # RFC 7162 §3.1.4.1
    cache = selected.cache
    if name == "ENVELOPE":
        return b"ENVELOPE " + cache.header(uid).envelope()
    if name == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + cache.message(uid).bodystructure(True)
    if name == "BODY" and item.section is None:
        return b"BODY " + cache.message(uid).bodystructure(False)
    if name == "RFC822":
        return b"RFC822 " + _literal(cache.raw(uid))
    if name == "RFC822.HEADER":
        return b"RFC822.HEADER " + _literal(cache.header(uid).section(_HEADER))
    if name == "RFC822.TEXT":
        return b"RFC822.TEXT " + _literal(cache.message(uid).section(_TEXT))
    section = item.section
    assert section is not None
    data = _section(selected, uid, section)
    if data is not None and item.partial is not None:
        data = partial(data, item.partial[0], item.partial[1])
    return key + _literal(data)


def _section(selected: SelectedMailbox, uid: int, section: Section) -> bytes | None:
    cache = selected.cache
    if not section.part and section.text is None:
        return cache.raw(uid)  # BODY[]: the file as stored
    if not section.part and section.text in _HEADER_TEXTS:
        return cache.header(uid).section(section)
    return cache.message(uid).section(section)


def _literal(data: bytes | None) -> bytes:
    """Body data as a literal (RFC 3501 §4.3), NIL for a part that does not exist."""
    if data is None:
        return b"NIL"
    return b"{%d}\r\n" % len(data) + data
