"""Address grammar (RFC 5321 §4.1.2-4.1.3, RFC 6531 §3.3): parse_mailbox, is_valid_helo,
parse_size."""

from __future__ import annotations

import pytest

from relay.smtp.grammar import GrammarError, Mailbox, is_valid_helo, parse_mailbox, parse_size

# ---- parse_mailbox: valid ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"user@example.com", Mailbox("user", "example.com")),
        (b"first.last+tag@sub.example.org", Mailbox("first.last+tag", "sub.example.org")),
        (b"!#$%&'*+/=?^_`{|}~-@example.com", Mailbox("!#$%&'*+/=?^_`{|}~-", "example.com")),
        (b"User@Example.COM", Mailbox("User", "Example.COM")),
        (b"u@a-b.c0", Mailbox("u", "a-b.c0")),
        (b"u@localhost", Mailbox("u", "localhost")),
    ],
)
def test_dot_string_mailbox_is_split_at_the_last_at(path: bytes, expected: Mailbox) -> None:
    assert parse_mailbox(path, utf8=False) == expected


@pytest.mark.parametrize(
    ("path", "local"),
    [
        (b'"john doe"@example.com', '"john doe"'),
        (b'"a@b"@example.com', '"a@b"'),
        (b'"quote\\"inside"@example.com', '"quote\\"inside"'),
        (b'"back\\\\slash"@example.com', '"back\\\\slash"'),
        (b'""@example.com', '""'),
    ],
)
def test_quoted_local_part_is_kept_with_its_quotes(path: bytes, local: str) -> None:
    assert parse_mailbox(path, utf8=False) == Mailbox(local, "example.com")


@pytest.mark.parametrize(
    "domain",
    [b"[192.0.2.1]", b"[IPv6:::1]", b"[IPv6:2001:db8::1]", b"[ipv6:2001:db8::1]",
     b"[IPv6:::ffff:192.0.2.1]", b"[x-tag:some-data]"],
)
def test_address_literal_domain_keeps_its_brackets(domain: bytes) -> None:
    assert parse_mailbox(b"user@" + domain, utf8=False) == Mailbox("user", domain.decode())


@pytest.mark.parametrize(
    "path",
    [b"@relay.example:user@example.com", b"@a.example,@b.example:user@example.com"],
)
def test_source_route_is_stripped(path: bytes) -> None:
    # RFC 5321 §4.1.2 / Appendix C: accept and ignore the A-d-l.
    assert parse_mailbox(path, utf8=False) == Mailbox("user", "example.com")


def test_local_part_of_64_octets_is_accepted() -> None:
    assert parse_mailbox(b"a" * 64 + b"@example.com", utf8=False).local == "a" * 64


def test_label_of_63_octets_is_accepted() -> None:
    domain = b"a" * 63 + b".example"
    assert parse_mailbox(b"u@" + domain, utf8=False).domain == domain.decode()


def test_non_ascii_local_part_accepted_with_utf8() -> None:
    assert parse_mailbox("josé@example.com".encode(), utf8=True) == Mailbox("josé", "example.com")


def test_non_ascii_domain_accepted_with_utf8() -> None:
    assert parse_mailbox("user@exämple.com".encode(), utf8=True) == Mailbox("user", "exämple.com")


def test_non_ascii_quoted_local_part_accepted_with_utf8() -> None:
    path = '"jo sé"@example.com'.encode()
    assert parse_mailbox(path, utf8=True) == Mailbox('"jo sé"', "example.com")


# ---- parse_mailbox: invalid ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        b"",
        b"user",
        b"@example.com",
        b"user@",
        b".user@example.com",
        b"user.@example.com",
        b"us..er@example.com",
        b"us er@example.com",
        b"us(er@example.com",
        b"user@@example.com",
        b"user@-example.com",
        b"user@example-.com",
        b"user@exa mple.com",
        b"user@example..com",
        b"user@example.com.",
        b"user@.example.com",
        b"user@exa_mple.com",
        b'"unterminated@example.com',
        b'"quoted"x@example.com',
        b'"bad\\\x01"@example.com',
        b'"bare"quote"@example.com',
    ],
)
def test_malformed_mailbox_is_refused(path: bytes) -> None:
    with pytest.raises(GrammarError):
        parse_mailbox(path, utf8=False)


@pytest.mark.parametrize(
    "domain",
    [b"[1.2.3]", b"[256.1.1.1]", b"[1.2.3.4.5]", b"[IPv6:zz::1]", b"[IPv6:1.2.3.4]",
     b"[]", b"[1.2.3.4", b"1.2.3.4]", b"[IPv6:]", b"[tag:]", b"[:data]"],
)
def test_malformed_address_literal_is_refused(domain: bytes) -> None:
    with pytest.raises(GrammarError):
        parse_mailbox(b"user@" + domain, utf8=False)


