"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3), strict in both directions.

Printable US-ASCII other than "&" stands for itself, "&" is written "&-", and any other run of
characters is UTF-16BE in modified BASE64 ("," instead of "/", no padding) between "&" and "-".
Decoding rejects everything a conforming encoder cannot produce (so a name has one spelling):
octets outside 0x20-0x7e, an unterminated or empty shift, bad BASE64, non-zero padding bits, a
shift spelling a printable ASCII character, two adjacent shifts, and broken surrogate
pairs.

Imports: stdlib only (binascii).
"""

from __future__ import annotations

import binascii

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
_B64_SET = frozenset(_B64)


def _printable(ch: str) -> bool:
    return 0x20 <= ord(ch) <= 0x7E


def encode(name: str) -> str:
    """Return `name` in modified UTF-7.

    Raises:
        ValueError: `name` holds a lone surrogate (not a Unicode scalar value).
    """
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            try:
                octets = "".join(run).encode("utf-16-be")
            except UnicodeEncodeError as exc:
                raise ValueError("mailbox name holds a lone surrogate") from exc
            b64 = binascii.b2a_base64(octets, newline=False).decode("ascii")
            # RFC 3501 §5.1.3: "," replaces "/", and the "=" padding is omitted.
            out.append("&" + b64.rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if _printable(ch):
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode(name: str | bytes) -> str:
    """Return the Unicode mailbox name spelled by modified UTF-7 `name`.

    Raises:
        ValueError: `name` is not valid modified UTF-7 (see the module docstring).
    """
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ValueError("8-bit octet in a modified UTF-7 name") from exc
    out: list[str] = []
    i, n = 0, len(name)
    while i < n:
        ch = name[i]
        if not _printable(ch):
            raise ValueError(f"character {ch!r} outside printable US-ASCII")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated '&' shift")
        if end == i + 1:
            out.append("&")  # "&-"
            i = end + 1
            continue
        out.append(_decode_shift(name[i + 1 : end]))
        i = end + 1
        if name.startswith("&", i) and not name.startswith("&-", i):
            # Two adjacent shifts: an encoder writes one (Dovecot rejects this too).
            raise ValueError("adjacent '&...-' shifts")
    return "".join(out)


def _decode_shift(b64: str) -> str:
    """The characters of one shifted run (the text between "&" and "-")."""
    if not set(b64) <= _B64_SET:
        raise ValueError(f"bad modified BASE64 {b64!r}")
    std = b64.replace(",", "/")
    try:
        octets = binascii.a2b_base64(std + "=" * (-len(std) % 4), strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(f"bad modified BASE64 {b64!r}") from exc
    # Whole UTF-16 units only, and the canonical spelling: re-encoding must give the same run,
    # which rules out a surplus character and non-zero padding bits.
    canonical = binascii.b2a_base64(octets, newline=False).decode("ascii").rstrip("=")
    if len(octets) % 2 or canonical != std:
        raise ValueError(f"modified BASE64 run {b64!r} is not whole UTF-16 units")
    try:
        text = octets.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise ValueError(f"broken UTF-16 in {b64!r}") from exc
    if any(_printable(c) for c in text):
        # RFC 3501 §5.1.3: modified BASE64 MUST NOT represent a printable US-ASCII character.
        raise ValueError(f"printable US-ASCII encoded in {b64!r}")
    return text
