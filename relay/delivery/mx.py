"""MX resolution: from a recipient domain to the ordered list of hosts to try.

Three parts, in dnspython's own shape:

* `order_mx` and `is_null_mx` are pure functions over the MX answer: RFC 5321 §5.1
  ordering (lowest preference first, equal preferences shuffled with an injected
  `random.Random`) and RFC 7505 null MX detection.
* `failure_for` is the one place where a dnspython exception becomes a `DnsFailure`:
  temporary (4.4.3, try again later) or permanent (5.x.x, bounce). Status codes are
  RFC 3463 enhanced codes, so `delivery` can put them straight into an Outcome.
* `MxResolver` is the small async driver: asks `dns.asyncresolver` for MX, then A and
  AAAA of each exchanger; falls back to the implicit MX (RFC 5321 §5.1); caches answers
  and permanent negative results by TTL (RFC 2308 for the negative ones) against an
  injected clock; counts each DNS query's result in `lookups` so the caller can export
  relay_dns_lookups_total{result}.

Imports: stdlib and dnspython only. Must not import relay.config (it takes plain values
built by the composition root), relay.metrics (the counter is a hook), queue internals,
or anything that opens sockets or transports itself; all network I/O is dnspython's.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.resolver

# Cache bounds. Positive answers live for the smallest TTL of the records used, at most
# MAX_TTL. Negative answers (NXDOMAIN, NODATA) live for the SOA-derived negative TTL
# (RFC 2308 §5), at most NEGATIVE_TTL, and NEGATIVE_TTL when no SOA came with them: the
# cache is private to this process, so the forwarding loop RFC 2308 §5 warns about
# cannot happen, and a short bound keeps a freshly fixed domain from waiting long.
MAX_TTL = 3600.0
NEGATIVE_TTL = 60.0
MAX_CACHE_ENTRIES = 10_000
# Exchangers looked up per domain after ordering. Bounds the queries (and connection
# attempts) one hostile domain can cost us; Postfix stops at smtp_mx_address_limit too.
MAX_MX_HOSTS = 20

# RFC 3463 enhanced status codes used here.
TEMPORARY = "4.4.3"  # X.4.3 directory server failure: DNS did not answer usefully
NOT_FOUND = "5.1.2"  # X.1.2 bad destination system address: the domain does not exist
NULL_MX = "5.1.10"  # X.1.10 recipient address has null MX (RFC 7505 §4.2)
BAD_SYNTAX = "5.1.3"  # X.1.3 bad destination address syntax (unusable name or literal)


class DnsFailure(Exception):
    """A domain could not be resolved to deliverable hosts.

    Attributes:
        permanent: True to bounce now, False to retry later.
        status: the RFC 3463 enhanced status code ("4.4.3", "5.1.2", "5.1.10", "5.1.3").
        text: one ASCII line for the DSN diagnostic and the log.
        result: the lookup-counter label ("nxdomain", "nullmx", "servfail", "timeout",
            "nodata", "error").
    """

    def __init__(self, permanent: bool, status: str, text: str, result: str = "error") -> None:
        super().__init__(f"{status} {text}")
        self.permanent = permanent
        self.status = status
        self.text = text
        self.result = result

    def copy(self) -> DnsFailure:
        """A fresh instance, so a cached failure is raised without its old traceback."""
        return DnsFailure(self.permanent, self.status, self.text, self.result)

    def __repr__(self) -> str:
        return (f"DnsFailure(permanent={self.permanent}, status={self.status!r}, "
                f"text={self.text!r}, result={self.result!r})")


@dataclass(frozen=True, slots=True)
class MxHost:
    """One exchanger to try: its name, MX preference and addresses (IPv4 first)."""

    name: str
    preference: int
    addresses: tuple[str, ...]


Route = list[MxHost]


# --- the pure part ---------------------------------------------------------------------


def _host(name: str) -> str:
    return name.lower().rstrip(".")


def is_null_mx(records: Iterable[tuple[int, str]]) -> bool:
    """True when the MX answer says "this domain accepts no mail" (RFC 7505).

    RFC 7505 §3 writes a null MX as exactly one "0 ." record. A root exchanger can never
    be a host to connect to, so an answer made only of root targets is read the same
    way whatever its preference or count; root targets beside real ones are ignored by
    `order_mx` (RFC 7505 §3 forbids the mix, and the real hosts are still usable).
    """
    targets = [_host(target) for _, target in records]
    return bool(targets) and all(t == "" for t in targets)


def order_mx(records: list[tuple[int, str]], rng: random.Random) -> list[str]:
    """Exchanger names in the order to try them (RFC 5321 §5.1).

    Lowest preference first; records of equal preference are shuffled with `rng` so
    load spreads across them ("the sender-SMTP MUST randomize them", §5.1); names are
    lower-cased without the trailing dot; a name listed twice keeps its lowest
    preference; root targets (null MX, RFC 7505) are dropped.
    """
    by_preference: dict[int, list[str]] = {}
    for preference, target in records:
        by_preference.setdefault(preference, []).append(_host(target))
    ordered: list[str] = []
    seen: set[str] = set()
    for preference in sorted(by_preference):
        # Deduplicate before shuffling so the shuffle draws the same numbers however
        # often a name repeats; sorted() makes the input order irrelevant.
        group = sorted({n for n in by_preference[preference] if n and n not in seen})
        rng.shuffle(group)
        ordered.extend(group)
        seen.update(group)
    return ordered


def parse_address_literal(domain: str) -> str | None:
    """The address in an RFC 5321 §4.1.3 address literal, or None for a domain name.

    "[192.0.2.1]" -> "192.0.2.1"; "[IPv6:2001:db8::1]" -> "2001:db8::1" (canonical).
    Raises DnsFailure (permanent 5.1.3) for a bracketed form that is not an address.
    """
    if not domain.startswith("["):
        return None
    inner = domain[1:-1] if domain.endswith("]") else ""
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        raise DnsFailure(True, BAD_SYNTAX, f"Bad address literal {domain}", "error") from None


# --- the one mapping from dnspython exceptions to outcomes --------------------------------


def failure_for(exc: Exception, name: str, rdtype: str) -> DnsFailure:
    """Map an exception from dnspython's resolve() for (name, rdtype) to a DnsFailure.

    Permanent only when a server authoritatively said the name does not exist or the
    name itself is unusable; everything else (SERVFAIL, REFUSED, timeouts, network
    errors, no resolver configuration) is temporary, as Postfix treats any lookup
    failure it cannot prove final as 4.4.3.
    """
    where = f"name={name} type={rdtype}"
    if isinstance(exc, dns.resolver.NXDOMAIN):
        # RFC 5321 §5.1: a domain that does not exist cannot receive mail. Postfix says
        # 5.4.4 ("unable to route") here; we say X.1.2 as sendmail does, naming the
        # address rather than the routing, which is what a sender can act on.
        return DnsFailure(True, NOT_FOUND, f"Host or domain name not found ({where}: NXDOMAIN)",
                          "nxdomain")
    if isinstance(exc, dns.resolver.NoAnswer):
        return DnsFailure(True, NOT_FOUND, f"Host found but no data record ({where})", "nodata")
    if isinstance(exc, dns.exception.Timeout):  # includes dns.resolver.LifetimeTimeout
        return DnsFailure(False, TEMPORARY, f"DNS lookup timed out ({where})", "timeout")
    if isinstance(exc, dns.resolver.NoNameservers):
        return DnsFailure(False, TEMPORARY, f"DNS servers failed ({where}: {_rcodes(exc)})",
                          _no_nameservers_result(exc))
    if isinstance(exc, dns.resolver.NoResolverConfiguration):
        return DnsFailure(False, TEMPORARY, "No DNS resolver configured (/etc/resolv.conf)")
    if isinstance(exc, (dns.exception.SyntaxError, dns.name.NameTooLong, dns.name.IDNAException,
                        dns.resolver.YXDOMAIN)):
        # The name can never be looked up (bad syntax, or too long after DNAME).
        return DnsFailure(True, BAD_SYNTAX, f"Malformed domain name ({where}: {exc})")
    if isinstance(exc, (dns.exception.DNSException, OSError)):
        # FormError, malformed replies, socket errors: the next attempt may do better.
        return DnsFailure(False, TEMPORARY, f"DNS lookup failed ({where}: {exc})")
    raise TypeError(f"not a DNS failure: {exc!r}") from exc


def _no_nameservers_result(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    responses = [e[4] for e in errors if len(e) > 4 and e[4] is not None]
    if any(r.rcode() == dns.rcode.SERVFAIL for r in responses):
        return "servfail"
    if any(isinstance(e[3], dns.exception.Timeout) for e in errors if len(e) > 3):
        return "timeout"
    return "error"  # REFUSED, network errors, broken replies


def _rcodes(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    return ", ".join(sorted({str(e[3]) for e in errors if len(e) > 3})) or "no servers"


# --- the driver ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Lookup:
    """One DNS query's outcome: records (empty for NODATA), how long it may be reused,
    and the failure when there was no usable answer."""

    records: list[dns.rdata.Rdata]
    ttl: float
    failure: DnsFailure | None = None


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) from the authority section, bounded."""
    ttl = NEGATIVE_TTL
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                ttl = min(ttl, rrset.ttl, rrset[0].minimum)
    return float(max(ttl, 0))


