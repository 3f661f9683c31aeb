"""The contract shared by the compiled hot path and its pure-Python twin.

Both `*_c.pyx` and `*_py.py` implement exactly what is described here; this module
holds the shared result types, flag bits, limits and exceptions, and nothing that
does I/O. `relay.smtp.replies` maps every `FailureKind` to an SMTP reply.

Imports: stdlib only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
MAX_COMMAND_LINE = 512
# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
MAX_TEXT_LINE = 1000

# DataReader flag bits (a bitmask in DataReader.flags). Mirrored as a cdef enum
# in data_c.pyx; tests/fast checks the values agree.
FLAG_BARE_LF = 1  # an LF not preceded by CR was seen
FLAG_BARE_CR = 2  # a CR not followed by LF was seen
FLAG_LONG_LINE = 4  # a line longer than max_line octets (CRLF included) was seen
FLAG_TOO_BIG = 8  # the unstuffed message exceeded max_size; body stopped growing
FLAG_NUL = 16  # a NUL octet was seen (RFC 5321 §4.5.2 forbids it in text)

# HeaderSummary flag bits.
HDR_MESSAGE_ID = 1  # a Message-ID: field is present
HDR_DATE = 2  # a Date: field is present
HDR_FROM = 4  # a From: field is present


class FailureKind(enum.Enum):
    """Why a command line could not be tokenised; smtp/replies.py maps each to a Reply."""

    EMPTY = "empty"  # nothing but spaces
    BAD_VERB = "bad_verb"  # verb is not 1-16 ASCII letters (or digits after the first)
    BAD_PATH = "bad_path"  # MAIL FROM:/RCPT TO: without a well-formed <path>
    BAD_PARAMETER = "bad_parameter"  # ESMTP parameter not keyword[=value]
    NUL = "nul"  # NUL octet anywhere in the line


class CommandSyntaxError(ValueError):
    """A command line that cannot be tokenised. `kind` says why."""

    def __init__(self, kind: FailureKind) -> None:
        super().__init__(kind.value)
        self.kind = kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CommandSyntaxError) and other.kind is self.kind

    def __hash__(self) -> int:
        return hash(self.kind)


@dataclass(frozen=True, slots=True)
class Command:
    """One tokenised command line.

    verb:   the command verb, ASCII upper-cased (b"MAIL").
    path:   for MAIL and RCPT, the octets between < and > (b"" for the null path <>),
            source route still attached (grammar.py strips it); None for other verbs.
    params: for MAIL and RCPT, ESMTP parameters in order as (KEYWORD upper-cased, value or None).
    arg:    for other verbs, everything after the verb and one or more spaces, trailing
            spaces removed (b"" if none).
    """

    verb: bytes
    path: bytes | None
    params: tuple[tuple[bytes, bytes | None], ...]
    arg: bytes


@dataclass(frozen=True, slots=True)
class HeaderSummary:
    """What intake needs from a message's header section.

    header_end:     offset of the first octet after the header section: just past the empty
                    line that ends it, or the start of the first line that is neither a header
                    field nor a continuation (RFC 5322 §2.2), or len(message) if neither occurs.
    received_count: number of Received: fields (RFC 5321 §6.3 loop detection).
    flags:          HDR_* bits for fields present.
    """

    header_end: int
    received_count: int
    flags: int
