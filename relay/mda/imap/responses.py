"""IMAP response vocabulary shared by the machine and the command implementations.

`Done` is how a command ends: the tagged status (RFC 3501 §7.1: OK, NO or BAD), a response
code (RFC 3501 §7.1, RFC 5530 and the extensions that define one) and what happens to the
session state afterwards. The constants below are the completions we send more than once,
named for their meaning. The formatting helpers turn values into wire octets: quoted
strings, mailbox names (modified UTF-7, RFC 3501 §5.1.3), flag lists, INTERNALDATE
(RFC 3501 §9 date-time), and compressed sequence sets (RFC 3501 §9 sequence-set).

Imports: stdlib, relay.mda.imap.utf7 (pure; no I/O).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relay.mda.imap import utf7

HIERARCHY_DELIMITER = "/"
# RFC 3501 §2.3.2 system flags, in the order we list them.
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
# \Recent (session state, never in FLAGS or PERMANENTFLAGS) follows them in flag lists.
_SYSTEM_ORDER = {f: i for i, f in enumerate((*SYSTEM_FLAGS, "\\Recent"))}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


class Transition(enum.Enum):
    """The session state after a command (RFC 3501 §3)."""

    SELECTED = "selected"  # SELECT / EXAMINE succeeded
    UNSELECTED = "unselected"  # back to the authenticated state (CLOSE, failed SELECT)
    LOGOUT = "logout"  # a "* BYE" was written: send the tagged line, then close


@dataclass(frozen=True, slots=True)
class Done:
    """The tagged completion of one command: "<tag> <status> [<code>] <text>"."""

    status: str  # "OK", "NO" or "BAD"
    text: str
    code: str | None = None  # without brackets, e.g. "TRYCREATE" or "APPENDUID 3 7"
    transition: Transition | None = None

    def line(self, tag: str) -> bytes:
        return tagged(tag, self.status, self.text, self.code)


def ok(text: str, code: str | None = None, transition: Transition | None = None) -> Done:
    return Done("OK", text, code, transition)


def no(text: str, code: str | None = None, transition: Transition | None = None) -> Done:
    return Done("NO", text, code, transition)


def bad(text: str, code: str | None = None) -> Done:
    return Done("BAD", text, code)


# ---- completions used in several places --------------------------------------------------

# RFC 5530 §3 NONEXISTENT; RFC 3501 §6.3.11 / §6.4.7 TRYCREATE for APPEND and COPY targets.
NO_SUCH_MAILBOX = no("Mailbox does not exist", "NONEXISTENT")
TRY_CREATE = no("Mailbox does not exist", "TRYCREATE")
# RFC 5530 §3 ALREADYEXISTS (CREATE, RENAME target).
ALREADY_EXISTS = no("Mailbox already exists", "ALREADYEXISTS")
# RFC 5530 §3 CANNOT: the name or the operation can never succeed.
CANNOT = no("Invalid mailbox name or operation", "CANNOT")
# RFC 5530 §3 EXPUNGEISSUED: some messages asked for were expunged meanwhile.
EXPUNGE_ISSUED = no("Some messages were expunged", "EXPUNGEISSUED")
# RFC 5530 §3 SERVERBUG: something failed on our side (logged).
SERVER_BUG = no("Internal error, try again later", "SERVERBUG")
READ_ONLY = no("Mailbox is read-only")  # STORE, EXPUNGE, MOVE after EXAMINE
BAD_SEQUENCE = bad("Invalid message sequence number")  # RFC 3501 §9 seq-number


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """One status response line (RFC 3501 §7.1); `tag` "*" for an untagged one."""
    code_part = f"[{code}] " if code else ""
    return f"{tag} {status} {code_part}{_one_line(text)}\r\n".encode("utf-8", "replace")


def _one_line(text: str) -> str:
    """Text from anywhere (store errors, client names) made safe for a response line."""
    return "".join(c if c >= " " and c != "\x7f" else " " for c in text)[:300]


# ---- value formatting -------------------------------------------------------------------


def quoted(text: str | bytes) -> bytes:
    """An IMAP quoted string (RFC 3501 §4.3) of printable text, or a literal when it holds
    CR, LF or 8-bit octets."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if any(b in (0x0A, 0x0D) or b >= 0x80 for b in data):
        return b"{%d}\r\n" % len(data) + data
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def mailbox(name: str) -> bytes:
    """A mailbox name on the wire: modified UTF-7 (RFC 3501 §5.1.3), quoted."""
    return quoted(utf7.encode(name))


_flag_lists: dict[frozenset[str], bytes] = {}


def flag_list(flags: Iterable[str]) -> bytes:
    """"(\\Seen $Label)": system flags first in a fixed order, then keywords sorted."""
    if isinstance(flags, frozenset):
        hit = _flag_lists.get(flags)
        if hit is None:
            hit = _flag_list(flags)
            if len(_flag_lists) < 4096:
                _flag_lists[flags] = hit
        return hit
    return _flag_list(flags)


def _flag_list(flags: Iterable[str]) -> bytes:
    ordered = sorted(flags, key=lambda f: (_SYSTEM_ORDER.get(f, len(_SYSTEM_ORDER)), f))
    return ("(" + " ".join(ordered) + ")").encode("ascii", "replace")


def internaldate(timestamp: float) -> bytes:
    """RFC 3501 §9 date-time in UTC: "17-Jul-1996 09:44:25 +0000" (quoted)."""
    t = dt.datetime.fromtimestamp(int(timestamp), dt.timezone.utc)
    return (f'"{t.day:2d}-{_MONTHS[t.month - 1]}-{t.year:04d} '
            f'{t.hour:02d}:{t.minute:02d}:{t.second:02d} +0000"').encode("ascii")


def sequence_set(numbers: Sequence[int]) -> str:
    """Numbers (in the order given) as a compact sequence-set: [1, 2, 3, 5] -> "1:3,5".
    Runs are only merged when ascending by one, so two sets built from corresponding
    lists still correspond element by element (RFC 4315 §3 COPYUID)."""
    out: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(out)
