"""MX ordering, null MX, the exception mapping, and MxResolver's rules and cache.

The resolver tests run the whole of dnspython's asyncresolver; only the socket is
replaced, by `ZoneNameserver` below (a dnspython Nameserver answering from a dict), so
answers, TTLs, NXDOMAIN and SERVFAIL reach MxResolver exactly as dnspython builds them.
The same behaviours are checked over the wire in tests/integration/test_mx_dnsmasq.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery import mx
from relay.delivery.mx import (DnsFailure, MxHost, MxResolver, failure_for, is_null_mx,
                               order_mx, parse_address_literal, parse_nameserver)

# --- order_mx ------------------------------------------------------------------------------


def test_order_is_by_preference_lowest_first() -> None:
    records = [(30, "c.example."), (10, "a.example."), (20, "b.example.")]
    assert order_mx(records, random.Random(0)) == ["a.example", "b.example", "c.example"]


def test_equal_preferences_are_shuffled_by_the_rng_but_stay_grouped() -> None:
    records = [(10, "a1.test"), (10, "a2.test"), (10, "a3.test"),
               (20, "b1.test"), (20, "b2.test"), (5, "first.test")]
    orders = set()
    for seed in range(20):
        got = order_mx(records, random.Random(seed))
        assert got[0] == "first.test"
        assert set(got[1:4]) == {"a1.test", "a2.test", "a3.test"}
        assert set(got[4:]) == {"b1.test", "b2.test"}
        orders.add(tuple(got))
    assert len(orders) > 3


def test_same_seed_same_order_whatever_the_input_order() -> None:
    records = [(10, "a.test"), (10, "b.test"), (10, "c.test"), (10, "d.test")]
    assert order_mx(records, random.Random(7)) == order_mx(records[::-1], random.Random(7))


def test_duplicates_removed_and_names_normalised() -> None:
    records = [(10, "MX.Example."), (10, "mx.example"), (20, "mx.example."), (20, "b.example")]
    assert order_mx(records, random.Random(0)) == ["mx.example", "b.example"]


def test_root_exchanger_is_never_a_host() -> None:
    assert order_mx([(0, "."), (10, "mx.test.")], random.Random(0)) == ["mx.test"]


@given(st.lists(st.tuples(st.integers(0, 65535), st.sampled_from(
    ["a.test", "B.test.", "c.test", "a.TEST.", "d.test", "."])), max_size=12), st.integers())
def test_order_property_sorted_unique_complete(records: list[tuple[int, str]], seed: int) -> None:
    got = order_mx(records, random.Random(seed))
    best: dict[str, int] = {}
    for pref, name in records:
        key = name.lower().rstrip(".")
        if key:
            best[key] = min(pref, best.get(key, pref))
    assert sorted(got) == sorted(best)
    assert [best[n] for n in got] == sorted(best[n] for n in got)


def test_null_mx_detection_rfc_7505() -> None:
    assert is_null_mx([(0, ".")])
    assert is_null_mx([(0, "")])
    assert not is_null_mx([])
    assert not is_null_mx([(0, "."), (10, "mx.test.")])
    assert not is_null_mx([(0, "mx.test.")])


def test_address_literals() -> None:
    assert parse_address_literal("example.test") is None
    assert parse_address_literal("[127.0.0.2]") == "127.0.0.2"
    assert parse_address_literal("[IPv6:0:0::1]") == "::1"
    assert parse_address_literal("[ipv6:::1]") == "::1"
    for bad in ("[300.0.0.1]", "[127.0.0.1", "[IPv6:127.0.0.1]", "[::1]", "[]"):
        with pytest.raises(DnsFailure) as info:
            parse_address_literal(bad)
        assert (info.value.permanent, info.value.status) == (True, "5.1.3")


def test_nameserver_specs() -> None:
    def spec(s: str) -> tuple[str, int]:
        ns = parse_nameserver(s)
        return ns.address, ns.port
    assert spec("127.0.0.1") == ("127.0.0.1", 53)
    assert spec("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert spec("::1") == ("::1", 53)
    assert spec("[::1]:5353") == ("::1", 5353)
    for bad in ("localhost", "127.0.0.1:0", "127.0.0.1:x", "1.2.3.4:70000"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


# --- failure_for ---------------------------------------------------------------------------

QNAME = dns.name.from_text("example.test")


def _response(rcode: int) -> dns.message.Message:
    r = dns.message.make_response(dns.message.make_query(QNAME, "MX"))
    r.set_rcode(rcode)
    return r


def _no_nameservers(*errors: tuple[Any, ...]) -> dns.resolver.NoNameservers:
    return dns.resolver.NoNameservers(request=dns.message.make_query(QNAME, "MX"),
                                      errors=list(errors))


@pytest.mark.parametrize(("exc", "permanent", "status", "result"), [
    (dns.resolver.NXDOMAIN(qnames=[QNAME], responses={QNAME: _response(dns.rcode.NXDOMAIN)}),
     True, "5.1.2", "nxdomain"),
    (dns.resolver.NoAnswer(response=_response(dns.rcode.NOERROR)), True, "5.1.2", "nodata"),
    (dns.resolver.LifetimeTimeout(timeout=1.0, errors=[]), False, "4.4.3", "timeout"),
    (dns.exception.Timeout(), False, "4.4.3", "timeout"),
    (_no_nameservers(("127.0.0.1", False, 53, "SERVFAIL", _response(dns.rcode.SERVFAIL))),
     False, "4.4.3", "servfail"),
    (_no_nameservers(("127.0.0.1", False, 53, "REFUSED", _response(dns.rcode.REFUSED))),
     False, "4.4.3", "error"),
    (_no_nameservers(("127.0.0.1", False, 53, ConnectionRefusedError(), None)),
     False, "4.4.3", "error"),
    (_no_nameservers(), False, "4.4.3", "error"),
    (dns.resolver.NoResolverConfiguration(), False, "4.4.3", "error"),
    (OSError("network unreachable"), False, "4.4.3", "error"),
    (dns.exception.FormError(), False, "4.4.3", "error"),
    (dns.name.EmptyLabel(), True, "5.1.3", "error"),
    (dns.name.LabelTooLong(), True, "5.1.3", "error"),
    (dns.resolver.YXDOMAIN(), True, "5.1.3", "error"),
])
def test_each_dnspython_failure_maps_to_one_outcome(exc: Exception, permanent: bool,
                                                     status: str, result: str) -> None:
    f = failure_for(exc, "example.test", "MX")
    assert (f.permanent, f.status, f.result) == (permanent, status, result)
    assert f.status[0] == ("5" if permanent else "4")  # RFC 3463: class matches
    assert f.text.isascii() and "\n" not in f.text


def test_a_bug_is_not_a_dns_failure() -> None:
    with pytest.raises(TypeError):
        failure_for(ValueError("oops"), "example.test", "MX")


# --- MxResolver over an in-memory nameserver ---------------------------------------------


class ZoneNameserver(dns.nameserver.Nameserver):
    """A dnspython nameserver answering from `zone` instead of a socket.

    zone[name][rdtype] = (ttl, [rdata text]); a name absent from zone is NXDOMAIN; a
    present name without the type is NODATA; names in `servfail` answer SERVFAIL. With
    `soa` = (ttl, minimum), negative answers carry an SOA in the authority section.
    """

    def __init__(self, zone: dict[str, dict[str, tuple[int, list[str]]]],
                 servfail: set[str] | None = None, soa: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.zone = zone
        self.servfail = servfail or set()
        self.soa = soa
        self.asked: list[tuple[str, str]] = []

    def __str__(self) -> str:
        return "zone"

    def kind(self) -> str:
        return "zone"

    def is_always_max_size(self) -> bool:
        return False

    def answer_nameserver(self) -> str:
        return "127.0.0.1"

    def answer_port(self) -> int:
        return 53

    async def async_query(self, request: dns.message.QueryMessage, timeout: float,
                          source: str | None, source_port: int, max_size: bool,
                          backend: dns.asyncbackend.Backend, one_rr_per_rrset: bool = False,
                          ignore_trailing: bool = False) -> dns.message.Message:
        question = request.question[0]
        name = question.name.to_text(omit_final_dot=True)
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.asked.append((name, rdtype))
        response = dns.message.make_response(request)
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.zone:
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._add_soa(response)
        elif rdtype in self.zone[name]:
            ttl, rdatas = self.zone[name][rdtype]
            response.answer.append(dns.rrset.from_text(question.name, ttl, "IN", rdtype, *rdatas))
        else:
            self._add_soa(response)
        # Through the wire format and back, as a real reply would arrive.
        return dns.message.from_wire(response.to_wire())

    def _add_soa(self, response: dns.message.Message) -> None:
        if self.soa is not None:
            ttl, minimum = self.soa
            response.authority.append(dns.rrset.from_text(
                "test.", ttl, "IN", "SOA", f"ns.test. admin.test. 1 3600 600 86400 {minimum}"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(ns: ZoneNameserver, clock: FakeClock | None = None) -> MxResolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [ns]
    return MxResolver([], timeout=2.0, rng=random.Random(0), clock=clock or FakeClock(),
                      resolver=resolver)


Run = Callable[..., Any]


def resolve(run_async: Run, r: MxResolver, domain: str) -> list[MxHost]:
    return run_async(lambda: r.resolve(domain))  # type: ignore[no-any-return]


def fails(run_async: Run, r: MxResolver, domain: str) -> DnsFailure:
    with pytest.raises(DnsFailure) as info:
        resolve(run_async, r, domain)
    return info.value


BASIC = {
    "example.test": {"MX": (300, ["10 mx1.example.test.", "20 mx2.example.test."])},
    "mx1.example.test": {"A": (120, ["127.0.0.2"]), "AAAA": (600, ["::1"])},
    "mx2.example.test": {"A": (900, ["127.0.0.3", "127.0.0.4"])},
}


def test_route_has_preferences_and_ipv4_first(run_async: Run) -> None:
    r = make(ZoneNameserver(BASIC))
    first, second = resolve(run_async, r, "example.test")
    assert first == MxHost("mx1.example.test", 10, ("127.0.0.2", "::1"))
    # Within one family, addresses keep the order the server sent (dnspython shuffles
    # an RRset when writing it, like a round-robin server).
    assert (second.name, second.preference) == ("mx2.example.test", 20)
    assert sorted(second.addresses) == ["127.0.0.3", "127.0.0.4"]
    assert r.lookups == {"ok": 4, "nodata": 1}


def test_cache_lives_for_the_smallest_ttl_used(run_async: Run) -> None:
    ns, clock = ZoneNameserver(BASIC), FakeClock()
    r = make(ns, clock)
    first = resolve(run_async, r, "example.test")
    asked = len(ns.asked)
    clock.now += 119.9  # mx1's A has TTL 120; the NODATA for mx2's AAAA does not count
    assert resolve(run_async, r, "example.test") == first
    assert len(ns.asked) == asked
    clock.now += 0.1
    resolve(run_async, r, "example.test")
    assert len(ns.asked) == 2 * asked


def test_cache_is_capped_at_max_ttl(run_async: Run) -> None:
    ns, clock = ZoneNameserver({"long.test": {"MX": (86400, ["10 long.test."]),
                                              "A": (86400, ["127.0.0.2"])}}), FakeClock()
    r = make(ns, clock)
    resolve(run_async, r, "long.test")
    clock.now += mx.MAX_TTL - 1
    resolve(run_async, r, "long.test")
    assert len(ns.asked) == 3
    clock.now += 1
    resolve(run_async, r, "long.test")
    assert len(ns.asked) == 6


def test_zero_ttl_is_not_cached(run_async: Run) -> None:
    ns = ZoneNameserver({"zero.test": {"MX": (0, ["10 zero.test."]), "A": (0, ["127.0.0.2"])}})
    r = make(ns)
    resolve(run_async, r, "zero.test")
    resolve(run_async, r, "zero.test")
    assert len(ns.asked) == 6


def test_nxdomain_cached_for_soa_negative_ttl_within_bound(run_async: Run) -> None:
    ns, clock = ZoneNameserver({}, soa=(3600, 30)), FakeClock()
    r = make(ns, clock)
    assert fails(run_async, r, "gone.test").status == "5.1.2"
    clock.now += 29.9
    assert fails(run_async, r, "gone.test").result == "nxdomain"
    assert len(ns.asked) == 1
    clock.now += 0.1
    fails(run_async, r, "gone.test")
    assert len(ns.asked) == 2


def test_nxdomain_without_soa_cached_for_the_bound(run_async: Run) -> None:
    ns, clock = ZoneNameserver({}), FakeClock()
    r = make(ns, clock)
    fails(run_async, r, "gone.test")
    clock.now += mx.NEGATIVE_TTL - 0.1
    fails(run_async, r, "gone.test")
    assert len(ns.asked) == 1
    clock.now += 0.1
    fails(run_async, r, "gone.test")
    assert len(ns.asked) == 2


def test_null_mx_is_permanent_and_cached_for_its_ttl(run_async: Run) -> None:
    ns, clock = ZoneNameserver({"null.test": {"MX": (500, ["0 ."]), "A": (500, ["127.0.0.2"])}}), \
        FakeClock()
    r = make(ns, clock)
    f = fails(run_async, r, "null.test")
    assert (f.permanent, f.status) == (True, "5.1.10")
    clock.now += 499
    assert fails(run_async, r, "null.test").status == "5.1.10"
    assert ns.asked == [("null.test", "MX")]  # never falls back to the A record
    assert r.lookups == {"nullmx": 1}


def test_implicit_mx_route_bounded_by_the_mx_nodata(run_async: Run) -> None:
    ns, clock = ZoneNameserver({"bare.test": {"A": (3600, ["127.0.0.5"])}}, soa=(3600, 10)), \
        FakeClock()
    r = make(ns, clock)
    assert resolve(run_async, r, "bare.test") == [MxHost("bare.test", 0, ("127.0.0.5",))]
    clock.now += 9.9
    resolve(run_async, r, "bare.test")
    assert len(ns.asked) == 3
    clock.now += 0.1
    resolve(run_async, r, "bare.test")
    assert len(ns.asked) == 6


def test_no_mx_no_address_is_permanent_5_1_2(run_async: Run) -> None:
    r = make(ZoneNameserver({"empty.test": {"TXT": (300, ['"x"'])}}))
    f = fails(run_async, r, "empty.test")
    assert (f.permanent, f.status) == (True, "5.1.2")
    assert "no MX and no A/AAAA" in f.text


def test_skipped_exchanger_after_servfail_shortens_the_cache(run_async: Run) -> None:
    zone = {"mixed.test": {"MX": (3600, ["10 bad.test.", "20 good.test."])},
            "bad.test": {}, "good.test": {"A": (3600, ["127.0.0.2"])}}
    ns, clock = ZoneNameserver(zone, servfail={"bad.test"}), FakeClock()
    r = make(ns, clock)
    assert resolve(run_async, r, "mixed.test") == [MxHost("good.test", 20, ("127.0.0.2",))]
    asked = len(ns.asked)
    clock.now += mx.NEGATIVE_TTL
    resolve(run_async, r, "mixed.test")
    assert len(ns.asked) == 2 * asked  # looked again: bad.test may be back


def test_temporary_failure_dominates_permanent_ones(run_async: Run) -> None:
    zone = {"soft.test": {"MX": (300, ["10 bad.test.", "20 nosuch.test."])}, "bad.test": {}}
    r = make(ZoneNameserver(zone, servfail={"bad.test"}))
    f = fails(run_async, r, "soft.test")
    assert (f.permanent, f.status, f.result) == (False, "4.4.3", "servfail")
    f = fails(run_async, r, "soft.test")  # and temporary failures are never cached
    assert r.lookups["servfail"] == 4


def test_servfail_on_mx_is_temporary_and_not_cached(run_async: Run) -> None:
    ns = ZoneNameserver({}, servfail={"down.test"})
    r = make(ns)
    for _ in range(2):
        f = fails(run_async, r, "down.test")
        assert (f.permanent, f.status) == (False, "4.4.3")
    assert ns.asked == [("down.test", "MX")] * 2


def test_exchanger_count_is_bounded(run_async: Run) -> None:
    names = [f"mx{i}.many.test" for i in range(mx.MAX_MX_HOSTS + 5)]
    zone: dict[str, dict[str, tuple[int, list[str]]]] = {
        "many.test": {"MX": (300, [f"{i} {n}." for i, n in enumerate(names)])}}
    zone.update({n: {"A": (300, ["127.0.0.2"])} for n in names})
    r = make(ZoneNameserver(zone))
    route = resolve(run_async, r, "many.test")
    assert [h.name for h in route] == names[:mx.MAX_MX_HOSTS]


def test_malformed_domain_is_permanent_without_a_query(run_async: Run) -> None:
    ns = ZoneNameserver({})
    r = make(ns)
    f = fails(run_async, r, "a..b.test")
    assert (f.permanent, f.status) == (True, "5.1.3")
    assert ns.asked == []


def test_address_literal_skips_dns(run_async: Run) -> None:
    ns = ZoneNameserver({})
    r = make(ns)
    assert resolve(run_async, r, "[127.0.0.9]") == [MxHost("[127.0.0.9]", 0, ("127.0.0.9",))]
    assert ns.asked == [] and not r.lookups


def test_cache_entries_are_bounded(run_async: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mx, "MAX_CACHE_ENTRIES", 3)
    zone = {f"d{i}.test": {"MX": (300, [f"10 d{i}.test."]), "A": (300, ["127.0.0.2"])}
            for i in range(5)}
    r = make(ZoneNameserver(zone))
    for i in range(5):
        resolve(run_async, r, f"d{i}.test")
    assert list(r._cache) == ["d2.test", "d3.test", "d4.test"]
