"""Commands on the selected mailbox's messages: STORE (RFC 3501 §6.4.6; UNCHANGEDSINCE
RFC 7162 §3.1.3), COPY (§6.4.7; COPYUID RFC 4315 §3), MOVE (RFC 6851), EXPUNGE (§6.4.3;
UID EXPUNGE RFC 4315 §2.1) and SEARCH (§6.4.4; ESEARCH RFC 4731; MODSEQ RFC 7162 §3.1.5),
each also in its UID form (§6.4.8).

Sequence numbers are resolved against what the client was told (selected.SelectedMailbox);
EXPUNGE responses renumber as they go (RFC 3501 §7.4.1). SEARCH compiles its program
once (search.compile_program) and runs it over the view, header fields coming from the
folder's decoded columns (MessageCache.columns), so a SEARCH FROM reads no file once the
process has seen the headers.

Blocking: runs in the session's worker thread (STORE of system flags and SEARCH from
memory also on the event loop: commands.inline). Imports: stdlib, relay.mda.model,
relay.mda.imap.{arguments,context,responses,search,search_keys,selected,sequence_set}.
"""

from __future__ import annotations

import datetime as dt

from relay.mda.imap import arguments
from relay.mda.imap.arguments import Command
from relay.mda.imap.context import Context
from relay.mda.imap.message import Message
from relay.mda.imap.responses import (
    EXPUNGE_ISSUED,
    READ_ONLY,
    TRY_CREATE,
    Done,
    bad,
    ok,
    sequence_set,
)
from relay.mda.imap.search import compile_program
from relay.mda.imap.search_keys import SearchKey
from relay.mda.imap.selected import Output, SelectedMailbox
from relay.mda.imap.sequence_set import SequenceSet
from relay.mda.model import StoreError

_MODES = {arguments.StoreMode.ADD: "+", arguments.StoreMode.REMOVE: "-",
          arguments.StoreMode.REPLACE: "="}
_ESEARCH_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT"})
_EMPTY = Message(b"")


def store(ctx: Context, cmd: Command, out: Output) -> Done:
    """STORE: change flags, then report each message's flags (unless .SILENT)."""
    selected, args = _selected(ctx), cmd.args
    assert isinstance(args, arguments.Store)
    if selected.readonly:
        return READ_ONLY
    targets = selected.resolve(args.sequence, cmd.uid)
    modified: list[int] = []
    if args.unchangedsince is not None:
        ctx.enable_condstore(out)
        # RFC 7162 §3.1.3: messages changed since the client's MODSEQ are left alone and
        # named in [MODIFIED].
        kept = []
        for seq, uid in targets:
            if selected.messages[uid].modseq > args.unchangedsince:
                modified.append(uid if cmd.uid else seq)
            else:
                kept.append((seq, uid))
        targets = kept
    changed = selected.store([u for _, u in targets], args.flags, _MODES[args.mode])
    selected.note_keywords(out, changed)
    if not args.silent:
        for _, uid in targets:
            if uid not in selected.pending_expunges:
                selected.write_flags_fetch(uid, out, with_uid=cmd.uid, modseq=ctx.condstore)
    if modified:
        return ok("Conditional STORE failed", f"MODIFIED {sequence_set(sorted(modified))}")
    return ok("STORE completed")


def copy(ctx: Context, cmd: Command, out: Output) -> Done:
    """COPY / MOVE. The target must exist ([TRYCREATE]); [COPYUID] names the new UIDs.
    MOVE reports COPYUID in an untagged OK, then expunges the sources (RFC 6851 §4.3).
    The copies are \\Recent (RFC 3501 §6.4.7): here when this session has the target
    selected (read-write), else for the next session to select it."""
    selected, args = _selected(ctx), cmd.args
    assert isinstance(args, arguments.Copy)
    move = cmd.name == "MOVE"
    if move and selected.readonly:
        return READ_ONLY
    uids = [u for _, u in selected.resolve(args.sequence, cmd.uid)]
    if any(u in selected.pending_expunges for u in uids):
        return EXPUNGE_ISSUED  # RFC 5530: some are gone; copy none of them
    try:
        target = (selected.folder if ctx.is_selected(args.mailbox)
                  else ctx.account.folder(args.mailbox))
    except StoreError:
        return TRY_CREATE  # RFC 3501 §6.4.7
    if not uids:
        return ok(f"{cmd.name} completed")
    before = selected.uids  # the numbering the client has (the Folder drops moved ones)
    pairs = (selected.folder.move if move else selected.folder.copy)(uids, target)
    code = None
    if pairs:
        code = (f"COPYUID {target.uidvalidity} {sequence_set([s for s, _ in pairs])} "
                f"{sequence_set([d for _, d in pairs])}")
    if not move:
        return ok("COPY completed", code)
    if code:
        out.write(f"* OK [{code}] Moved\r\n".encode())
    selected.expunged([s for s, _ in pairs], out, before)
    return ok("MOVE completed")


