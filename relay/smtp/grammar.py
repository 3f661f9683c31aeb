"""RFC 5321 §4.1.2 / RFC 6531 §3.3 address grammar, applied to what the tokenizer extracted.

Pure functions: a path's octets -> Mailbox, or GrammarError. Shared by the inbound
machine and (later) the outbound client.

Imports: stdlib only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# RFC 5321 §4.5.3.1.1-2: local-part 64 octets, domain 255 octets; §4.5.3.1.3 path 256
# including the angle brackets, so 254 between them.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 254
# The EHLO argument is echoed in our 250 reply, which must fit 512 octets.
MAX_HELO = 255

_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\xff]"
_DOT_STRING = re.compile(rb"%s+(?:\.%s+)*" % (_ATEXT, _ATEXT))
# RFC 5321 §4.1.2 quoted-string: qtextSMTP or a backslash pair; RFC 6531 adds UTF-8.
_QUOTED = re.compile(rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\x20-\x7e])*"')
_LABEL = re.compile(rb"(?:[A-Za-z0-9\x80-\xff](?:[A-Za-z0-9\-\x80-\xff]{0,61}[A-Za-z0-9\x80-\xff])?)")
# RFC 5321 §4.1.3 general-address-literal: tag ":" dcontent.
_GENERAL_LITERAL = re.compile(rb"[A-Za-z0-9\-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")


class GrammarError(ValueError):
    """The path is not a valid RFC 5321 mailbox (or needs SMTPUTF8 that was not given)."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    local: str
    domain: str  # as written; address literals keep their brackets

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def strip_source_route(path: bytes) -> bytes:
    """RFC 5321 §4.1.2 / Appendix C: accept and ignore an A-d-l source route ("@a,@b:")."""
    if path.startswith(b"@"):
        colon = path.find(b":")
        if colon < 0:
            raise GrammarError("source route without ':'")
        for hop in path[:colon].split(b","):
            if not hop.startswith(b"@") or not _is_domain(hop[1:]):
                raise GrammarError("bad source route")
        return path[colon + 1 :]
    return path


def parse_mailbox(path: bytes, utf8: bool) -> Mailbox:
    """Validate a non-null path (no brackets) and split it. `utf8`: SMTPUTF8 in effect."""
    path = strip_source_route(path)
    if len(path) > MAX_PATH:
        raise GrammarError("path too long")
    if not utf8 and any(b > 127 for b in path):
        raise GrammarError("non-ASCII address without SMTPUTF8")
    if path.startswith(b'"'):
        m = _QUOTED.match(path)
        if not m or path[m.end() : m.end() + 1] != b"@":
            raise GrammarError("bad quoted local part")
        local, domain = path[: m.end()], path[m.end() + 1 :]
    else:
        local, at, domain = path.rpartition(b"@")
        if not at or not _DOT_STRING.fullmatch(local):
            raise GrammarError("bad local part")
    if len(local) > MAX_LOCAL_PART:
        raise GrammarError("local part too long")
    if not (_is_domain(domain) or _is_address_literal(domain)):
        raise GrammarError("bad domain")
    try:
        return Mailbox(local.decode("utf-8"), domain.decode("utf-8"))
    except UnicodeDecodeError:
        raise GrammarError("address is not UTF-8") from None


def _is_domain(domain: bytes) -> bool:
    """RFC 5321 §4.1.2 Domain: dot-separated labels (U-labels allowed by RFC 6531)."""
    if not domain or len(domain) > MAX_DOMAIN:
        return False
    return all(_LABEL.fullmatch(label) for label in domain.split(b"."))


def _is_address_literal(domain: bytes) -> bool:
    """RFC 5321 §4.1.3: [IPv4], [IPv6:...], or a general address literal."""
    if not (domain.startswith(b"[") and domain.endswith(b"]")):
        return False
    inner = domain[1:-1].decode("ascii", "replace")
    if "%" in inner:  # no IPv6 zone ids: ipaddress accepts any octets after "%"
        return False
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
        return True
    except ValueError:
        return bool(_GENERAL_LITERAL.fullmatch(domain[1:-1])) and not inner[:5].lower() == "ipv6:"


def is_valid_helo(arg: bytes) -> bool:
    """RFC 5321 §4.1.1.1: a domain or an address literal (lenient: one token)."""
    if not arg or len(arg) > MAX_HELO or b" " in arg or not arg.isascii():
        return False
    return _is_domain(arg.rstrip(b".")) or _is_address_literal(arg)


def parse_size(value: bytes | None) -> int | None:
    """RFC 1870 §3 SIZE=n: 1-20 digits; None when malformed."""
    if value is None or not value.isdigit() or len(value) > 20:
        return None
    return int(value)
