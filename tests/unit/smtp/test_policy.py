"""RecipientPolicy with a real AccountStore: local users, subaddresses, relay control."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from relay.auth.accounts import AccountStore
from relay.smtp import replies as R
from relay.smtp.grammar import Mailbox
from relay.smtp.policy import Peer, RecipientPolicy, check_sender, is_trusted

TRUSTED = Peer("127.0.0.1", trusted=True)
STRANGER = Peer("203.0.113.9", trusted=False)
NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.1.0.0/16"),
            ipaddress.ip_network("::1/128"), ipaddress.ip_network("2001:db8:1::/48"))


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccountStore]:
    store = AccountStore(tmp_path_factory.mktemp("accounts"))
    store.add("alice@example.test", "correct horse")
    store.add("postmaster@example.test", "battery staple")
    yield store
    store.close()


@pytest.fixture(scope="module")
def policy(accounts: AccountStore) -> RecipientPolicy:
    return RecipientPolicy(("example.test", "other.test"), accounts)


# ---- local recipients -------------------------------------------------------------------------


def test_existing_local_user_is_accepted_from_anyone(policy: RecipientPolicy) -> None:
    assert policy.check(STRANGER, Mailbox("alice", "example.test")) is None


def test_unknown_local_user_is_550_5_1_1(policy: RecipientPolicy) -> None:
    reply = policy.check(STRANGER, Mailbox("mallory", "example.test"))
    assert reply == R.USER_UNKNOWN
    assert reply.encode() == b"550 5.1.1 Mailbox unavailable: no such user\r\n"


def test_unknown_local_user_is_refused_even_from_trusted_peer(policy: RecipientPolicy) -> None:
    assert policy.check(TRUSTED, Mailbox("mallory", "example.test")) == R.USER_UNKNOWN


def test_subaddress_is_accepted_for_existing_user(policy: RecipientPolicy) -> None:
    assert policy.check(STRANGER, Mailbox("alice+lists", "example.test")) is None


def test_subaddress_of_unknown_user_is_550_5_1_1(policy: RecipientPolicy) -> None:
    assert policy.check(STRANGER, Mailbox("mallory+x", "example.test")) == R.USER_UNKNOWN


def test_local_part_is_case_insensitive(policy: RecipientPolicy) -> None:
    assert policy.check(STRANGER, Mailbox("Alice", "example.test")) is None


def test_local_domain_is_case_insensitive(policy: RecipientPolicy) -> None:
    assert policy.check(STRANGER, Mailbox("alice", "EXAMPLE.Test")) is None


def test_postmaster_is_accepted(policy: RecipientPolicy) -> None:
    assert policy.check(STRANGER, Mailbox("PostMaster", "example.test")) is None


def test_user_of_another_local_domain_is_separate(policy: RecipientPolicy) -> None:
    # alice exists in example.test only; other.test is local too, so this is 550, not relay.
    assert policy.check(TRUSTED, Mailbox("alice", "other.test")) == R.USER_UNKNOWN


# ---- remote recipients (relay control, RFC 5321 §3.6.2) -----------------------------------------


def test_remote_recipient_from_trusted_peer_is_accepted(policy: RecipientPolicy) -> None:
    assert policy.check(TRUSTED, Mailbox("bob", "elsewhere.example")) is None


def test_remote_recipient_from_untrusted_peer_is_554_5_7_1(policy: RecipientPolicy) -> None:
    reply = policy.check(STRANGER, Mailbox("bob", "elsewhere.example"))
    assert reply == R.RELAY_DENIED
    assert reply.encode() == b"554 5.7.1 Relay access denied\r\n"


def test_remote_recipient_from_authenticated_peer_is_accepted(policy: RecipientPolicy) -> None:
    peer = Peer("203.0.113.9", trusted=False, authenticated="alice@example.test")
    assert policy.check(peer, Mailbox("bob", "elsewhere.example")) is None


def test_subdomain_of_local_domain_is_remote(policy: RecipientPolicy) -> None:
    assert policy.check(STRANGER, Mailbox("alice", "sub.example.test")) == R.RELAY_DENIED


def test_address_literal_is_remote(policy: RecipientPolicy) -> None:
    assert policy.check(STRANGER, Mailbox("alice", "[127.0.0.1]")) == R.RELAY_DENIED


def test_is_local(policy: RecipientPolicy) -> None:
    assert policy.is_local(Mailbox("x", "example.test"))
    assert not policy.is_local(Mailbox("x", "example.org"))


# ---- sender of an authenticated client (Postfix reject_sender_login_mismatch) ----------------

ALICE = Peer("203.0.113.9", trusted=False, authenticated="alice@example.test")
SENDER_NOT_OWNED = b"553 5.7.1 Sender address not owned by the authenticated user\r\n"


def test_unauthenticated_sender_is_not_restricted() -> None:
    assert check_sender(STRANGER, Mailbox("bob", "example.test")) is None
    assert check_sender(TRUSTED, None) is None


@pytest.mark.parametrize("sender", [Mailbox("alice", "example.test"),
                                    Mailbox("Alice", "EXAMPLE.test."),
                                    Mailbox("alice+lists", "example.test")])
def test_authenticated_client_may_send_as_its_account_or_a_subaddress(sender: Mailbox) -> None:
    assert check_sender(ALICE, sender) is None


@pytest.mark.parametrize("sender", [Mailbox("bob", "example.test"),
                                    Mailbox("alice", "other.test"),
                                    Mailbox("alicex", "example.test"),
                                    None])
def test_authenticated_client_sending_as_another_is_553_5_7_1(sender: Mailbox | None) -> None:
    reply = check_sender(ALICE, sender)
    assert reply == R.SENDER_NOT_OWNED
    assert reply.encode() == SENDER_NOT_OWNED


# ---- is_trusted --------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.255.0.9", "10.1.200.3"])
def test_ipv4_inside_relay_networks_is_trusted(address: str) -> None:
    assert is_trusted(address, NETWORKS) is True


@pytest.mark.parametrize("address", ["10.2.0.1", "192.0.2.1", "128.0.0.1"])
def test_ipv4_outside_relay_networks_is_not_trusted(address: str) -> None:
    assert is_trusted(address, NETWORKS) is False


@pytest.mark.parametrize("address", ["::1", "2001:db8:1::25", "2001:db8:1:ffff::1"])
def test_ipv6_inside_relay_networks_is_trusted(address: str) -> None:
    assert is_trusted(address, NETWORKS) is True


@pytest.mark.parametrize("address", ["::2", "2001:db8:2::1", "fe80::1"])
def test_ipv6_outside_relay_networks_is_not_trusted(address: str) -> None:
    assert is_trusted(address, NETWORKS) is False


def test_ipv4_mapped_ipv6_is_judged_as_ipv4() -> None:
    assert is_trusted("::ffff:127.0.0.1", NETWORKS) is True
    assert is_trusted("::ffff:192.0.2.1", NETWORKS) is False


def test_scoped_ipv6_is_judged_without_its_scope() -> None:
    nets = (ipaddress.ip_network("fe80::/10"),)
    assert is_trusted("fe80::1%eth0", nets) is True


@pytest.mark.parametrize("address", ["", "localhost", "not-an-ip", "127.0.0.1:25"])
def test_unparsable_address_is_not_trusted(address: str) -> None:
    assert is_trusted(address, NETWORKS) is False


def test_no_networks_trusts_nobody() -> None:
    assert is_trusted("127.0.0.1", ()) is False
