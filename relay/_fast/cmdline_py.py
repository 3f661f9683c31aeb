"""parse_command, pure Python: the readable twin and the specification of cmdline_c.pyx.

Tokenises one SMTP command line (RFC 5321 §4.1.1, §4.1.2) into a spec.Command: verb,
MAIL/RCPT path and ESMTP parameters, or the argument of any other verb. It checks
syntax only; which verbs exist and what a path may contain are for the SMTP machine
and smtp/grammar.py. Imports: stdlib and relay._fast.spec only. Does no I/O.

Rules, in order (`line` is one command line without its CRLF):

1. A NUL octet anywhere: FailureKind.NUL.
2. Trailing SP and HTAB are removed. If nothing remains: EMPTY.
3. The verb is the octets up to the first SP (or the end). It must be an ASCII letter
   followed by 0-15 ASCII letters or digits, else BAD_VERB (so a leading SP is
   BAD_VERB). It is returned upper-cased.
4. MAIL and RCPT (§4.1.1.2, §4.1.1.3): after one or more SP comes, case-insensitively,
   "FROM:" (MAIL) or "TO:" (RCPT), then zero or more SP (leniency as in Postfix), then
   "<", else BAD_PATH. The path runs to the matching ">": inside a quoted string
   ("..." in which backslash quotes the next octet, §4.1.2 Quoted-string) a ">" does
   not end it. No closing ">": BAD_PATH. The path is the octets strictly between "<"
   and ">" (b"" for the null path "<>"); 8-bit octets are allowed (RFC 6531).
   After ">" comes the end of the line, or one or more SP and then parameters
   separated by one or more SP; any other octet after ">" is BAD_PATH.
   Each parameter is esmtp-keyword ["=" esmtp-value] (§4.1.2): the keyword is an
   ASCII letter or digit followed by letters, digits or "-"; the value is one or more
   octets that are neither SP, "=" nor control (< 33 or 127), 8-bit octets allowed
   (RFC 6531 §3.3). Anything else is BAD_PARAMETER. Keywords are returned upper-cased,
   values as they are (None when there is no "="). arg is b"".
5. Any other verb: path None, params (), arg = the rest of the line after the verb and
   the run of SP that follows it (b"" if none), as is.
"""

from __future__ import annotations

from relay._fast.spec import Command, CommandSyntaxError, FailureKind

__all__ = ["parse_command"]

_SP = 0x20
_HTAB = 0x09
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ALNUM = _LETTERS | frozenset(b"0123456789")
_KEYWORD_TAIL = _ALNUM | frozenset(b"-")
_MAX_VERB = 16


def parse_command(line: bytes) -> Command:
    """Tokenise one command line (CRLF already removed) by the rules above.

    Args:
        line: the command line octets.

    Returns:
        The tokenised Command.

    Raises:
        CommandSyntaxError: with the FailureKind of the first rule broken.
        TypeError: `line` is not bytes.
    """
    if not isinstance(line, bytes):
        raise TypeError("parse_command() argument must be bytes")
    # Rule 1: no production of RFC 5321 §4.1 admits NUL; refuse it before anything else.
    if b"\x00" in line:
        raise CommandSyntaxError(FailureKind.NUL)
    # Rule 2: trailing white space is tolerated (many clients send it).
    line = line.rstrip(b" \t")
    if not line:
        raise CommandSyntaxError(FailureKind.EMPTY)
    # Rule 3: §4.1.1 verbs are alphabetic; we allow digits after the first octet.
    sp = line.find(b" ")
    verb = line if sp < 0 else line[:sp]
    if not _is_verb(verb):
        raise CommandSyntaxError(FailureKind.BAD_VERB)
    verb = verb.upper()
    rest = len(line) if sp < 0 else _skip_sp(line, sp)
    if verb == b"MAIL":
        path, params = _path_and_params(line, sp, rest, b"FROM:")
        return Command(verb, path, params, b"")
    if verb == b"RCPT":
        path, params = _path_and_params(line, sp, rest, b"TO:")
        return Command(verb, path, params, b"")
    # Rule 5.
    return Command(verb, None, (), line[rest:])


def _is_verb(verb: bytes) -> bool:
    return (
        1 <= len(verb) <= _MAX_VERB
        and verb[0] in _LETTERS
        and all(c in _ALNUM for c in verb[1:])
    )


def _skip_sp(line: bytes, i: int) -> int:
    """Index of the first non-SP octet at or after i (len(line) if none)."""
    while i < len(line) and line[i] == _SP:
        i += 1
    return i


def _path_and_params(
    line: bytes, sp: int, i: int, prefix: bytes
) -> tuple[bytes, tuple[tuple[bytes, bytes | None], ...]]:
    """Rule 4: `prefix` ("FROM:"/"TO:") at i, after the SP run that starts at sp."""
    # §4.1.1.2 "MAIL FROM:" / §4.1.1.3 "RCPT TO:", case-insensitive (§2.4).
    if sp < 0 or line[i : i + len(prefix)].upper() != prefix:
        raise CommandSyntaxError(FailureKind.BAD_PATH)
    i = _skip_sp(line, i + len(prefix))
    if i >= len(line) or line[i] != ord("<"):
        raise CommandSyntaxError(FailureKind.BAD_PATH)
    end = _path_end(line, i + 1)
    path = line[i + 1 : end]
    i = end + 1
    if i == len(line):
        return path, ()
    if line[i] != _SP:
        raise CommandSyntaxError(FailureKind.BAD_PATH)
    # Trailing SP was stripped, so at least one parameter follows the SP run.
    params = tuple(_parameter(p) for p in line[i:].split(b" ") if p)
    return path, params


def _path_end(line: bytes, i: int) -> int:
    """Index of the ">" that closes a path whose first octet is at i."""
    quoted = False
    while i < len(line):
        c = line[i]
        if quoted:
            if c == ord("\\"):
                # §4.1.2 quoted-pairSMTP: backslash quotes the next octet.
                i += 2
                continue
            if c == ord('"'):
                quoted = False
        elif c == ord('"'):
            quoted = True
        elif c == ord(">"):
            return i
        i += 1
    raise CommandSyntaxError(FailureKind.BAD_PATH)


def _parameter(param: bytes) -> tuple[bytes, bytes | None]:
    """§4.1.2 esmtp-param = esmtp-keyword ["=" esmtp-value]."""
    keyword, eq, value = param.partition(b"=")
    if (
        not keyword
        or keyword[0] not in _ALNUM
        or not all(c in _KEYWORD_TAIL for c in keyword[1:])
    ):
        raise CommandSyntaxError(FailureKind.BAD_PARAMETER)
    if not eq:
        return keyword.upper(), None
    # esmtp-value = 1*(%d33-60 / %d62-126), widened to 8-bit by RFC 6531 §3.3.
    if not value or any(c < 33 or c == 127 or c == ord("=") for c in value):
        raise CommandSyntaxError(FailureKind.BAD_PARAMETER)
    return keyword.upper(), value
