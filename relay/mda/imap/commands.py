"""Command execution: the IMAP commands that touch the mailbox store, as a table.

`execute(ctx, command, out)` runs one parsed command (parser.Command) the machine handed
out as an Execute event, writes its untagged responses to `out`, then, with a mailbox
selected, syncs it and writes the updates (RFC 3501 §7: EXISTS, EXPUNGE where §7.4.1
allows, FETCH FLAGS) and returns the tagged completion (responses.Done). `poll(ctx, out)`
is the same sync alone, for IDLE (RFC 2177).

The table maps command names to implementations grouped by topic: the selected-state
basics here (SELECT, EXAMINE, CLOSE, UNSELECT, CHECK, NOOP, ENABLE), mailbox management in
mailboxes.py, FETCH in fetch.py, STORE/COPY/MOVE/EXPUNGE/SEARCH in messages.py. The machine
has already checked each command's state and syntax.

Blocking (files, fsync, LMDB): the session calls this from a worker thread.
Trust: arguments come from an authenticated client and name only its own account's
mailboxes (store.Account validates names); failures become NO/BAD, never exceptions,
except OSError from a broken disk, which is logged and answered [SERVERBUG].
Imports: stdlib, relay.mda.store, relay.mda.imap.*.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from relay.mda.imap import fetch, mailboxes, messages, parser
from relay.mda.imap.context import Context, store_error
from relay.mda.imap.parser import Command
from relay.mda.imap.responses import (
    BAD_SEQUENCE,
    SERVER_BUG,
    Done,
    Transition,
    bad,
    no,
    ok,
)
from relay.mda.imap.selected import BadSequence, MailboxGone, Output, SelectedMailbox
from relay.mda.store import StoreError

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
    PERMANENTFLAGS and HIGHESTMODSEQ (RFC 7162 §3.1.2.1) as OK response codes."""
    args = cmd.args
    assert isinstance(args, parser.Select)
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
    out.write(b"* %d EXISTS\r\n* 0 RECENT\r\n" % selected.exists)
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
    assert isinstance(args, parser.Enable)
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
