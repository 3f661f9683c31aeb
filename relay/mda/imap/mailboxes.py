"""Mailbox management commands: CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB,
STATUS, APPEND (RFC 3501 §6.3.3-11), with LIST-EXTENDED (RFC 5258), LIST-STATUS
(RFC 5819), SPECIAL-USE (RFC 6154), CHILDREN (RFC 3348), UIDPLUS APPENDUID (RFC 4315 §3)
and APPENDLIMIT (RFC 7889).

Names arrive decoded from modified UTF-7 (parser) and leave encoded (responses.mailbox);
the hierarchy delimiter is "/". Each function writes untagged responses to `out` and
returns the tagged completion; store errors become RFC 5530 codes (context.store_error).

Blocking: runs in the session's worker thread. Imports: stdlib, relay.mda.model,
relay.mda.imap.{arguments,context,responses,selected}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from relay.mda.imap import arguments
from relay.mda.imap.arguments import Command
from relay.mda.imap.context import Context, store_error
from relay.mda.imap.responses import (
    ALREADY_EXISTS,
    TRY_CREATE,
    Done,
    Transition,
    mailbox,
    no,
    ok,
    sequence_set,
)
from relay.mda.imap.selected import Output
from relay.mda.model import FolderInfo, StoreError

DELIMITER = '"/"'


def _deselect(ctx: Context, out: Output) -> Transition:
    """The selected mailbox is deleted or renamed by this very session: leave the
    selected state and say so (RFC 7162 §3.2.11 / RFC 9051 [CLOSED])."""
    ctx.selected = None
    out.write(b"* OK [CLOSED] Mailbox closed\r\n")
    return Transition.UNSELECTED


def create(ctx: Context, cmd: Command, out: Output) -> Done:
    """CREATE (RFC 3501 §6.3.3): superiors are created too; a trailing delimiter only
    says inferiors will follow, so it is dropped."""
    args = cmd.args
    assert isinstance(args, arguments.Create)
    if args.special_use:
        # RFC 6154 §3: CREATE-SPECIAL-USE is not offered; refuse the attribute.
        return no("Special-use attributes cannot be set", "USEATTR")
    name = args.mailbox.rstrip("/") or args.mailbox
    if name.upper() == "INBOX":
        return ALREADY_EXISTS
    ctx.account.create(name)
    return ok("CREATE completed")


def delete(ctx: Context, cmd: Command, out: Output) -> Done:
    """DELETE (RFC 3501 §6.3.4); a mailbox with inferiors is refused ([HASCHILDREN])."""
    args = cmd.args
    assert isinstance(args, arguments.MailboxName)
    ctx.account.delete(args.mailbox)
    transition = _deselect(ctx, out) if ctx.is_selected(args.mailbox) else None
    return ok("DELETE completed", transition=transition)


def rename(ctx: Context, cmd: Command, out: Output) -> Done:
    """RENAME (RFC 3501 §6.3.5); inferiors follow; renaming INBOX moves its messages."""
    args = cmd.args
    assert isinstance(args, arguments.Rename)
    moves_selected = args.old.upper() != "INBOX" and ctx.is_selected(args.old, inferiors=True)
    ctx.account.rename(args.old, args.new)
    transition = _deselect(ctx, out) if moves_selected else None
    return ok("RENAME completed", transition=transition)


def subscribe(ctx: Context, cmd: Command, out: Output) -> Done:
    """SUBSCRIBE / UNSUBSCRIBE (RFC 3501 §6.3.6-7)."""
    args = cmd.args
    assert isinstance(args, arguments.MailboxName)
    ctx.account.subscribe(args.mailbox, cmd.name == "SUBSCRIBE")
    return ok(f"{cmd.name} completed")


# ---- LIST / LSUB ------------------------------------------------------------------------


def _pattern(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 3501 §6.3.8: the reference and pattern joined; "*" matches anything, "%"
    anything but the delimiter. A leading "INBOX" level is case-insensitive (§5.1)."""
    text = reference + pattern
    head, sep, rest = text.partition("/")
    if head.upper() == "INBOX":
        text = "INBOX" + sep + rest
    out = []
    for ch in text:
        out.append(".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _matches(patterns: list[re.Pattern[str]], name: str) -> bool:
    return any(p.fullmatch(name) for p in patterns)


def _line(command: str, attrs: Iterable[str], name: str, extra: bytes = b"") -> bytes:
    return (f"* {command} (" + " ".join(attrs) + f") {DELIMITER} ").encode() + mailbox(name) \
        + extra + b"\r\n"


def list_mailboxes(ctx: Context, cmd: Command, out: Output) -> Done:
    """LIST (RFC 3501 §6.3.8, RFC 5258 selection and return options) and LSUB (§6.3.9)."""
    q = cmd.args
    assert isinstance(q, arguments.ListQuery)
    if q.patterns == ("",) and not q.selection:
        # RFC 3501 §6.3.8: an empty pattern asks for the delimiter and the root.
        out.write(f"* {cmd.name} (\\Noselect) {DELIMITER} \"\"\r\n".encode())
        return ok(f"{cmd.name} completed")
    patterns = [_pattern(q.reference, p) for p in q.patterns]
    if cmd.name == "LSUB":
        _lsub(ctx, patterns, out)
        return ok("LSUB completed")
    selection, options = set(q.selection), set(q.return_options)
    unknown = selection - {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
    if unknown or ("RECURSIVEMATCH" in selection and len(selection - {"REMOTE"}) == 1):
        # RFC 5258 §3: RECURSIVEMATCH alone, or an unknown option, is a BAD command.
        return Done("BAD", "Invalid LIST selection options")
    if options - {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}:
        return Done("BAD", "Invalid LIST return options")
    folders = {f.name: f for f in ctx.account.folders()}
    subscribed = set(ctx.account.subscriptions())
    only_subscribed = "SUBSCRIBED" in selection
    names = list(folders)
    if only_subscribed:
        names += sorted(subscribed - set(folders))
    for name in names:
        info = folders.get(name)
        is_subscribed = name in subscribed
        childinfo = False
        if only_subscribed and not is_subscribed:
            # RFC 5258 §3.5 RECURSIVEMATCH: a parent of subscribed mailboxes.
            childinfo = "RECURSIVEMATCH" in selection and any(
                s.startswith(name + "/") for s in subscribed)
            if not childinfo:
                continue
        if not _matches(patterns, name):
            continue
        if "SPECIAL-USE" in selection and (info is None or info.special_use is None):
            continue
        attrs = _attributes(info)
        if is_subscribed and (only_subscribed or "SUBSCRIBED" in options):
            attrs.append("\\Subscribed")
        extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if childinfo else b""
        out.write(_line("LIST", attrs, name, extra))
        if "STATUS" in options and info is not None:
            _write_status(ctx, name, q.status_items, out)
    return ok("LIST completed")


def _attributes(info: FolderInfo | None) -> list[str]:
    if info is None:
        return ["\\NonExistent"]  # RFC 5258 §3.4: subscribed but gone
    attrs = ["\\HasChildren" if info.has_children else "\\HasNoChildren"]  # RFC 3348
    if info.special_use:
        attrs.append(info.special_use)  # RFC 6154 §2
    return attrs


def _lsub(ctx: Context, patterns: list[re.Pattern[str]], out: Output) -> None:
    """RFC 3501 §6.3.9: subscribed names; one not selectable (gone, or only a superior of
    a subscribed name when the pattern stops at its level) is \\Noselect."""
    existing = {f.name for f in ctx.account.folders()}
    subscribed = ctx.account.subscriptions()
    seen: set[str] = set()
    for name in subscribed:
        if _matches(patterns, name):
            if name not in seen:
                seen.add(name)
                out.write(_line("LSUB", [] if name in existing else ["\\Noselect"], name))
            continue
        # The pattern stops above `name` ("%"): its matching superior stands in for it.
        levels = name.split("/")
        for i in range(len(levels) - 1, 0, -1):
            parent = "/".join(levels[:i])
            if _matches(patterns, parent):
                if parent not in seen and parent not in subscribed:
                    seen.add(parent)
                    out.write(_line("LSUB", ["\\Noselect"], parent))
                break


# ---- STATUS ---------------------------------------------------------------------------


def status(ctx: Context, cmd: Command, out: Output) -> Done:
    """STATUS (RFC 3501 §6.3.10; HIGHESTMODSEQ RFC 7162 §3.1.6, SIZE RFC 8438, DELETED
    RFC 9051, APPENDLIMIT RFC 7889)."""
    args = cmd.args
    assert isinstance(args, arguments.Status)
    if "HIGHESTMODSEQ" in args.items:
        ctx.enable_condstore(out)
    try:
        _write_status(ctx, args.mailbox, args.items, out)
    except StoreError as exc:
        return store_error(exc)
    return ok("STATUS completed")


def _write_status(ctx: Context, name: str, items: Iterable[str], out: Output) -> None:
    folder = ctx.account.folder(name)
    values = folder.status()
    parts = []
    for item in items:
        if item == "DELETED":
            folder.sync()
            value = sum("\\Deleted" in m.flags for m in folder.messages())
        elif item == "APPENDLIMIT":
            value = ctx.append_limit
        else:
            value = values[item]
        parts.append(f"{item} {value}")
    out.write(b"* STATUS " + mailbox(folder.name) + b" (" + " ".join(parts).encode()
              + b")\r\n")


# ---- APPEND ---------------------------------------------------------------------------


def append(ctx: Context, cmd: Command, out: Output) -> Done:
    """APPEND (RFC 3501 §6.3.11): [APPENDUID uidvalidity uid] (RFC 4315 §3). Several
    messages (RFC 3502 syntax) are appended one after the other. Each is \\Recent: here
    when this session has the mailbox selected (read-write), else for the next session
    to select it."""
    args = cmd.args
    assert isinstance(args, arguments.Append)
    try:
        folder = (ctx.selected.folder if ctx.selected is not None
                  and ctx.is_selected(args.mailbox) else ctx.account.folder(args.mailbox))
    except StoreError:
        return TRY_CREATE  # RFC 3501 §6.3.11
    uids = []
    for message in args.messages:
        if not message.data:
            return no("Cannot append an empty message", "CANNOT")
        if len(message.data) > ctx.append_limit:
            return no("Message too big", "TOOBIG")  # RFC 7889 §4
        when = message.internaldate.timestamp() if message.internaldate else None
        uids.append(folder.append(message.data, message.flags, when))
    return ok("APPEND completed", f"APPENDUID {folder.uidvalidity} {sequence_set(uids)}")
