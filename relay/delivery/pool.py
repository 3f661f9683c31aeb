"""OutboundPool: remote delivery with connection reuse (Postfix's smtp(8) with its
connection cache, and qmgr's concurrency limits).

For one Destination (an MX domain or a fixed host) it finds the hosts (MX records in
preference order, RFC 5321 §5.1), tries each address until one greets, and runs the
transaction. Connections that end idle are kept for `cache_time` seconds and reused
by the next message to the same destination (RSET is not needed after a completed
transaction, RFC 5321 §4.1.1.4). Concurrency is bounded per destination and in all.

Imports: asyncio, ssl, ipaddress, relay.delivery.{connector,events,mx,route},
relay.queue.model, relay.metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections import Counter, defaultdict

from relay import metrics
from relay.delivery.events import Failed
from relay.delivery.connector import Connection, Timeouts
from relay.delivery.mx import DnsFailure, MxHost, MxResolver
from relay.delivery.route import Destination
from relay.queue.model import Outcome

log = logging.getLogger("relay.delivery")


class OutboundPool:
    def __init__(self, *, resolver: MxResolver, helo_name: str, timeouts: Timeouts,
                 max_connections: int, max_per_destination: int, cache_time: float,
                 tls_verify: tuple[str, ...] = ()) -> None:
        self.resolver = resolver
        self.helo_name = helo_name
        self.timeouts = timeouts
        self.cache_time = cache_time
        self.tls_verify = frozenset(tls_verify)
        self._all = asyncio.Semaphore(max_connections)
        self._per_dest: defaultdict[Destination, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(max_per_destination))
        # idle connections per destination with the loop time each was released at
        self._idle: defaultdict[Destination, list[tuple[Connection, float]]] = defaultdict(list)
        self._sweeps: dict[Destination, asyncio.TimerHandle] = {}
        self._loop = asyncio.get_running_loop()
        self._dns_seen: Counter[str] = Counter()
        self._resolving: dict[str, asyncio.Future[list[MxHost]]] = {}
        self._opportunistic = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._opportunistic.check_hostname = False
        self._opportunistic.verify_mode = ssl.CERT_NONE
        self._verified = ssl.create_default_context()

    async def deliver(self, dest: Destination, sender: str, recipients: list[str],
                      body: bytes, smtputf8: bool) -> list[Outcome]:
        async with self._per_dest[dest], self._all:
            conn = self._take_idle(dest)
            if conn is not None:
                result = await conn.send(sender, recipients, body, smtputf8)
                if not isinstance(result, Failed):
                    self._release(dest, conn)
                    return result
                # The cached connection died before the transaction: start afresh.
            conn_or_outcomes = await self._connect(dest, recipients)
            if isinstance(conn_or_outcomes, list):
                return conn_or_outcomes
            conn = conn_or_outcomes
            result = await conn.send(sender, recipients, body, smtputf8)
            if isinstance(result, Failed):
                return [result.outcome(r) for r in recipients]
            self._release(dest, conn)
            return result

    async def close(self) -> None:
        for handle in self._sweeps.values():
            handle.cancel()
        self._sweeps.clear()
        for conns in self._idle.values():
            for conn, _ in conns:
                await conn.close()
        self._idle.clear()

    # ---- connections ----------------------------------------------------------------

    def _take_idle(self, dest: Destination) -> Connection | None:
        conns = self._idle[dest]
        while conns:
            conn, _ = conns.pop()  # the most recently used: the least likely to be stale
            if conn.usable:
                return conn
            self._loop.create_task(conn.close())
        return None

    def _release(self, dest: Destination, conn: Connection) -> None:
        if not conn.usable or self.cache_time <= 0:
            self._loop.create_task(conn.close())
            return
        self._idle[dest].append((conn, self._loop.time()))
        if dest not in self._sweeps:  # one timer per destination, not one per message
            self._sweeps[dest] = self._loop.call_later(self.cache_time, self._sweep, dest)

    def _sweep(self, dest: Destination) -> None:
        """Close the connections to `dest` idle for cache_time; come back for the rest."""
        del self._sweeps[dest]
        conns = self._idle.get(dest)
        if not conns:
            return
        deadline = self._loop.time() - self.cache_time
        keep = []
        for conn, since in conns:
            if since > deadline:
                keep.append((conn, since))
            else:
                self._loop.create_task(conn.close())
        conns[:] = keep
        if keep:
            oldest = min(since for _, since in keep)
            self._sweeps[dest] = self._loop.call_at(oldest + self.cache_time, self._sweep, dest)

    async def _connect(self, dest: Destination,
                       recipients: list[str]) -> Connection | list[Outcome]:
        try:
            hosts = await self._hosts(dest)
        except DnsFailure as exc:
            action = "failed" if exc.permanent else "delayed"
            return [Outcome(r, action, exc.status, f"x-relay; {exc.text}") for r in recipients]
        domain = dest.name.lower()
        require_tls = dest.kind == "mx" and domain in self.tls_verify
        last: Failed | None = None
        for host in hosts:
            for address in host.addresses:
                result = await Connection.open(
                    host.name, address, dest.port, self.helo_name, self.timeouts,
                    self._verified if require_tls else self._opportunistic,
                    host.name if require_tls else None, require_tls=require_tls)
                if isinstance(result, Connection):
                    return result
                log.info("%s: %s", dest, result.diagnostic)
                last = result
        if last is None:
            return [Outcome(r, "delayed", "4.4.4", f"x-relay; no address for {dest}")
                    for r in recipients]
        # Even a 554 greeting from the last host stays temporary here: with several MX
        # hosts a refusal by one is not the domain's final word (Postfix does the same).
        return [Outcome(r, "delayed", last.status, last.diagnostic, last.remote_mta)
                for r in recipients]

    async def _hosts(self, dest: Destination) -> list[MxHost]:
        if dest.kind == "host":
            try:
                ipaddress.ip_address(dest.name)
                return [MxHost(dest.name, 0, (dest.name,))]
            except ValueError:
                pass
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(dest.name, dest.port, type=1)
            except OSError as exc:
                raise DnsFailure(False, "4.4.3", f"cannot resolve {dest.name}: {exc}",
                                 "error") from None
            addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
            return [MxHost(dest.name, 0, addresses)]
        # Concurrent deliveries to one cold domain share a single lookup.
        pending = self._resolving.get(dest.name)
        if pending is None:
            pending = asyncio.ensure_future(self.resolver.resolve(dest.name))
            self._resolving[dest.name] = pending
            pending.add_done_callback(lambda _: self._resolving.pop(dest.name, None))
        try:
            return list(await asyncio.shield(pending))
        finally:
            self._export_dns_counts()

    def _export_dns_counts(self) -> None:
        for result, count in self.resolver.lookups.items():
            new = count - self._dns_seen[result]
            if new > 0:
                metrics.DNS_LOOKUPS.labels(result=result).inc(new)
                self._dns_seen[result] = count
