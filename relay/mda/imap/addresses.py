"""RFC 5322 §3.4 address lists, parsed leniently into RFC 3501 §7.4.2 ENVELOPE address
tuples (mailboxes, group markers, obsolete routes).

Display names keep their encoded words: IMAP clients decode them.

Imports: stdlib only.
"""

from __future__ import annotations

_ADDR_SPECIALS = frozenset('()<>[]:;@\\,."')

# (name, adl, mailbox, host) as in RFC 3501 §7.4.2; a group is opened by
# (None, None, group name, None) and closed by (None, None, None, None).
Address = tuple[str | None, str | None, str | None, str | None]


class _Token:
    __slots__ = ("kind", "text", "space")

    def __init__(self, kind: str, text: str, space: bool) -> None:
        self.kind = kind  # "atom", "qs", "comment", "dlit", or the special character itself
        self.text = text
        self.space = space  # whitespace came before it


def _lex_addresses(text: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(text)
    space = False
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            space = True
            i += 1
            continue
        if ch == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            out.append(_Token("qs", "".join(buf), space))
            i = j + 1
        elif ch == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                c = text[j]
                if c == "\\" and j + 1 < n:
                    j += 1
                    c = text[j]
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if not depth:
                        break
                buf.append(c)
                j += 1
            out.append(_Token("comment", "".join(buf), space))
            i = j + 1
        elif ch == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            out.append(_Token("dlit", text[i : j + 1], space))
            i = j + 1
        elif ch in _ADDR_SPECIALS:
            out.append(_Token(ch, ch, space))
            i += 1
        else:
            j = i
            while j < n and text[j] not in _ADDR_SPECIALS and text[j] not in " \t\r\n":
                j += 1
            out.append(_Token("atom", text[i:j], space))
            i = j
        space = False
    return out


def _phrase(tokens: list[_Token]) -> str:
    words: list[str] = []
    for t in tokens:
        if t.kind == "comment":
            continue
        if words and t.space:
            words.append(" ")
        words.append(t.text)
    return "".join(words).strip()


def _local_text(tokens: list[_Token]) -> str:
    parts = []
    for t in tokens:
        if t.kind == "qs":
            parts.append('"' + t.text.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            parts.append(t.text)
    return "".join(parts)


def _mailbox(tokens: list[_Token]) -> Address | None:
    comments = [t.text for t in tokens if t.kind == "comment"]
    toks = [t for t in tokens if t.kind != "comment"]
    if not toks:
        return None
    name: str | None = None
    kinds = [t.kind for t in toks]
    if "<" in kinds:
        lt = kinds.index("<")
        gt = kinds.index(">", lt) if ">" in kinds[lt:] else len(toks)
        name = _phrase(toks[:lt]) or None
        spec = toks[lt + 1 : gt]
    else:
        spec = toks
        if comments and comments[-1].strip():
            name = comments[-1].strip()  # old style "user@host (Full Name)"
    adl: str | None = None
    if spec and spec[0].kind == "@":
        colon = next((i for i, t in enumerate(spec) if t.kind == ":"), None)
        if colon is not None:
            adl = "".join(t.text for t in spec[:colon])
            spec = spec[colon + 1 :]
    at = max((i for i, t in enumerate(spec) if t.kind == "@"), default=None)
    if at is None:
        if not spec:
            return (name, adl, "", "")  # "<>"
        return (name, adl, _local_text(spec), "MISSING_DOMAIN")
    local = _local_text(spec[:at]) or "MISSING_MAILBOX"
    host = "".join(t.text for t in spec[at + 1 :]) or "MISSING_DOMAIN"
    return (name, adl, local, host)


def parse_addresses(value: str) -> list[Address]:
    """RFC 5322 §3.4 address-list, leniently: mailboxes, groups (RFC 3501 §7.4.2 group
    markers), obsolete routes; display names keep their encoded words (clients decode)."""
    out: list[Address] = []
    cur: list[_Token] = []
    in_angle = in_group = False

    def flush() -> None:
        mailbox = _mailbox(cur)
        if mailbox is not None:
            out.append(mailbox)
        cur.clear()

    for tok in _lex_addresses(value):
        if tok.kind == "<":
            in_angle = True
        elif tok.kind == ">":
            in_angle = False
        elif not in_angle:
            if tok.kind == ",":
                flush()
                continue
            if tok.kind == ":" and not in_group:
                out.append((None, None, _phrase(cur), None))
                cur.clear()
                in_group = True
                continue
            if tok.kind == ";":
                flush()
                if in_group:
                    out.append((None, None, None, None))
                    in_group = False
                continue
        cur.append(tok)
    flush()
    if in_group:
        out.append((None, None, None, None))
    return out
