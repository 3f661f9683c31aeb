"""LoginCache (Dovecot auth_cache): hits, invalidation by the stored hash, TTL, LRU bound."""

from __future__ import annotations

import pytest

from relay.auth.cache import LoginCache
from support.clock import FakeClock

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
OTHER_HASH = "$argon2id$v=19$m=65536,t=3,p=4$b3RoZXJzYWx0$b3RoZXJoYXNob3RoZXJoYXNo"


@pytest.fixture
def cache(clock: FakeClock) -> LoginCache:
    return LoginCache(ttl=60.0, max_entries=3, clock=clock)


def test_nothing_hits_before_a_verified_login(cache: LoginCache) -> None:
    assert not cache.hit("alice@example.test", HASH, "pw")


def test_the_verified_password_hits(cache: LoginCache) -> None:
    cache.remember("alice@example.test", HASH, "pw")
    assert cache.hit("alice@example.test", HASH, "pw")


def test_a_wrong_password_misses_and_leaves_the_entry(cache: LoginCache) -> None:
    cache.remember("alice@example.test", HASH, "pw")
    assert not cache.hit("alice@example.test", HASH, "pW")
    assert not cache.hit("alice@example.test", HASH, "")
    assert cache.hit("alice@example.test", HASH, "pw")  # not evicted by a guesser


def test_another_account_misses(cache: LoginCache) -> None:
    cache.remember("alice@example.test", HASH, "pw")
    assert not cache.hit("bob@example.test", HASH, "pw")


def test_a_changed_stored_hash_misses(cache: LoginCache) -> None:
    cache.remember("alice@example.test", HASH, "pw")
    assert not cache.hit("alice@example.test", OTHER_HASH, "pw")


def test_the_entry_expires_at_the_ttl(clock: FakeClock, cache: LoginCache) -> None:
    cache.remember("alice@example.test", HASH, "pw")
    clock.advance(59.9)
    assert cache.hit("alice@example.test", HASH, "pw")
    clock.advance(0.1)
    assert not cache.hit("alice@example.test", HASH, "pw")
    assert len(cache) == 0


def test_a_hit_does_not_extend_the_ttl(clock: FakeClock, cache: LoginCache) -> None:
    cache.remember("alice@example.test", HASH, "pw")
    for _ in range(5):
        clock.advance(15.0)
        cache.hit("alice@example.test", HASH, "pw")
    assert not cache.hit("alice@example.test", HASH, "pw")  # 75 s after the argon2id check


def test_remembering_again_restarts_the_ttl(clock: FakeClock, cache: LoginCache) -> None:
    cache.remember("alice@example.test", HASH, "pw")
    clock.advance(50.0)
    cache.remember("alice@example.test", HASH, "pw")
    clock.advance(50.0)
    assert cache.hit("alice@example.test", HASH, "pw")


def test_size_is_bounded_by_evicting_the_least_recently_used(cache: LoginCache) -> None:
    for user in ("a", "b", "c"):
        cache.remember(f"{user}@example.test", HASH, "pw")
    assert cache.hit("a@example.test", HASH, "pw")  # a is now the most recently used
    cache.remember("d@example.test", HASH, "pw")
    assert len(cache) == 3
    assert not cache.hit("b@example.test", HASH, "pw")
    for user in ("a", "c", "d"):
        assert cache.hit(f"{user}@example.test", HASH, "pw"), user


def test_many_accounts_never_exceed_the_bound(clock: FakeClock) -> None:
    cache = LoginCache(ttl=60.0, max_entries=100, clock=clock)
    for n in range(1000):
        cache.remember(f"u{n}@example.test", HASH, "pw")
    assert len(cache) == 100
    assert cache.hit("u999@example.test", HASH, "pw")
    assert not cache.hit("u899@example.test", HASH, "pw")


def test_ttl_zero_disables_the_cache(clock: FakeClock) -> None:
    cache = LoginCache(ttl=0, clock=clock)
    cache.remember("alice@example.test", HASH, "pw")
    assert not cache.enabled
    assert len(cache) == 0
    assert not cache.hit("alice@example.test", HASH, "pw")


def test_the_password_is_not_kept_in_the_clear(cache: LoginCache) -> None:
    cache.remember("alice@example.test", HASH, "correct horse battery staple")
    assert "correct horse" not in repr(cache._entries)


def test_digests_are_keyed_per_cache(clock: FakeClock) -> None:
    one, two = LoginCache(clock=clock), LoginCache(clock=clock)
    assert one._digest(HASH, "pw") != two._digest(HASH, "pw")


def test_a_password_that_is_not_valid_utf8_still_works(cache: LoginCache) -> None:
    cache.remember("alice@example.test", HASH, "p\udcffw")
    assert cache.hit("alice@example.test", HASH, "p\udcffw")
    assert not cache.hit("alice@example.test", HASH, "p\udcfew")


@pytest.mark.parametrize(("ttl", "size"), [(-1.0, 10), (60.0, 0)])
def test_bad_limits_are_refused(ttl: float, size: int) -> None:
    with pytest.raises(ValueError):
        LoginCache(ttl=ttl, max_entries=size)
