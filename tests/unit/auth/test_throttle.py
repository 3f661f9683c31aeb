"""AuthThrottle (delays and blocks after failed logins) and ConnectionLimiter, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.auth.throttle import AuthThrottle, ConnectionLimiter, client_key
from support.clock import FakeClock


@pytest.fixture
def throttle(clock: FakeClock) -> AuthThrottle:
    return AuthThrottle(clock)


def fail(throttle: AuthThrottle, times: int, ip: str = "192.0.2.1",
         account: str | None = "alice@example.test") -> None:
    for _ in range(times):
        throttle.failure(ip, account)


# ---- delays -----------------------------------------------------------------------------------


def test_no_delay_without_failures(throttle: AuthThrottle) -> None:
    assert throttle.delay("192.0.2.1", "alice@example.test") == 0.0


@pytest.mark.parametrize(("failures", "expected"),
                         [(1, 0.0), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 15.0),
                          (9, 15.0)])
def test_delay_doubles_after_two_free_failures_and_is_capped(throttle: AuthThrottle,
                                                             failures: int,
                                                             expected: float) -> None:
    fail(throttle, failures)
    assert throttle.delay("192.0.2.1", "alice@example.test") == expected


def test_delay_follows_the_client_whatever_account_it_tries(throttle: AuthThrottle) -> None:
    for n in range(4):
        throttle.failure("192.0.2.1", f"user{n}@example.test")
    assert throttle.delay("192.0.2.1", "someone-new@example.test") == 4.0


def test_delay_follows_the_account_whatever_client_tries_it(throttle: AuthThrottle) -> None:
    for n in range(4):
        throttle.failure(f"192.0.2.{n}", "alice@example.test")
    assert throttle.delay("198.51.100.7", "alice@example.test") == 4.0
    assert throttle.delay("198.51.100.7", "bob@example.test") == 0.0


def test_account_names_are_compared_case_insensitively(throttle: AuthThrottle) -> None:
    fail(throttle, 3, ip="192.0.2.1", account="Alice@Example.TEST")
    assert throttle.delay("203.0.113.9", "alice@example.test") == 2.0


def test_delay_is_forgotten_after_the_window(clock: FakeClock, throttle: AuthThrottle) -> None:
    fail(throttle, 5)
    clock.advance(throttle.window + 1)
    assert throttle.delay("192.0.2.1", "alice@example.test") == 0.0


# ---- blocks -----------------------------------------------------------------------------------


def test_client_is_blocked_after_ten_failures(throttle: AuthThrottle) -> None:
    for n in range(9):
        throttle.failure("192.0.2.1", f"user{n}@example.test")
    assert not throttle.blocked("192.0.2.1", "other@example.test")
    throttle.failure("192.0.2.1", "user9@example.test")
    assert throttle.blocked("192.0.2.1", "other@example.test")
    assert throttle.blocked("192.0.2.1")
    assert not throttle.blocked("192.0.2.2")


def test_account_is_blocked_after_twenty_failures_from_many_clients(
        throttle: AuthThrottle) -> None:
    for n in range(19):
        throttle.failure(f"192.0.2.{n}", "alice@example.test")
    assert not throttle.blocked("203.0.113.1", "alice@example.test")
    throttle.failure("192.0.2.200", "alice@example.test")
    assert throttle.blocked("203.0.113.1", "alice@example.test")
    assert not throttle.blocked("203.0.113.1", "bob@example.test")
    assert not throttle.blocked("203.0.113.1")


def test_block_lifts_when_the_failures_leave_the_window(clock: FakeClock,
                                                        throttle: AuthThrottle) -> None:
    fail(throttle, 10)
    clock.advance(throttle.window - 1)
    assert throttle.blocked("192.0.2.1")
    clock.advance(2)
    assert not throttle.blocked("192.0.2.1")
    assert throttle.delay("192.0.2.1") == 0.0


def test_window_slides(clock: FakeClock, throttle: AuthThrottle) -> None:
    fail(throttle, 9)
    clock.advance(800)
    fail(throttle, 1)
    assert throttle.blocked("192.0.2.1")  # ten within 900 s
    clock.advance(101)
    assert not throttle.blocked("192.0.2.1")  # the first nine expired
    assert throttle.delay("192.0.2.1") == 0.0  # one failure left: still free


def test_limits_are_configurable(clock: FakeClock) -> None:
    throttle = AuthThrottle(clock, max_ip_failures=3, window=60, free_failures=1,
                            base_delay=0.5, max_delay=1.0)
    fail(throttle, 1)
    assert throttle.delay("192.0.2.1") == 0.5
    fail(throttle, 2)
    assert throttle.delay("192.0.2.1") == 1.0
    assert throttle.blocked("192.0.2.1")
    clock.advance(61)
    assert not throttle.blocked("192.0.2.1")


def test_non_positive_limits_are_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        AuthThrottle(clock, max_entries=0)


# ---- success ----------------------------------------------------------------------------------


def test_success_resets_the_client_and_the_account(throttle: AuthThrottle) -> None:
    fail(throttle, 10)
    throttle.success("192.0.2.1", "alice@example.test")
    assert not throttle.blocked("192.0.2.1", "alice@example.test")
    assert throttle.delay("192.0.2.1", "alice@example.test") == 0.0
    assert len(throttle) == 0


def test_success_leaves_other_clients_penalised(throttle: AuthThrottle) -> None:
    fail(throttle, 4, ip="192.0.2.1", account="alice@example.test")
    fail(throttle, 4, ip="192.0.2.2", account="mallory@example.test")
    throttle.success("192.0.2.1", "alice@example.test")
    assert throttle.delay("192.0.2.2", "mallory@example.test") == 4.0


# ---- client keys ------------------------------------------------------------------------------


def test_ipv6_clients_are_counted_per_64(throttle: AuthThrottle) -> None:
    for n in range(10):
        throttle.failure(f"2001:db8:1:2::{n + 1:x}", None)
    assert throttle.blocked("2001:db8:1:2:ffff::1")
    assert not throttle.blocked("2001:db8:1:3::1")


def test_client_key_normalises_addresses() -> None:
    assert client_key("2001:db8::1") == "2001:db8::/64"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("unix-socket") == "unix-socket"


# ---- bounded memory ---------------------------------------------------------------------------


def test_expired_entries_are_dropped_on_the_next_failure(clock: FakeClock,
                                                         throttle: AuthThrottle) -> None:
    for n in range(50):
        throttle.failure(f"192.0.2.{n}", f"u{n}@example.test")
    assert len(throttle) == 100
    clock.advance(throttle.window + 1)
    throttle.failure("198.51.100.1", None)
    assert len(throttle) == 1


def test_a_full_table_evicts_the_least_recently_failing(clock: FakeClock) -> None:
    throttle = AuthThrottle(clock, max_entries=3)
    for n in range(5):
        clock.advance(1)
        fail(throttle, 3, ip=f"192.0.2.{n}", account=None)
    assert len(throttle) == 3
    assert throttle.delay("192.0.2.4") == 2.0
    assert throttle.delay("192.0.2.0") == 0.0  # evicted


_IPS = st.sampled_from([f"192.0.2.{n}" for n in range(12)] + ["2001:db8::1", "2001:db8:1::1"])
_ACCOUNTS = st.none() | st.sampled_from([f"u{n}@example.test" for n in range(12)])
_OPS = st.lists(st.tuples(st.sampled_from(["failure", "success", "delay", "blocked", "tick"]),
                          _IPS, _ACCOUNTS, st.floats(min_value=0, max_value=400)),
                max_size=200)


@given(ops=_OPS, cap=st.integers(min_value=1, max_value=8))
def test_random_sequences_never_exceed_the_cap(ops: list[tuple[str, str, str | None, float]],
                                               cap: int) -> None:
    clock = FakeClock()
    throttle = AuthThrottle(clock, max_entries=cap)
    for op, ip, account, seconds in ops:
        if op == "tick":
            clock.advance(seconds)
        elif op == "delay":
            assert 0.0 <= throttle.delay(ip, account) <= throttle.max_delay
        elif op == "blocked":
            throttle.blocked(ip, account)
        else:
            getattr(throttle, op)(ip, account)
        assert len(throttle) <= cap


# ---- ConnectionLimiter ------------------------------------------------------------------------


def test_limiter_admits_up_to_the_per_ip_limit() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_ip=2)
    assert limiter.admit("192.0.2.1")
    assert limiter.admit("192.0.2.1")
    assert not limiter.admit("192.0.2.1")
    assert limiter.admit("192.0.2.2")
    assert limiter.count("192.0.2.1") == 2 and limiter.total == 3


def test_limiter_admits_up_to_the_total_limit() -> None:
    limiter = ConnectionLimiter(max_total=2, max_per_ip=5)
    assert limiter.admit("192.0.2.1") and limiter.admit("192.0.2.2")
    assert not limiter.admit("192.0.2.3")


def test_release_frees_a_slot_and_forgets_idle_clients() -> None:
    limiter = ConnectionLimiter(max_total=1, max_per_ip=1)
    assert limiter.admit("192.0.2.1")
    limiter.release("192.0.2.1")
    assert len(limiter) == 0 and limiter.total == 0
    assert limiter.admit("192.0.2.2")


def test_release_without_admit_is_a_bug() -> None:
    limiter = ConnectionLimiter(max_total=1, max_per_ip=1)
    with pytest.raises(ValueError):
        limiter.release("192.0.2.1")


def test_limiter_counts_ipv6_per_64() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_ip=1)
    assert limiter.admit("2001:db8::1")
    assert not limiter.admit("2001:db8::2")
    assert limiter.admit("2001:db8:0:1::1")


def test_limiter_with_key_str_counts_each_address() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_ip=1, key=str)
    assert limiter.admit("2001:db8::1")
    assert limiter.admit("2001:db8::2")
    assert not limiter.admit("2001:db8::1")
    limiter.release("2001:db8::1")
    assert limiter.count("2001:db8::1") == 0 and limiter.count("2001:db8::2") == 1


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["192.0.2.1", "192.0.2.2",
                                                          "192.0.2.3"])), max_size=100))
def test_limiter_matches_a_counting_model(ops: list[tuple[bool, str]]) -> None:
    limiter = ConnectionLimiter(max_total=4, max_per_ip=2)
    model: dict[str, int] = {}
    for admit, ip in ops:
        if admit:
            expected = sum(model.values()) < 4 and model.get(ip, 0) < 2
            assert limiter.admit(ip) == expected
            if expected:
                model[ip] = model.get(ip, 0) + 1
        elif model.get(ip):
            limiter.release(ip)
            model[ip] -= 1
        assert limiter.total == sum(model.values())
        assert len(limiter) == sum(1 for n in model.values() if n)
