"""IMAP command grammar (RFC 3501 §9 command, RFC 9051 §9): one complete command -> Command.

`CommandGrammar` is a recursive descent over a command whose lines and literals the reader
(parser.CommandReader) has already collected: the tag, the command name (and UID), then the
arguments, by a table of per-command rules (`_COMMANDS`). The rules commands share are its
bases' (tokens, sequence_set, fetch_items, search_keys): mixins, so the per-command path has
no more call layers than one class would. Extensions: LIST-EXTENDED (RFC 5258), LIST-STATUS
(RFC 5819), CREATE-SPECIAL-USE (RFC 6154), MULTIAPPEND (RFC 3502), BINARY (RFC 3516),
CONDSTORE / QRESYNC (RFC 7162), ESEARCH (RFC 4731), SASL-IR (RFC 4959), ID (RFC 2971),
ENABLE (RFC 5161), QUOTA (RFC 9208), MOVE (RFC 6851), UIDPLUS (RFC 4315).

Imports: stdlib only, and
relay.mda.imap.{tokens,sequence_set,fetch_items,search_keys,arguments}. No I/O, no clock.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable

from relay.mda.imap.arguments import (
    Append,
    AppendMessage,
    Authenticate,
    Command,
    Copy,
    Create,
    Enable,
    Expunge,
    Fetch,
    Id,
    ListQuery,
    Login,
    MailboxName,
    QuotaRoot,
    Rename,
    Search,
    Select,
    Status,
    Store,
    StoreMode,
)
from relay.mda.imap.fetch_items import FetchItemGrammar
from relay.mda.imap.search_keys import SearchKey, SearchKeyGrammar
from relay.mda.imap.tokens import MAX_MODSEQ, ErrorKind, GrammarError

MAX_ID_PAIRS = 30  # RFC 2971 §3.3
STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
                          "HIGHESTMODSEQ", "SIZE", "DELETED", "APPENDLIMIT"})
NO_ARGUMENT_COMMANDS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK",
                                  "CLOSE", "UNSELECT", "NAMESPACE", "IDLE"})
UID_COMMANDS = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE"})

_TAG = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\+]+')
_STORE_ITEM = re.compile(rb"[+-]?[A-Za-z.]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=")


class CommandGrammar(SearchKeyGrammar, FetchItemGrammar):
    """Recursive descent over one complete command (RFC 3501 §9)."""

    def command(self) -> Command:
        c = self.c
        tag = c.take(_TAG, "tag").decode("utf-8", "replace")
        c.sp()
        name = self.word("command")
        uid = False
        if name == "UID":
            c.sp()
            name, uid = self.word("command"), True
            if name not in UID_COMMANDS:
                raise GrammarError(f"UID {name} is not a command", ErrorKind.UNKNOWN_COMMAND)
        if name in NO_ARGUMENT_COMMANDS or (name == "EXPUNGE" and not uid):
            args: object = None
        elif name in _COMMANDS:
            args = _COMMANDS[name](self, name, uid)
        else:
            raise GrammarError("unknown command", ErrorKind.UNKNOWN_COMMAND)
        self.end()
        return Command(tag, name, uid, args)

    def login(self, name: str, uid: bool) -> Login:
        self.c.sp()
        user = self.utf8(self.astring(), "user name")
        self.c.sp()
        return Login(user, self.utf8(self.astring(), "password"))

    def authenticate(self, name: str, uid: bool) -> Authenticate:
        self.c.sp()
        mechanism = self.word("SASL mechanism")
        initial = None
        if self.c.peek() == 0x20:  # RFC 4959 §3
            self.c.sp()
            initial = self.c.take(_BASE64, "base64 initial response")
        return Authenticate(mechanism, initial)

    def select(self, name: str, uid: bool) -> Select:
        self.c.sp()
        mailbox = self.mailbox()
        condstore = False
        if self.c.peek() == 0x20:
            self.c.sp()
            for param in self.paren_list(self.word, allow_empty=False):
                if param != "CONDSTORE":
                    raise GrammarError(f"unknown SELECT parameter {param}")
                condstore = True
        return Select(mailbox, condstore)

    def mailbox_only(self, name: str, uid: bool) -> MailboxName:
        self.c.sp()
        return MailboxName(self.mailbox())

    def create(self, name: str, uid: bool) -> Create:
        self.c.sp()
        mailbox = self.mailbox()
        use: tuple[str, ...] = ()
        if self.c.peek() == 0x20:
            self.c.sp()
            self.c.expect(b"(")
            if self.word("CREATE parameter") != "USE":
                raise GrammarError("unknown CREATE parameter")
            self.c.sp()
            use = self.flag_list()
            self.c.expect(b")")
        return Create(mailbox, use)

    def rename(self, name: str, uid: bool) -> Rename:
        self.c.sp()
        old = self.mailbox()
        self.c.sp()
        return Rename(old, self.mailbox())

    def status_items(self) -> tuple[str, ...]:
        items = tuple(self.paren_list(self.word, allow_empty=False))
        for item in items:
            if item not in STATUS_ITEMS:
                raise GrammarError(f"unknown STATUS item {item}")
        return items

    def status(self, name: str, uid: bool) -> Status:
        self.c.sp()
        mailbox = self.mailbox()
        self.c.sp()
        return Status(mailbox, self.status_items())

    def list_command(self, name: str, uid: bool) -> ListQuery:
        c = self.c
        c.sp()
        selection: tuple[str, ...] = ()
        if name == "LIST" and c.peek() == 0x28:  # RFC 5258 §6 list-select-opts
            selection = tuple(self.paren_list(self.word))
            c.sp()
        reference = self.mailbox()
        c.sp()
        if name == "LIST" and c.peek() == 0x28:
            patterns = tuple(self.paren_list(self.list_mailbox, allow_empty=False))
        else:
            patterns = (self.list_mailbox(),)
        options: list[str] = []
        status: tuple[str, ...] = ()
        if name == "LIST" and c.peek() == 0x20:
            c.sp()
            if self.word("RETURN") != "RETURN":
                raise GrammarError("expected RETURN")
            c.sp()

            def option() -> str:
                nonlocal status
                word = self.word("return option")
                if word == "STATUS":  # RFC 5819 §2
                    c.sp()
                    status = self.status_items()
                return word

            options = self.paren_list(option)
        return ListQuery(reference, patterns, selection, tuple(options), status)

    def append(self, name: str, uid: bool) -> Append:
        c = self.c
        c.sp()
        mailbox = self.mailbox()
        messages = []
        while True:
            c.sp()
            flags: tuple[str, ...] = ()
            when = None
            if c.peek() == 0x28:
                flags = self.flag_list()
                c.sp()
            if c.peek() == 0x22:
                when = self.date_time()
                c.sp()
            if not c.at_literal():
                raise GrammarError("expected message literal")
            data, binary = c.literal()
            messages.append(AppendMessage(flags, when, data, binary))
            if c.at_end():
                return Append(mailbox, tuple(messages))

    def fetch(self, name: str, uid: bool) -> Fetch:
        c = self.c
        c.sp()
        sequence = self.sequence_set()
        c.sp()
        if c.peek() == 0x28:
            items = [i for group in self.paren_list(lambda: self.fetch_att(False),
                                                    allow_empty=False) for i in group]
        else:
            items = self.fetch_att(True)
        changedsince = None
        vanished = False

        def modifier() -> None:
            nonlocal changedsince, vanished
            word = self.word("FETCH modifier")
            if word == "CHANGEDSINCE":
                c.sp()
                changedsince = self.number(MAX_MODSEQ)
            elif word == "VANISHED" and uid:
                vanished = True
            else:
                raise GrammarError(f"unknown FETCH modifier {word}")

        if c.peek() == 0x20:  # RFC 7162 §3.1.4.1 / RFC 4466 fetch-modifiers
            c.sp()
            self.paren_list(modifier, allow_empty=False)
        return Fetch(sequence, tuple(items), changedsince, vanished)

    def store(self, name: str, uid: bool) -> Store:
        c = self.c
        c.sp()
        sequence = self.sequence_set()
        c.sp()
        unchangedsince = None
        if c.peek() == 0x28:  # RFC 7162 §3.1.3
            c.expect(b"(")
            if self.word("STORE modifier") != "UNCHANGEDSINCE":
                raise GrammarError("unknown STORE modifier")
            c.sp()
            unchangedsince = self.number(MAX_MODSEQ)
            c.expect(b")")
            c.sp()
        item = c.take(_STORE_ITEM, "store item").decode("ascii").upper()
        base, silent = (item[:-7], True) if item.endswith(".SILENT") else (item, False)
        try:
            mode = StoreMode(base)
        except ValueError:
            raise GrammarError(f"bad store item {item}") from None
        c.sp()
        if c.peek() == 0x28:
            flags = self.flag_list()
        else:
            flags_list = [self.flag()]
            while c.peek() == 0x20:
                c.sp()
                flags_list.append(self.flag())
            flags = tuple(flags_list)
        return Store(sequence, mode, silent, flags, unchangedsince)

    def copy(self, name: str, uid: bool) -> Copy:
        self.c.sp()
        sequence = self.sequence_set()
        self.c.sp()
        return Copy(sequence, self.mailbox())

    def expunge(self, name: str, uid: bool) -> Expunge:
        self.c.sp()
        return Expunge(self.sequence_set())

    def id(self, name: str, uid: bool) -> Id:
        c = self.c
        c.sp()
        if c.peek_word() == "NIL":
            c.pos += 3
            return Id(None)

        def pair() -> tuple[str, str | None]:
            field = self.string()
            c.sp()
            value = self.nstring()
            if len(field) > 30 or (value is not None and len(value) > 1024):  # RFC 2971 §3.3
                raise GrammarError("ID field or value too long")
            return (field.decode("utf-8", "replace"),
                    None if value is None else value.decode("utf-8", "replace"))

        params = self.paren_list(pair)
        if len(params) > MAX_ID_PAIRS:
            raise GrammarError("too many ID parameters")
        return Id(tuple(params))

    def enable(self, name: str, uid: bool) -> Enable:
        caps: list[str] = []
        while self.c.peek() == 0x20 or not caps:
            self.c.sp()
            caps.append(self.word("capability"))
        return Enable(tuple(caps))

    def getquota(self, name: str, uid: bool) -> QuotaRoot:
        self.c.sp()
        return QuotaRoot(self.utf8(self.astring(), "quota root"))

    # -- SEARCH (RFC 3501 §6.4.4) --------------------------------------------------------

    def search(self, name: str, uid: bool) -> Search:
        c = self.c
        c.sp()
        return_options = None
        if c.peek_word() == "RETURN":  # RFC 4731 §3.1
            c.pos += 6
            c.sp()
            return_options = tuple(self.paren_list(self.word))
            c.sp()
        if c.peek_word() == "CHARSET":
            c.pos += 7
            c.sp()
            self.charset = self.astring().decode("latin-1")
            try:
                known = codecs.lookup(self.charset)._is_text_encoding
            except (LookupError, ValueError):
                known = False
            if not known:
                raise GrammarError(f"unsupported charset {self.charset}",
                                   ErrorKind.BAD_CHARSET, "NO", "BADCHARSET (US-ASCII UTF-8)")
            c.sp()
        keys = [self.search_key(0)]
        while c.peek() == 0x20:
            c.sp()
            keys.append(self.search_key(0))
        key = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
        return Search(key, self.charset, return_options)


_COMMANDS: dict[str, Callable[[CommandGrammar, str, bool], object]] = {
    "LOGIN": CommandGrammar.login,
    "AUTHENTICATE": CommandGrammar.authenticate,
    "SELECT": CommandGrammar.select,
    "EXAMINE": CommandGrammar.select,
    "CREATE": CommandGrammar.create,
    "DELETE": CommandGrammar.mailbox_only,
    "SUBSCRIBE": CommandGrammar.mailbox_only,
    "UNSUBSCRIBE": CommandGrammar.mailbox_only,
    "GETQUOTAROOT": CommandGrammar.mailbox_only,
    "GETQUOTA": CommandGrammar.getquota,
    "RENAME": CommandGrammar.rename,
    "STATUS": CommandGrammar.status,
    "LIST": CommandGrammar.list_command,
    "LSUB": CommandGrammar.list_command,
    "APPEND": CommandGrammar.append,
    "FETCH": CommandGrammar.fetch,
    "STORE": CommandGrammar.store,
    "COPY": CommandGrammar.copy,
    "MOVE": CommandGrammar.copy,
    "SEARCH": CommandGrammar.search,
    "EXPUNGE": CommandGrammar.expunge,  # UID EXPUNGE; plain EXPUNGE takes no arguments
    "ID": CommandGrammar.id,
    "ENABLE": CommandGrammar.enable,
}
KNOWN_COMMANDS = frozenset(_COMMANDS) | NO_ARGUMENT_COMMANDS | {"UID"}

# The Command.args type of each command (for the session's dispatch table and its tests).
COMMAND_ARGS: dict[str, type | None] = {
    **{name: None for name in NO_ARGUMENT_COMMANDS},
    "LOGIN": Login, "AUTHENTICATE": Authenticate, "SELECT": Select, "EXAMINE": Select,
    "CREATE": Create, "DELETE": MailboxName, "SUBSCRIBE": MailboxName,
    "UNSUBSCRIBE": MailboxName, "GETQUOTAROOT": MailboxName, "GETQUOTA": QuotaRoot,
    "RENAME": Rename, "STATUS": Status, "LIST": ListQuery, "LSUB": ListQuery,
    "APPEND": Append, "FETCH": Fetch, "STORE": Store, "COPY": Copy, "MOVE": Copy,
    "SEARCH": Search, "EXPUNGE": Expunge, "ID": Id, "ENABLE": Enable, "DONE": None,
}
