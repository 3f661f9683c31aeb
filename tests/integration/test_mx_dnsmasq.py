"""MxResolver against a real dnsmasq on 127.0.0.1: the wire, dnspython and our mapping."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dnsmasq import Dnsmasq

from relay.delivery.mx import DnsFailure, MxHost, MxResolver, Route


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    dns = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ttl=300)
    (dns.mx("example.test", "mx2.example.test", 20)
        .mx("example.test", "mx1.example.test", 10)
        .host("mx1.example.test", "127.0.0.2")
        .host("mx2.example.test", "127.0.0.3")
        .mx("equal.test", "a.equal.test", 10).mx("equal.test", "b.equal.test", 10)
        .mx("equal.test", "c.equal.test", 20)
        .host("a.equal.test", "127.0.0.2").host("b.equal.test", "127.0.0.3")
        .host("c.equal.test", "127.0.0.4")
        .host("implicit.test", "127.0.0.5")  # A only, no MX
        .null_mx("nullmx.test")
        .servfail("servfail.test")
        .unresponsive("slow.test")
        .mx("skip.test", "gone.skip.test", 10)  # NXDOMAIN exchanger
        .mx("skip.test", "mx.skip.test", 20).host("mx.skip.test", "127.0.0.3")
        .mx("noaddr.test", "gone.noaddr.test", 10)
        .mx("partial.test", "mx.servfail.test", 10)
        .mx("partial.test", "mx.partial.test", 20).host("mx.partial.test", "127.0.0.2")
        .mx("soft.test", "mx.servfail.test", 10).mx("soft.test", "gone.soft.test", 20)
        .mx("ttl.test", "mx.ttl.test", 10).host("mx.ttl.test", "127.0.0.6", ttl=5))
    with dns:
        yield dns


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(dns: Dnsmasq, **kwargs: object) -> MxResolver:
    kwargs.setdefault("rng", random.Random(1))
    kwargs.setdefault("timeout", 2.0)
    return MxResolver([dns.nameserver], **kwargs)  # type: ignore[arg-type]


def resolve(r: MxResolver, domain: str) -> Route:
    return asyncio.run(asyncio.wait_for(r.resolve(domain), 10))


def failure(r: MxResolver, domain: str) -> DnsFailure:
    with pytest.raises(DnsFailure) as info:
        resolve(r, domain)
    return info.value


def test_lowest_preference_first(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq)
    assert resolve(r, "example.test") == [MxHost("mx1.example.test", 10, ("127.0.0.2",)),
                                          MxHost("mx2.example.test", 20, ("127.0.0.3",))]
    # MX, then A and AAAA for each exchanger (no AAAA records: NODATA).
    assert r.lookups == {"ok": 3, "nodata": 2}


def test_domain_is_case_and_dot_insensitive(dnsmasq: Dnsmasq) -> None:
    assert [h.name for h in resolve(resolver(dnsmasq), "Example.TEST.")] == \
        ["mx1.example.test", "mx2.example.test"]


def test_equal_preferences_both_present_then_the_worse(dnsmasq: Dnsmasq) -> None:
    orders = set()
    for seed in range(8):
        route = resolve(resolver(dnsmasq, rng=random.Random(seed)), "equal.test")
        assert {h.name for h in route[:2]} == {"a.equal.test", "b.equal.test"}
        assert route[2] == MxHost("c.equal.test", 20, ("127.0.0.4",))
        orders.add(tuple(h.name for h in route))
    assert len(orders) == 2  # the tie really is shuffled


def test_no_mx_uses_the_domain_as_implicit_mx(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq)
    assert resolve(r, "implicit.test") == [MxHost("implicit.test", 0, ("127.0.0.5",))]
    assert r.lookups == {"nodata": 2, "ok": 1}  # MX nodata, A ok, AAAA nodata


def test_null_mx_is_permanent_5_1_10(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq)
    f = failure(r, "nullmx.test")
    assert (f.permanent, f.status, f.result) == (True, "5.1.10", "nullmx")
    assert "does not accept mail" in f.text
    assert r.lookups == {"nullmx": 1}
    assert ("nullmx.test", "A") not in dnsmasq.queries()  # no fallback to an address


def test_nxdomain_is_permanent_5_1_2(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq)
    f = failure(r, "nosuch.test")
    assert (f.permanent, f.status, f.result) == (True, "5.1.2", "nxdomain")
    assert r.lookups == {"nxdomain": 1}


def test_servfail_is_temporary_4_4_3(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq)
    f = failure(r, "servfail.test")
    assert (f.permanent, f.status, f.result) == (False, "4.4.3", "servfail")
    assert r.lookups == {"servfail": 1}


def test_no_answer_is_temporary_4_4_3_timeout(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq, timeout=0.3)
    f = failure(r, "slow.test")
    assert (f.permanent, f.status, f.result) == (False, "4.4.3", "timeout")


def test_exchanger_without_address_is_skipped(dnsmasq: Dnsmasq) -> None:
    assert resolve(resolver(dnsmasq), "skip.test") == [MxHost("mx.skip.test", 20, ("127.0.0.3",))]


def test_no_exchanger_with_address_is_permanent_5_1_2(dnsmasq: Dnsmasq) -> None:
    f = failure(resolver(dnsmasq), "noaddr.test")
    assert (f.permanent, f.status) == (True, "5.1.2")


def test_exchanger_with_servfail_is_skipped_when_another_resolves(dnsmasq: Dnsmasq) -> None:
    assert resolve(resolver(dnsmasq), "partial.test") == \
        [MxHost("mx.partial.test", 20, ("127.0.0.2",))]


def test_temporary_failure_dominates_when_no_exchanger_resolves(dnsmasq: Dnsmasq) -> None:
    f = failure(resolver(dnsmasq), "soft.test")
    assert (f.permanent, f.status) == (False, "4.4.3")


def test_address_literal_needs_no_dns(dnsmasq: Dnsmasq) -> None:
    before = len(dnsmasq.queries())
    r = resolver(dnsmasq)
    assert resolve(r, "[127.0.0.2]") == [MxHost("[127.0.0.2]", 0, ("127.0.0.2",))]
    assert resolve(r, "[IPv6:::1]") == [MxHost("[IPv6:::1]", 0, ("::1",))]
    assert len(dnsmasq.queries()) == before and not r.lookups


def test_second_resolve_is_served_from_cache_until_the_ttl(dnsmasq: Dnsmasq) -> None:
    clock = FakeClock()
    r = resolver(dnsmasq, clock=clock)
    first = resolve(r, "ttl.test")
    sent = len(dnsmasq.queries("ttl.test")) + len(dnsmasq.queries("mx.ttl.test"))
    lookups = sum(r.lookups.values())
    clock.now += 4.9  # mx.ttl.test's A record has TTL 5, the MX 300: the route lives 5 s
    assert resolve(r, "ttl.test") == first
    assert len(dnsmasq.queries("ttl.test")) + len(dnsmasq.queries("mx.ttl.test")) == sent
    assert sum(r.lookups.values()) == lookups
    clock.now += 0.2
    assert resolve(r, "ttl.test") == first
    assert dnsmasq.queries("ttl.test") == [("ttl.test", "MX")] * 2
    assert sorted(dnsmasq.queries("mx.ttl.test")) == [("mx.ttl.test", "A")] * 2 + \
        [("mx.ttl.test", "AAAA")] * 2
    assert sum(r.lookups.values()) == 2 * lookups


def test_nxdomain_is_cached_briefly(dnsmasq: Dnsmasq) -> None:
    clock = FakeClock()
    r = resolver(dnsmasq, clock=clock)
    failure(r, "cached-nx.test")
    failure(r, "cached-nx.test")
    assert dnsmasq.queries("cached-nx.test") == [("cached-nx.test", "MX")]
    clock.now += 61  # past the 60 s negative bound
    failure(r, "cached-nx.test")
    assert len(dnsmasq.queries("cached-nx.test")) == 2


def test_temporary_failures_are_not_cached(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq)
    failure(r, "servfail.test")
    failure(r, "servfail.test")
    assert r.lookups == {"servfail": 2}


def test_harness_answers_only_what_it_was_given(tmp_path: Path) -> None:
    with Dnsmasq(tmp_path).host("only.test", "127.0.0.7") as dns:
        r = MxResolver([dns.nameserver], timeout=2.0)
        assert resolve(r, "only.test") == [MxHost("only.test", 0, ("127.0.0.7",))]
        assert failure(r, "example.test").status == "5.1.2"
    assert dns._proc is None
