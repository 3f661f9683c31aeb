"""Command execution: the IMAP commands that touch the mailbox store, as a table.

`execute(ctx, command, out)` runs one parsed command (arguments.Command) the machine handed
out as an Execute event, writes its untagged responses to `out`, then, with a mailbox
selected, syncs it and writes the updates (RFC 3501 §7: EXISTS, EXPUNGE where §7.4.1
allows, FETCH FLAGS) and returns the tagged completion (responses.Done). `poll(ctx, out)`
is the same sync alone, for IDLE (RFC 2177). `inline(ctx, command)` says whether a
command may run on the event loop rather than in a worker thread (see there).

The table maps command names to implementations grouped by topic: the selected-state
basics here (SELECT, EXAMINE, CLOSE, UNSELECT, CHECK, NOOP, ENABLE), mailbox management in
mailboxes.py, FETCH in fetch.py, STORE/COPY/MOVE/EXPUNGE/SEARCH in messages.py. The machine
has already checked each command's state and syntax.

Blocking (files, fsync, LMDB): the session calls this from a worker thread, except for
the commands inline() admits, which touch nothing that waits on a disk.
Trust: arguments come from an authenticated client and name only its own account's
mailboxes (store.Account validates names); failures become NO/BAD, never exceptions,
except OSError from a broken disk, which is logged and answered [SERVERBUG].
Imports: stdlib, relay.mda.model, relay.mda.imap.*.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from relay.mda.imap import arguments, fetch, mailboxes, messages
from relay.mda.imap.arguments import Command
from relay.mda.imap.context import Context, store_error
from relay.mda.imap.responses import (
    BAD_SEQUENCE,
    SERVER_BUG,
    Done,
    Transition,
    bad,
    no,
    ok,
)
from relay.mda.imap.search_keys import SearchKey
from relay.mda.imap.selected import BadSequence, MailboxGone, Output, SelectedMailbox
from relay.mda.model import StoreError

log = logging.getLogger("relay.imap")

# RFC 3501 §7.4.1: no EXPUNGE while answering these (their UID forms are fine).
_NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH"})
# RFC 5161 §4: extensions ENABLE can turn on here.
_ENABLEABLE = ("CONDSTORE",)

Handler = Callable[[Context, Command, Output], Done]


def execute(ctx: Context, command: Command, out: Output) -> Done:
    """Run `command`, write its untagged responses and the mailbox updates to `out`, and
    return its tagged completion."""
    handler = HANDLERS.get(command.name)
    if handler is None:
        return bad("Command not supported")
    try:
        done = handler(ctx, command, out)
    except BadSequence as exc:
        done = bad(str(exc)) if str(exc) else BAD_SEQUENCE
    except MailboxGone:
        return _gone(ctx, out)
    except StoreError as exc:
        done = store_error(exc)
    except OSError:
        log.exception("imap %s %s failed", ctx.account.address, command.name)
        done = SERVER_BUG
    if ctx.selected is not None and done.transition is None:
        allow = command.uid or command.name not in _NO_EXPUNGE
        ctx.selected.cache.release()
        try:
            ctx.selected.updates(out, allow_expunge=allow, condstore=ctx.condstore)
        except MailboxGone:
            return _gone(ctx, out)
    return done


# What inline() lets run on the event loop: the thread hand-off costs about as much as a
# small command itself, so commands answered from memory run where they arrive.
INLINE_FETCH_MAX = 1000  # messages of a FETCH of index items or cached headers
INLINE_BODY_MAX = 64  # messages of a FETCH of cached whole messages
INLINE_STORE_MAX = 64  # messages of a STORE (one rename each)
INLINE_SEARCH_MAX = 20000  # messages in a mailbox SEARCHed inline
_SYSTEM_LOWER = frozenset(f.lower() for f in ("\\Answered", "\\Deleted", "\\Draft",
                                              "\\Flagged", "\\Seen", "$Forwarded", "\\Recent"))
_INDEX_FETCH = frozenset({"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ", "BINARY",
                          "BINARY.SIZE"})
_INDEX_SEARCH = frozenset({
    "ALL", "ANSWERED", "UNANSWERED", "DELETED", "UNDELETED", "DRAFT", "UNDRAFT", "FLAGGED",
    "UNFLAGGED", "SEEN", "UNSEEN", "RECENT", "OLD", "NEW", "KEYWORD", "UNKEYWORD", "LARGER",
    "SMALLER", "SEQ", "UID", "MODSEQ", "BEFORE", "ON", "SINCE", "OLDER", "YOUNGER"})
_COLUMN_SEARCH = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}


def inline(ctx: Context, command: Command) -> bool:
    """Whether `command` may run on the event loop: it needs only what is in memory and
    the index (which is current: no scan), or, for STORE of system flags, a few renames
    and an index commit that is not flushed (so nothing waits on a disk; the write lock
    of another process is held for as short). False in doubt: the worker thread is
    always right. Costs a few stat()s and one index read."""
    try:
        return _inline(ctx, command)
    except (StoreError, BadSequence, MailboxGone, OSError):
        return False


def _inline(ctx: Context, command: Command) -> bool:
    name, args, selected = command.name, command.args, ctx.selected
    if name in ("NOOP", "CHECK"):
        return selected is None or selected.folder.fresh()
    if name in ("SELECT", "EXAMINE"):
        assert isinstance(args, arguments.Select)
        return ctx.account.fresh(args.mailbox, claim_recent=name == "SELECT")
    if selected is None:
        return False
    if name == "FETCH":
        assert isinstance(args, arguments.Fetch)
        targets = selected.resolve(args.sequence, command.uid)
        if len(targets) > INLINE_FETCH_MAX:
            return False
        uids = [u for _, u in targets]
        head = whole = False
        for item in args.items:
            if item.name in _INDEX_FETCH:
                continue
            if fetch.sets_seen(item) and not selected.readonly:
                return False  # a STORE of \Seen first
            if fetch.header_only(item):
                head = True
            else:
                whole = True
        cache = selected.cache
        if whole and (len(uids) > INLINE_BODY_MAX or not cache.has_messages(uids)):
            return False
        if head and not whole and not cache.has_headers(uids):
            return False
        return selected.folder.fresh()
    if name == "SEARCH":
        assert isinstance(args, arguments.Search)
        fields: set[str] = set()
        if selected.exists > INLINE_SEARCH_MAX or not _search_inline(args.key, fields):
            return False
        if fields and not selected.cache.has_columns(selected.uids, fields):
            return False
        return selected.folder.fresh()
    if name == "STORE":
        assert isinstance(args, arguments.Store)
        if selected.readonly:
            return True  # refused at once
        if args.mode is arguments.StoreMode.REPLACE:  # may drop keywords: a flushed commit
            return False
        if not all(f.lower() in _SYSTEM_LOWER for f in args.flags):
            return False  # keywords live only in the index: a flushed commit
        if len(selected.resolve(args.sequence, command.uid)) > INLINE_STORE_MAX:
            return False
        folder = selected.folder
        return folder.quick_flag_change() and folder.fresh()
    return False


def _search_inline(key: SearchKey, fields: set[str]) -> bool:
    """Whether a SEARCH program reads only the index and header columns (those it reads
    are added to `fields`)."""
    name = key.name
    if name in ("AND", "OR", "NOT"):
        return all(_search_inline(k, fields) for k in key.args  # type: ignore[arg-type]
                   if isinstance(k, SearchKey))
    if name in _COLUMN_SEARCH:
        fields.add(_COLUMN_SEARCH[name])
        return True
    return name in _INDEX_SEARCH


def poll(ctx: Context, out: Output) -> Done | None:
    """IDLE (RFC 2177 §3): write what changed in the selected mailbox since the last
    look. Returns a Done with Transition.LOGOUT when the mailbox went away."""
    if ctx.selected is None:
        return None
    try:
        ctx.selected.updates(out, allow_expunge=True, condstore=ctx.condstore)
    except MailboxGone:
        return _gone(ctx, out)
    return None


def _gone(ctx: Context, out: Output) -> Done:
    """The selected mailbox was deleted or renamed by another session: the numbering the
    client holds means nothing any more, so the session ends (RFC 3501 §7.1.5 BYE)."""
    ctx.selected = None
    out.write(b"* BYE Selected mailbox was deleted or renamed\r\n")
    return no("Selected mailbox no longer exists", "NONEXISTENT", Transition.LOGOUT)


# ---- the selected state (RFC 3501 §6.3.1, §6.3.2, §6.4.1-2, RFC 3691, RFC 5161) ---------


def select(ctx: Context, cmd: Command, out: Output) -> Done:
    """SELECT / EXAMINE: FLAGS, EXISTS, RECENT, then UNSEEN, UIDVALIDITY, UIDNEXT,
    PERMANENTFLAGS and HIGHESTMODSEQ (RFC 7162 §3.1.2.1) as OK response codes. SELECT
    claims the \\Recent messages, EXAMINE only counts them (RFC 3501 §6.3.1-2)."""
    args = cmd.args
    assert isinstance(args, arguments.Select)
    readonly = cmd.name == "EXAMINE"
    if ctx.selected is not None:
        # RFC 3501 §6.3.1: selecting deselects first, even if the new SELECT fails;
        # RFC 7162 §3.2.11 (and RFC 9051) tell the client with [CLOSED].
        ctx.selected = None
        out.write(b"* OK [CLOSED] Previous mailbox closed\r\n")
    if args.condstore:
        ctx.condstore = True  # RFC 7162 §3.1.8 SELECT (CONDSTORE)
    try:
        selected = SelectedMailbox(ctx.account.folder(args.mailbox), readonly)
        selected.open()
    except (StoreError, MailboxGone):
        return no("Mailbox does not exist", "NONEXISTENT", Transition.UNSELECTED)
    folder = selected.folder
    selected.write_flags(out)
    out.write(b"* %d EXISTS\r\n* %d RECENT\r\n" % (selected.exists, selected.recent_told))
    unseen = selected.first_unseen()
    if unseen is not None:
        out.write(b"* OK [UNSEEN %d] First unseen\r\n" % unseen)
    out.write(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % folder.uidvalidity)
    out.write(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % folder.uidnext)
    out.write(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % folder.highestmodseq)
    ctx.selected = selected
    return ok(f"{cmd.name} completed", "READ-ONLY" if readonly else "READ-WRITE",
              Transition.SELECTED)


def close(ctx: Context, cmd: Command, out: Output) -> Done:
    """CLOSE (RFC 3501 §6.4.2): expunge silently when read-write, then deselect.
    UNSELECT (RFC 3691): deselect without expunging."""
    selected = ctx.selected
    assert selected is not None
    ctx.selected = None
    if cmd.name == "CLOSE" and not selected.readonly:
        try:
            selected.folder.expunge()
        except StoreError:
            pass  # the mailbox is gone: nothing left to expunge
    return ok(f"{cmd.name} completed", transition=Transition.UNSELECTED)


def noop(ctx: Context, cmd: Command, out: Output) -> Done:
    """NOOP (RFC 3501 §6.1.2), CHECK (§6.4.1): our writes are already durable, so both
    only report updates (done by execute())."""
    return ok(f"{cmd.name} completed")


def enable(ctx: Context, cmd: Command, out: Output) -> Done:
    """ENABLE (RFC 5161 §3.1): turn on what we support, list it in ENABLED."""
    args = cmd.args
    assert isinstance(args, arguments.Enable)
    enabled = [c for c in _ENABLEABLE if c in args.capabilities]
    if "CONDSTORE" in enabled:
        ctx.enable_condstore(out)
    out.write(("* ENABLED " + " ".join(enabled)).rstrip().encode() + b"\r\n")
    return ok("ENABLE completed")


HANDLERS: dict[str, Handler] = {
    "SELECT": select,
    "EXAMINE": select,
    "CLOSE": close,
    "UNSELECT": close,
    "NOOP": noop,
    "CHECK": noop,
    "ENABLE": enable,
    "CREATE": mailboxes.create,
    "DELETE": mailboxes.delete,
    "RENAME": mailboxes.rename,
    "SUBSCRIBE": mailboxes.subscribe,
    "UNSUBSCRIBE": mailboxes.subscribe,
    "LIST": mailboxes.list_mailboxes,
    "LSUB": mailboxes.list_mailboxes,
    "STATUS": mailboxes.status,
    "APPEND": mailboxes.append,
    "FETCH": fetch.fetch,
    "STORE": messages.store,
    "COPY": messages.copy,
    "MOVE": messages.copy,
    "EXPUNGE": messages.expunge,
    "SEARCH": messages.search,
}
