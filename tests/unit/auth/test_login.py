"""Authenticator with the LoginCache: a repeated login skips argon2id, and nothing else does.

A real AccountStore in tmp_path (with cheap argon2id parameters, so the suite stays fast)
counts its slow checks; clocks are fakes, so TTLs pass without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import argon2
import pytest
from prometheus_client import REGISTRY

from relay.auth.accounts import AccountStore
from relay.auth.cache import LoginCache
from relay.auth.login import Authenticator, LoginResult
from relay.auth.throttle import AuthThrottle
from support.clock import FakeClock

IP = "192.0.2.1"
ALICE = "alice@example.test"


class CountingAccounts(AccountStore):
    """The real store, counting its argon2id verifications."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        # Cheap parameters for the test suite; verification reads them from each hash.
        self._hasher = argon2.PasswordHasher(type=argon2.Type.ID, time_cost=1,
                                             memory_cost=8, parallelism=1)
        self.argon2_checks = 0

    def verified_hash(self, address: str, password: str) -> str | None:
        self.argon2_checks += 1
        return super().verified_hash(address, password)


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[CountingAccounts]:
    store = CountingAccounts(tmp_path / "accounts")
    store.add(ALICE, "right")
    yield store
    store.close()


@pytest.fixture
def throttle(clock: FakeClock) -> AuthThrottle:
    return AuthThrottle(clock, max_account_failures=2)


@pytest.fixture
def auth(accounts: CountingAccounts, throttle: AuthThrottle, clock: FakeClock) -> Authenticator:
    return Authenticator(accounts, throttle, LoginCache(ttl=3600.0, clock=clock))


@pytest.fixture
def login(auth: Authenticator,
          run_async: Callable[..., object]) -> Callable[[str, str], LoginResult]:
    def attempt(user: str, password: str) -> LoginResult:
        async def main() -> LoginResult:
            result, _ = await auth.login("imap", IP, user, password)
            return result

        return cast(LoginResult, run_async(main))

    return attempt


def cache_count(result: str) -> float:
    return REGISTRY.get_sample_value("relay_auth_cache_total", {"result": result}) or 0.0


def test_second_login_skips_argon2(login: Callable[[str, str], LoginResult],
                                   accounts: CountingAccounts) -> None:
    hits, misses = cache_count("hit"), cache_count("miss")
    assert login(ALICE, "right") is LoginResult.OK
    assert login(ALICE, "right") is LoginResult.OK
    assert login(ALICE, "right") is LoginResult.OK
    assert accounts.argon2_checks == 1
    assert cache_count("miss") - misses == 1
    assert cache_count("hit") - hits == 2


def test_the_cached_account_is_found_whatever_the_case(
        login: Callable[[str, str], LoginResult], accounts: CountingAccounts) -> None:
    assert login(ALICE, "right") is LoginResult.OK
    assert login("Alice@Example.TEST", "right") is LoginResult.OK
    assert accounts.argon2_checks == 1


def test_wrong_password_after_a_cached_success_fails_and_is_throttled(
        login: Callable[[str, str], LoginResult], accounts: CountingAccounts,
        throttle: AuthThrottle) -> None:
    assert login(ALICE, "right") is LoginResult.OK
    hits = cache_count("hit")
    assert login(ALICE, "wrong") is LoginResult.FAILED
    assert login(ALICE, "wrong") is LoginResult.FAILED
    assert accounts.argon2_checks == 3  # each wrong password took the slow path
    assert cache_count("hit") == hits
    assert throttle.delay(IP, ALICE) == 1.0  # both failures were counted


def test_a_blocked_account_is_refused_even_with_a_cached_password(
        login: Callable[[str, str], LoginResult], accounts: CountingAccounts) -> None:
    assert login(ALICE, "right") is LoginResult.OK
    for _ in range(2):  # the throttle's max_account_failures; no delay before either
        assert login(ALICE, "wrong") is LoginResult.FAILED
    checks = accounts.argon2_checks
    assert login(ALICE, "right") is LoginResult.BLOCKED
    assert accounts.argon2_checks == checks