@pytest.mark.parametrize("domain", [b"[IPv6:fe80::1%eth0]", b"[IPv6:::1%\rX-Injected: 1]"])
def test_ipv6_literal_with_zone_id_is_refused(domain: bytes) -> None:
    # RFC 5321 §4.1.3 IPv6-addr has no zone ("%scope"); Python's ipaddress accepts one,
    # with any octets in it (CR and SP included).
    with pytest.raises(GrammarError):
        parse_mailbox(b"user@" + domain, utf8=False)


@pytest.mark.parametrize(
    "path",
    [b"@bad_route:user@example.com", b"@relay.example", b"relay.example:user@example.com",
     b"@a.example,b.example:user@example.com", b"@:user@example.com"],
)
def test_malformed_source_route_is_refused(path: bytes) -> None:
    with pytest.raises(GrammarError):
        parse_mailbox(path, utf8=False)


def test_local_part_of_65_octets_is_refused() -> None:
    # RFC 5321 §4.5.3.1.1: 64 octets.
    with pytest.raises(GrammarError):
        parse_mailbox(b"a" * 65 + b"@example.com", utf8=False)


def test_local_part_of_65_octets_is_refused_with_utf8() -> None:
    # RFC 6531 §3.3 keeps RFC 5321's limits, which are counted in octets.
    with pytest.raises(GrammarError):
        parse_mailbox(b"a" * 65 + b"@example.com", utf8=True)


def test_label_of_64_octets_is_refused() -> None:
    with pytest.raises(GrammarError):
        parse_mailbox(b"u@" + b"a" * 64 + b".example", utf8=False)


def test_domain_over_255_octets_is_refused() -> None:
    domain = b".".join([b"a" * 50] * 6)  # 305 octets
    with pytest.raises(GrammarError):
        parse_mailbox(b"u@" + domain, utf8=False)


def test_path_over_256_octets_is_refused() -> None:
    # RFC 5321 §4.5.3.1.3; each part alone is within its own limit.
    domain = b".".join([b"a" * 60] * 4)  # 243 octets
    with pytest.raises(GrammarError):
        parse_mailbox(b"b" * 40 + b"@" + domain, utf8=False)


def test_non_ascii_local_part_refused_without_utf8() -> None:
    with pytest.raises(GrammarError):
        parse_mailbox("josé@example.com".encode(), utf8=False)


def test_non_ascii_domain_refused_without_utf8() -> None:
    with pytest.raises(GrammarError):
        parse_mailbox("user@exämple.com".encode(), utf8=False)


@pytest.mark.parametrize("path", [b"\xff@example.com", b"user@\xc3.example", b"\xc3\x28@x.org"])
def test_invalid_utf8_refused_even_with_utf8(path: bytes) -> None:
    with pytest.raises(GrammarError):
        parse_mailbox(path, utf8=True)


def test_grammar_error_is_a_value_error() -> None:
    assert issubclass(GrammarError, ValueError)


# ---- is_valid_helo (RFC 5321 §4.1.1.1) -------------------------------------------------------


@pytest.mark.parametrize(
    "arg",
    [b"client.example", b"client.example.", b"localhost", b"mail-1.example.org",
     b"[192.0.2.1]", b"[IPv6:2001:db8::1]", b"[IPv6:::1]"],
)
def test_valid_helo_argument(arg: bytes) -> None:
    assert is_valid_helo(arg) is True


@pytest.mark.parametrize(
    "arg",
    [b"", b".", b"two words", b"-bad.example", b"bad-.example", b"a..b", b"[1.2.3]",
     b"[192.0.2.1", b"under_score.example", b"a" * 64 + b".example", b"[IPv6:fe80::1%eth0]"],
)
def test_invalid_helo_argument(arg: bytes) -> None:
    assert is_valid_helo(arg) is False


# ---- parse_size (RFC 1870 §3) -----------------------------------------------------------------


@pytest.mark.parametrize(("value", "size"), [(b"0", 0), (b"1000", 1000), (b"007", 7),
                                             (b"9" * 20, int("9" * 20))])
def test_size_value_is_parsed(value: bytes, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [None, b"", b"-1", b"+1", b"1.5", b"12a", b" 12", b"9" * 21,
                                   "٣".encode()])
def test_malformed_size_value_is_none(value: bytes | None) -> None:
    assert parse_size(value) is None
