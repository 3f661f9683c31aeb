"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3): encode, strict decode, round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.mda.imap.utf7 import decode, encode


@pytest.mark.parametrize(
    ("wire", "name"),
    [
        ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),  # RFC 3501 §5.1.3
        ("INBOX", "INBOX"),
        ("", ""),
        ("&-", "&"),
        ("Tom &- Jerry", "Tom & Jerry"),
        ("&-&-x&-&-", "&&x&&"),
        ("tiet&AOQ-j&AOQ-", "tietäjä"),
        ("&AOk-&-", "é&"),
        ("&AOk-t&AOk-", "été"),
        ("&2D3eAA-", "\U0001f600"),  # a surrogate pair
        ("a&AAk-b", "a\tb"),  # a control character is shifted
    ],
)
def test_examples_decode_and_encode(wire: str, name: str) -> None:
    assert decode(wire) == name
    assert encode(name) == wire


def test_bytes_are_accepted_by_decode() -> None:
    assert decode(b"~peter/mail/&U,BTFw-") == "~peter/mail/台北"


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated shift
        "&U,BTFw",  # unterminated shift
        "&AGE-",  # "a" must represent itself
        "&U,BTF-",  # not whole UTF-16 units
        "&U,BTFx-",  # non-zero padding bits
        "&2D0-",  # lone high surrogate
        "&3gA-",  # lone low surrogate
        "&U/BTFw-",  # "/" is "," in modified BASE64
        "&U,BTFw==-",  # no padding
        "&U,BTFw-&ZeVnLIqe-",  # adjacent shifts (one shift, as Dovecot insists)
        "caf\u00e9",  # 8-bit must be shifted
        "tab\there",  # control characters must be shifted
        "a\x7fb",
    ],
)
def test_invalid_names_raise_value_error(wire: str) -> None:
    with pytest.raises(ValueError):
        decode(wire)


def test_eight_bit_octets_raise_value_error() -> None:
    with pytest.raises(ValueError):
        decode("café".encode())


def test_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode("a\ud800b")


@given(st.text(st.characters(exclude_categories=("Cs",))))
def test_round_trip(name: str) -> None:
    wire = encode(name)
    assert all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert decode(wire) == name


@given(st.text(alphabet="&-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,/x"))
def test_decode_accepts_only_canonical_spellings(wire: str) -> None:
    try:
        name = decode(wire)
    except ValueError:
        return
    assert encode(name) == wire