def test_password_change_invalidates_the_entry(login: Callable[[str, str], LoginResult],
                                               accounts: CountingAccounts) -> None:
    assert login(ALICE, "right") is LoginResult.OK
    accounts.delete(ALICE)
    accounts.add(ALICE, "changed")  # what `relay users del` + `relay users add` do
    assert login(ALICE, "right") is LoginResult.FAILED
    assert login(ALICE, "changed") is LoginResult.OK
    assert accounts.argon2_checks == 3
    assert login(ALICE, "changed") is LoginResult.OK  # the new password is cached in turn
    assert accounts.argon2_checks == 3


def test_readding_the_same_password_still_reverifies(login: Callable[[str, str], LoginResult],
                                                     accounts: CountingAccounts) -> None:
    # A new salt means a new stored hash: the old entry must not vouch for it.
    assert login(ALICE, "right") is LoginResult.OK
    accounts.delete(ALICE)
    accounts.add(ALICE, "right")
    assert login(ALICE, "right") is LoginResult.OK
    assert accounts.argon2_checks == 2


def test_account_deletion_invalidates_the_entry(login: Callable[[str, str], LoginResult],
                                                accounts: CountingAccounts) -> None:
    assert login(ALICE, "right") is LoginResult.OK
    accounts.delete(ALICE)
    assert login(ALICE, "right") is LoginResult.FAILED
    assert accounts.argon2_checks == 2


def test_the_entry_expires_after_the_ttl(login: Callable[[str, str], LoginResult],
                                         accounts: CountingAccounts, clock: FakeClock) -> None:
    assert login(ALICE, "right") is LoginResult.OK
    clock.now += 3599.0
    assert login(ALICE, "right") is LoginResult.OK
    assert accounts.argon2_checks == 1
    clock.now += 1.0
    assert login(ALICE, "right") is LoginResult.OK
    assert accounts.argon2_checks == 2


def test_the_cache_size_is_bounded(accounts: CountingAccounts, throttle: AuthThrottle,
                                   clock: FakeClock, run_async: Callable[..., object]) -> None:
    for user in ("bob", "carol"):
        accounts.add(f"{user}@example.test", "right")
    cache = LoginCache(ttl=3600.0, max_entries=2, clock=clock)
    auth = Authenticator(accounts, throttle, cache)

    async def main() -> None:
        for user in ("alice", "bob", "carol", "alice"):
            result, _ = await auth.login("pop3", IP, f"{user}@example.test", "right")
            assert result is LoginResult.OK

    run_async(main)
    assert len(cache) == 2
    assert accounts.argon2_checks == 4  # alice was evicted by carol and checked again


def test_ttl_zero_disables_the_cache(accounts: CountingAccounts, throttle: AuthThrottle,
                                     clock: FakeClock, run_async: Callable[..., object]) -> None:
    auth = Authenticator(accounts, throttle, LoginCache(ttl=0, clock=clock))
    hits, misses = cache_count("hit"), cache_count("miss")

    async def main() -> None:
        for _ in range(3):
            result, _ = await auth.login("smtp", IP, ALICE, "right")
            assert result is LoginResult.OK

    run_async(main)
    assert accounts.argon2_checks == 3
    assert (cache_count("hit"), cache_count("miss")) == (hits, misses)  # no lookups at all


def test_an_unknown_account_is_a_miss_and_fails(login: Callable[[str, str], LoginResult],
                                                accounts: CountingAccounts) -> None:
    misses = cache_count("miss")
    assert login("nobody@example.test", "right") is LoginResult.FAILED
    assert accounts.argon2_checks == 1  # the dummy check: timing does not reveal accounts
    assert cache_count("miss") - misses == 1