def parse_nameserver(spec: str) -> dns.nameserver.Do53Nameserver:
    """ "ip", "ip:port", "[ipv6]:port" or a bare IPv6 address -> a dnspython nameserver."""
    port = 53
    if spec.startswith("["):
        address, _, rest = spec[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif spec.count(":") == 1:
        address, _, port_text = spec.partition(":")
        port = int(port_text)
    else:
        address = spec
    ipaddress.ip_address(address)  # ValueError for a name: nameservers are addresses
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver port in {spec!r}")
    return dns.nameserver.Do53Nameserver(address, port)


class MxResolver:
    """Resolve a recipient domain to a Route (RFC 5321 §5.1), with a TTL-bound cache.

    Args:
        nameservers: "ip" or "ip:port" strings; empty means the system resolver
            (/etc/resolv.conf, read on first use).
        timeout: seconds allowed for each DNS query (dnspython's lifetime).
        rng: shuffles equal-preference exchangers; a fresh Random when None.
        clock: monotonic seconds, for the cache.
        resolver: a configured dns.asyncresolver.Resolver to use instead of building one
            (tests give it an in-memory nameserver); `nameservers` is then ignored.

    `lookups` counts every DNS query sent by result: "ok", "nodata", "nxdomain",
    "nullmx", "servfail", "timeout", "error". Cache hits send no query and count nothing.
    """

    def __init__(self, nameservers: list[str], timeout: float = 10.0,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, *,
                 resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self._servers = [parse_nameserver(s) for s in nameservers]
        self._timeout = timeout
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._dns = resolver
        if resolver is not None:
            self._configure(resolver)
        self._cache: dict[str, tuple[float, Route | DnsFailure]] = {}
        self.lookups: collections.Counter[str] = collections.Counter()

    def _configure(self, resolver: dns.asyncresolver.Resolver) -> None:
        resolver.timeout = self._timeout
        resolver.lifetime = self._timeout
        resolver.search = []  # names are absolute: never append a local domain
        resolver.cache = None  # we cache whole routes below

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            # Built lazily: a missing /etc/resolv.conf is then a temporary delivery
            # failure (NoResolverConfiguration via failure_for), not a start-up crash.
            resolver = dns.asyncresolver.Resolver(configure=not self._servers)
            if self._servers:
                resolver.nameservers = list(self._servers)
            self._configure(resolver)
            self._dns = resolver
        return self._dns

    async def resolve(self, domain: str) -> Route:
        """The exchangers for `domain`, most preferred first; raises DnsFailure."""
        literal = parse_address_literal(domain)
        if literal is not None:
            return [MxHost(domain, 0, (literal,))]  # RFC 5321 §4.1.3: no DNS at all
        name = _host(domain.strip())
        if not name:
            raise DnsFailure(True, BAD_SYNTAX, "Empty domain name")
        now = self._clock()
        hit = self._cache.get(name)
        if hit is not None:
            expires, value = hit
            if now < expires:
                if isinstance(value, DnsFailure):
                    raise value.copy()
                return list(value)
            del self._cache[name]
        value, ttl = await self._resolve_uncached(name)  # raises temporary failures
        self._store(name, value, min(ttl, MAX_TTL))
        if isinstance(value, DnsFailure):
            raise value.copy()
        return list(value)

    def _store(self, name: str, value: Route | DnsFailure, ttl: float) -> None:
        if ttl <= 0:
            return
        now = self._clock()
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            for key in [k for k, (exp, _) in self._cache.items() if exp <= now]:
                del self._cache[key]
            while len(self._cache) >= MAX_CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]  # oldest insertion
        self._cache[name] = (now + ttl, value)

    async def _resolve_uncached(self, name: str) -> tuple[Route | DnsFailure, float]:
        """(route or permanent failure, seconds it may be cached); temporary failures
        raise, because they are never cached."""
        mx = await self._query(name, "MX")
        if mx.failure is not None:
            if mx.failure.permanent:
                return mx.failure, mx.ttl  # NXDOMAIN: negative TTL
            raise mx.failure
        pairs = [(r.preference, r.exchange.to_text()) for r in mx.records]
        if is_null_mx(pairs):
            return DnsFailure(True, NULL_MX, f"Domain {name} does not accept mail (null MX)",
                              "nullmx"), mx.ttl
        if pairs:
            names = order_mx(pairs, self._rng)[:MAX_MX_HOSTS]
            preference: dict[str, int] = {}
            for pref, target in sorted(pairs):
                preference.setdefault(_host(target), pref)
        else:
            # RFC 5321 §5.1: no MX records (NOERROR, no data) -> the domain is its own
            # exchanger, an "implicit MX" of preference 0. The MX NODATA's negative TTL
            # bounds the route, so MX records added later are seen soon enough.
            names, preference = [name], {name: 0}
        found = await asyncio.gather(*(self._addresses(host) for host in names))

        route: Route = []
        ttl = mx.ttl
        temporary: DnsFailure | None = None
        for host, (addresses, host_ttl, failure) in zip(names, found):
            if failure is not None and not failure.permanent and temporary is None:
                temporary = failure
            if addresses:
                route.append(MxHost(host, preference[host], addresses))
                ttl = min(ttl, host_ttl)
            # An exchanger without any address is skipped, as Postfix's smtp_addr_list
            # does: "as long as we are able to look up any host address, we ignore
            # problems with DNS lookups".
        if route:
            if temporary is not None:
                # A better exchanger may be missing only for now: look again soon.
                ttl = min(ttl, NEGATIVE_TTL)
            return route, ttl
        if temporary is not None:
            # Postfix: "a soft error dominates past and future hard errors". Some
            # exchanger might have an address we could not learn: retry later.
            raise DnsFailure(False, TEMPORARY,
                             f"No address for any mail exchanger of {name} yet: {temporary.text}",
                             temporary.result)
        # Every lookup was answered and no exchanger has an address: final. RFC 5321
        # §5.1: "If MX records are present, but none of them are usable, or the implicit
        # MX is unusable, this situation MUST be reported as an error." Postfix bounces
        # both cases (smtp_addr_one: DNS_NOTFOUND -> hard "Host or domain name not
        # found", status 5.4.4). We bounce too, with X.1.2 like NXDOMAIN, since for the
        # sender it is the same fact: the domain names no host that can take mail.
        # Cached for the negative TTL only, so a fixed zone is seen within a minute.
        what = "has no MX and no A/AAAA records" if not pairs else \
            "has no mail exchanger with an A/AAAA record"
        return DnsFailure(True, NOT_FOUND, f"Host or domain name not found: {name} {what}",
                          "nodata"), min(ttl, NEGATIVE_TTL)

    async def _addresses(self, host: str) -> tuple[tuple[str, ...], float, DnsFailure | None]:
        """A then AAAA for one exchanger: (addresses, TTL of those records, the first
        failure worth reporting: a temporary one if any, else a permanent one)."""
        v4, v6 = await asyncio.gather(self._query(host, "A"), self._query(host, "AAAA"))
        addresses: list[str] = []
        ttl = MAX_TTL
        for lookup in (v4, v6):
            if lookup.records:
                ttl = min(ttl, lookup.ttl)
                addresses.extend(r.address for r in lookup.records
                                 if r.address not in addresses)
        failures = [x.failure for x in (v4, v6) if x.failure is not None]
        failures.sort(key=lambda f: f.permanent)  # temporary first
        return tuple(addresses), ttl, (failures[0] if failures else None)

    async def _query(self, name: str, rdtype: str) -> _Lookup:
        """One dnspython query; never raises for DNS trouble (see _Lookup.failure)."""
        try:
            answer = await self._resolver().resolve(
                dns.name.from_text(name), rdtype, raise_on_no_answer=False, search=False)
        except (dns.exception.DNSException, OSError) as exc:
            failure = failure_for(exc, name, rdtype)
            self.lookups[failure.result] += 1
            ttl = NEGATIVE_TTL
            if isinstance(exc, dns.resolver.NXDOMAIN):
                responses = exc.kwargs.get("responses") or {}
                ttl = _negative_ttl(next(iter(responses.values()), None))
            return _Lookup([], ttl, failure)
        if answer.rrset is None:
            self.lookups["nodata"] += 1
            return _Lookup([], _negative_ttl(answer.response))
        records = list(answer.rrset)
        null = rdtype == "MX" and is_null_mx((r.preference, r.exchange.to_text()) for r in records)
        self.lookups["nullmx" if null else "ok"] += 1
        return _Lookup(records, float(answer.chaining_result.minimum_ttl))