def expunge(ctx: Context, cmd: Command, out: Output) -> Done:
    """EXPUNGE: remove the \\Deleted messages (UID EXPUNGE: only those in the set)."""
    selected, args = _selected(ctx), cmd.args
    if selected.readonly:
        return READ_ONLY
    uids = None
    if cmd.uid:
        assert isinstance(args, arguments.Expunge) and args.sequence is not None
        uids = [u for _, u in selected.resolve(args.sequence, True)]
    before = selected.uids
    selected.expunged(selected.folder.expunge(uids), out, before)
    return ok("EXPUNGE completed")


def search(ctx: Context, cmd: Command, out: Output) -> Done:
    """SEARCH: "* SEARCH n ..." (or "* ESEARCH" when RETURN options were given)."""
    selected, args = _selected(ctx), cmd.args
    assert isinstance(args, arguments.Search)
    if _uses_saved(args.key):
        return bad("$ needs SEARCHRES, which is not supported")  # RFC 5182
    options = set(args.return_options or ())
    if options - _ESEARCH_OPTIONS:
        return bad("Unsupported SEARCH return option")
    with_modseq = _uses_modseq(args.key)
    if with_modseq:
        ctx.enable_condstore(out)
    found, highest = _run(ctx, selected, args.key, cmd.uid)
    if args.return_options is not None:
        out.write(_esearch(cmd.tag, cmd.uid, options or {"ALL"}, found,
                           highest if with_modseq else None))
        return ok("SEARCH completed")
    line = b"* SEARCH" + b"".join(b" %d" % n for n in found)
    if with_modseq and found:
        line += b" (MODSEQ %d)" % highest  # RFC 7162 §3.1.5
    out.write(line + b"\r\n")
    return ok("SEARCH completed")


def _run(ctx: Context, selected: SelectedMailbox, key: SearchKey,
         uid: bool) -> tuple[list[int], int]:
    """Numbers (UIDs when `uid`) of the matching messages, and their highest MODSEQ."""
    now = dt.datetime.fromtimestamp(ctx.clock(), dt.timezone.utc)
    uids = selected.uids
    msgs = selected.messages
    program = compile_program(key, now, last_seq=len(uids),
                              last_uid=uids[-1] if uids else 0,
                              recent=selected.folder.recent.__contains__)
    source = _Source(selected, program.fields)
    test = program.test
    if uid:
        found = [u for seq, u in enumerate(uids, 1) if test(seq, u, msgs[u], source)]
        highest = max((msgs[u].modseq for u in found), default=0)
    else:
        found = [seq for seq, u in enumerate(uids, 1) if test(seq, u, msgs[u], source)]
        highest = max((msgs[uids[n - 1]].modseq for n in found), default=0)
    return found, highest


class _Source:
    """What a SEARCH program reads beyond the index, from the session's MessageCache;
    a message expunged meanwhile (no longer readable) matches no text."""

    def __init__(self, selected: SelectedMailbox, fields: frozenset[str]) -> None:
        self.cache = selected.cache
        self.columns = self.cache.columns(list(selected.uids), fields) if fields else {}
        self._last: tuple[int, tuple[str, str]] | None = None

    def values(self, uid: int, field: str) -> tuple[str, ...]:
        entry = self.columns.get(uid)
        if entry is None:
            return ()
        return entry.get(field, ())

    def header(self, uid: int) -> Message:
        try:
            return self.cache.header(uid)
        except KeyError:
            return _EMPTY

    def texts(self, uid: int) -> tuple[str, str]:
        if self._last is not None and self._last[0] == uid:
            return self._last[1]
        try:
            msg = self.cache.message(uid)
        except KeyError:
            msg = _EMPTY
        out = (msg.header_text().casefold(), msg.body_text().casefold())
        self._last = (uid, out)
        return out


def _esearch(tag: str, uid: bool, options: set[str], found: list[int],
             modseq: int | None) -> bytes:
    """RFC 4731 §3.1 ESEARCH response."""
    parts = [b'* ESEARCH (TAG "' + tag.encode("utf-8", "replace").replace(b'"', b"")
             + b'")']
    if uid:
        parts.append(b"UID")
    if found and "MIN" in options:
        parts.append(b"MIN %d" % min(found))
    if found and "MAX" in options:
        parts.append(b"MAX %d" % max(found))
    if found and "ALL" in options:
        parts.append(b"ALL " + sequence_set(sorted(found)).encode())
    if "COUNT" in options:
        parts.append(b"COUNT %d" % len(found))
    if modseq is not None and found:
        parts.append(b"MODSEQ %d" % modseq)  # RFC 7162 §3.2.5
    return b" ".join(parts) + b"\r\n"


def _selected(ctx: Context) -> SelectedMailbox:
    assert ctx.selected is not None
    return ctx.selected


def _uses_saved(key: SearchKey) -> bool:
    return any(isinstance(a, SequenceSet) and a.saved or isinstance(a, SearchKey)
               and _uses_saved(a) for a in key.args)


def _uses_modseq(key: SearchKey) -> bool:
    return key.name == "MODSEQ" or any(isinstance(a, SearchKey) and _uses_modseq(a)
                                       for a in key.args)
