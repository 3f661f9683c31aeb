"""SaslExchange: PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) server steps.

Byte strings in, Challenge / Credentials / SaslError out; one behaviour per test.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.auth.sasl import (
    MAX_FIELD,
    MECHANISMS,
    PASSWORD_CHALLENGE,
    USERNAME_CHALLENGE,
    Challenge,
    Credentials,
    SaslError,
    SaslErrorKind,
    SaslExchange,
)


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def plain(initial: bytes | None) -> Challenge | Credentials | SaslError:
    return SaslExchange().start("PLAIN", initial)


def login(*lines: bytes) -> Challenge | Credentials | SaslError:
    exchange = SaslExchange()
    result = exchange.start("LOGIN", None)
    for line in lines:
        result = exchange.step(line)
    return result


# ---- PLAIN -----------------------------------------------------------------------------------


def test_rfc4616_example_without_authzid() -> None:
    # RFC 4616 §4: "\0tim\0tanstaaftanstaaf".
    assert plain(b64(b"\0tim\0tanstaaftanstaaf")) == Credentials("tim", "tanstaaftanstaaf",
                                                                  "PLAIN")


def test_rfc4616_example_with_other_authzid_is_proxy_auth_and_denied() -> None:
    # RFC 4616 §4: "Ursel\0Kurt\0xipj3plmq" asks Kurt to act as Ursel: no proxy auth here.
    assert plain(b64(b"Ursel\0Kurt\0xipj3plmq")) == SaslError(SaslErrorKind.AUTHZID_DENIED)


def test_plain_authzid_equal_to_authcid_is_accepted() -> None:
    result = plain(b64(b"alice@example.test\0alice@example.test\0pw"))
    assert result == Credentials("alice@example.test", "pw", "PLAIN")


def test_plain_authzid_differing_only_in_case_is_the_same_user() -> None:
    result = plain(b64(b"Alice@Example.test\0alice@example.test\0pw"))
    assert result == Credentials("alice@example.test", "pw", "PLAIN")


def test_plain_keeps_utf8_and_spaces_in_the_password() -> None:
    result = plain(b64("\0jösé\0pass wörd ✓".encode()))
    assert result == Credentials("jösé", "pass wörd ✓", "PLAIN")


def test_plain_without_initial_response_sends_an_empty_challenge() -> None:
    exchange = SaslExchange()
    assert exchange.start("PLAIN", None) == Challenge(b"")
    assert exchange.waiting and not exchange.done
    assert exchange.step(b64(b"\0tim\0secret")) == Credentials("tim", "secret", "PLAIN")
    assert exchange.done and not exchange.waiting


def test_plain_step_strips_the_line_ending() -> None:
    exchange = SaslExchange()
    exchange.start("PLAIN", None)
    assert exchange.step(b64(b"\0tim\0secret") + b"\r\n") == Credentials("tim", "secret",
                                                                         "PLAIN")


def test_mechanism_name_is_case_insensitive() -> None:
    exchange = SaslExchange()
    assert exchange.start("plain", b64(b"\0a\0b")) == Credentials("a", "b", "PLAIN")
    assert exchange.mechanism == "PLAIN"


@pytest.mark.parametrize("raw", [b"tim\0secret", b"\0\0tim\0secret", b"nonul", b""],
                         ids=["one_nul", "three_nuls", "no_nul", "empty"])
def test_plain_needs_exactly_two_nuls(raw: bytes) -> None:
    assert plain(b64(raw)) == SaslError(SaslErrorKind.MALFORMED)


def test_plain_empty_initial_response_is_malformed() -> None:
    # RFC 4954 §4 / RFC 5034 §4: "=" is an initial response of zero octets.
    assert plain(b"=") == SaslError(SaslErrorKind.MALFORMED)


def test_plain_empty_authcid_is_refused() -> None:
    assert plain(b64(b"\0\0secret")) == SaslError(SaslErrorKind.EMPTY_USERNAME)


def test_plain_empty_password_is_refused() -> None:
    assert plain(b64(b"\0tim\0")) == SaslError(SaslErrorKind.EMPTY_PASSWORD)


@pytest.mark.parametrize("encoded", [b"AHRpbQBzZWNyZXQ", b"AHRp bQBzZWNyZXQ=", b"!!!!",
                                     b"AHRpbQBzZWNyZXQ==", b"AHRpbQBzZWNyZXQ=\n"],
                         ids=["no_padding", "space", "bad_alphabet", "extra_padding",
                              "embedded_newline"])
def test_plain_invalid_base64_is_refused(encoded: bytes) -> None:
    assert plain(encoded) == SaslError(SaslErrorKind.BAD_BASE64)


def test_plain_non_utf8_is_refused() -> None:
    assert plain(b64(b"\0tim\0\xff\xfe")) == SaslError(SaslErrorKind.NOT_UTF8)


def test_plain_field_over_the_limit_is_refused() -> None:
    assert plain(b64(b"\0tim\0" + b"x" * (MAX_FIELD + 1))) == SaslError(SaslErrorKind.TOO_LONG)


def test_plain_field_at_the_limit_is_accepted() -> None:
    result = plain(b64(b"\0tim\0" + b"x" * MAX_FIELD))
    assert isinstance(result, Credentials) and len(result.password) == MAX_FIELD


def test_absurdly_long_base64_is_refused_before_decoding() -> None:
    assert plain(b"QUFB" * 10_000) == SaslError(SaslErrorKind.TOO_LONG)


# ---- LOGIN -----------------------------------------------------------------------------------


def test_login_prompts_for_username_then_password() -> None:
    exchange = SaslExchange()
    assert exchange.start("LOGIN", None) == Challenge(b"VXNlcm5hbWU6")  # "Username:"
    assert exchange.step(b64(b"alice@example.test")) == Challenge(b"UGFzc3dvcmQ6")  # "Password:"
    assert exchange.step(b64(b"s3cret")) == Credentials("alice@example.test", "s3cret", "LOGIN")


def test_login_challenges_are_the_base64_prompts() -> None:
    assert base64.b64decode(USERNAME_CHALLENGE) == b"Username:"
    assert base64.b64decode(PASSWORD_CHALLENGE) == b"Password:"


def test_login_initial_response_is_the_username() -> None:
    exchange = SaslExchange()
    assert exchange.start("LOGIN", b64(b"alice")) == Challenge(PASSWORD_CHALLENGE)
    assert exchange.step(b64(b"pw")) == Credentials("alice", "pw", "LOGIN")


def test_login_empty_username_is_refused() -> None:
    assert login(b"") == SaslError(SaslErrorKind.EMPTY_USERNAME)


def test_login_empty_password_is_refused() -> None:
    assert login(b64(b"alice"), b"") == SaslError(SaslErrorKind.EMPTY_PASSWORD)


def test_login_bad_base64_in_username_is_refused() -> None:
    assert login(b"YWxpY2U") == SaslError(SaslErrorKind.BAD_BASE64)


def test_login_bad_base64_in_password_is_refused() -> None:
    assert login(b64(b"alice"), b"%%%") == SaslError(SaslErrorKind.BAD_BASE64)


def test_login_non_utf8_is_refused() -> None:
    assert login(b64(b"\xc3\x28")) == SaslError(SaslErrorKind.NOT_UTF8)


def test_login_nul_in_a_field_is_malformed() -> None:
    assert login(b64(b"alice"), b64(b"pw\0x")) == SaslError(SaslErrorKind.MALFORMED)


def test_login_overlong_username_is_refused() -> None:
    assert login(b64(b"u" * (MAX_FIELD + 1))) == SaslError(SaslErrorKind.TOO_LONG)


# ---- cancel, mechanisms, misuse -------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"*", b"*\r\n", b" * "])
def test_star_cancels_a_plain_exchange(line: bytes) -> None:
    exchange = SaslExchange()
    exchange.start("PLAIN", None)
    assert exchange.step(line) == SaslError(SaslErrorKind.CANCELLED)
    assert exchange.done


def test_star_cancels_login_at_the_username_prompt() -> None:
    assert login(b"*") == SaslError(SaslErrorKind.CANCELLED)


def test_star_cancels_login_at_the_password_prompt() -> None:
    assert login(b64(b"alice"), b"*") == SaslError(SaslErrorKind.CANCELLED)


def test_star_as_initial_response_is_not_base64() -> None:
    assert plain(b"*") == SaslError(SaslErrorKind.BAD_BASE64)


@pytest.mark.parametrize("name", ["CRAM-MD5", "XOAUTH2", "", "PLAIN "])
def test_unknown_mechanism_is_refused(name: str) -> None:
    exchange = SaslExchange()
    assert exchange.start(name, None) == SaslError(SaslErrorKind.UNSUPPORTED_MECHANISM)
    assert exchange.done


def test_an_exchange_limited_to_plain_refuses_login() -> None:
    result = SaslExchange(("PLAIN",)).start("LOGIN", None)
    assert result == SaslError(SaslErrorKind.UNSUPPORTED_MECHANISM)


def test_constructing_with_an_unimplemented_mechanism_is_a_bug() -> None:
    with pytest.raises(ValueError):
        SaslExchange(("PLAIN", "GSSAPI"))


def test_mechanisms_are_advertised_plain_first() -> None:
    assert MECHANISMS == ("PLAIN", "LOGIN")


def test_step_after_the_exchange_ended_is_a_bug() -> None:
    exchange = SaslExchange()
    exchange.start("PLAIN", b64(b"\0a\0b"))
    with pytest.raises(RuntimeError):
        exchange.step(b"")


def test_step_before_start_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        SaslExchange().step(b"")


def test_start_twice_is_a_bug() -> None:
    exchange = SaslExchange()
    exchange.start("LOGIN", None)
    with pytest.raises(RuntimeError):
        exchange.start("LOGIN", None)


def test_credentials_repr_hides_the_password() -> None:
    assert "hunter2" not in repr(Credentials("alice", "hunter2", "PLAIN"))


def test_error_message_is_the_kind_text() -> None:
    assert SaslError(SaslErrorKind.CANCELLED).message == "authentication cancelled"


def test_every_error_kind_is_reachable() -> None:
    produced = {
        login(b"*"),
        SaslExchange().start("NOPE", None),
        plain(b"!"),
        plain(b64(b"\0a\0\xff")),
        plain(b64(b"a")),
        plain(b64(b"\0\0b")),
        plain(b64(b"\0a\0")),
        plain(b64(b"x\0a\0b")),
        plain(b64(b"\0a\0" + b"b" * (MAX_FIELD + 1))),
    }
    assert {r.kind for r in produced if isinstance(r, SaslError)} == set(SaslErrorKind)


# ---- never raises on peer input -------------------------------------------------------------------


@given(mechanism=st.sampled_from(["PLAIN", "LOGIN", "plain", "x"]),
       initial=st.none() | st.binary(max_size=64) | st.binary(max_size=48).map(b64),
       lines=st.lists(st.binary(max_size=64) | st.binary(max_size=48).map(b64)
                      | st.just(b"*"), max_size=4))
def test_peer_input_always_yields_a_result(mechanism: str, initial: bytes | None,
                                           lines: list[bytes]) -> None:
    exchange = SaslExchange()
    result = exchange.start(mechanism, initial)
    for line in lines:
        if not exchange.waiting:
            break
        assert isinstance(result, Challenge)
        result = exchange.step(line)
    assert isinstance(result, (Challenge, Credentials, SaslError))
    assert isinstance(result, Challenge) == exchange.waiting
