"""Brute-force and connection limits for every listener (Postfix anvil, Dovecot auth penalty).

`AuthThrottle` remembers recent authentication failures per client IP and per account
and answers two questions before each attempt: how long to wait before answering
(`delay`, a growing penalty that makes guessing slow without refusing anyone) and
whether to refuse outright for a while (`blocked`). `ConnectionLimiter` counts open
connections in total and per IP. Both are plain in-memory objects owned by one worker
process; nothing here sleeps or does I/O: the glue awaits the delay itself.

Theory of operation: each key ("ip", addr) or ("account", name) maps to the times of
its most recent failures inside a sliding window, at most as many as its block limit
(more would change no answer). Keys live in one OrderedDict kept in order of last
failure, so expired keys sit at the front and are dropped in amortised O(1); when the
table is full anyway the least recently failing key is evicted. Memory is therefore
bounded by `max_entries` keys of at most max(limit) floats each, whatever the peer
sends. What would break it: updating a key without moving it to the end (expiry would
stop at a live key and leave dead ones behind it).

IPv6 clients are counted per /64 (one host usually owns a whole /64, so counting
single addresses would let it rotate through 2**64 of them); IPv4-mapped IPv6 counts
as the IPv4 address.

Trust: ip comes from the socket, account from the unauthenticated peer.
Imports: stdlib only; the clock is injected so every rule is testable without sleeping.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable

Key = tuple[str, str]


def client_key(ip: str) -> str:
    """The unit we count per client: the IPv4 address, or the IPv6 /64 it belongs to."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip  # not an address (a Unix socket path, a test name): count it as given
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def _account_key(account: str) -> str:
    # Accounts are stored lower-cased (AccountStore.normalize); "Alice@X" and "alice@x"
    # are the same target and share one penalty.
    return account.strip().lower()


class AuthThrottle:
    """Growing delays and temporary blocks after authentication failures.

    Args:
        clock: seconds on a monotonic scale (time.monotonic in the glue, a fake in tests).
        free_failures: with fewer recent failures than this, answer at once; with n >= it,
            wait base_delay * 2**(n - free_failures), capped at max_delay. The default 2
            gives 0, 0, 1, 2, 4, 8, 15, 15 ... seconds for 0, 1, 2, 3 ... failures.
        window: seconds a failure is remembered (sliding window).
        max_ip_failures / max_account_failures: failures inside the window after which
            `blocked` is true for that client / account until old failures expire.
        max_entries: keys kept at most (IPs and accounts together).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        free_failures: int = 2,
        base_delay: float = 1.0,
        max_delay: float = 15.0,
        window: float = 900.0,
        max_ip_failures: int = 10,
        max_account_failures: int = 20,
        max_entries: int = 10_000,
    ) -> None:
        if min(max_ip_failures, max_account_failures, max_entries) < 1 or window <= 0:
            raise ValueError("throttle limits must be positive")
        self._clock = clock
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.window = window
        self.max_ip_failures = max_ip_failures
        self.max_account_failures = max_account_failures
        self.max_entries = max_entries
        self._failures: OrderedDict[Key, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """Keys currently remembered (bounded by max_entries)."""
        return len(self._failures)

    # ---- questions ----------------------------------------------------------------------

    def delay(self, ip: str, account: str | None = None) -> float:
        """Seconds to wait before answering this attempt (0.0 when there is no penalty)."""
        now = self._clock()
        n = max(self._count(("ip", client_key(ip)), now),
                self._count(("account", _account_key(account)), now) if account else 0)
        if n == 0 or n < self.free_failures:
            return 0.0
        # Exponent capped so a large count cannot overflow the float.
        return min(self.base_delay * 2.0 ** min(n - self.free_failures, 62), self.max_delay)

    def blocked(self, ip: str, account: str | None = None) -> bool:
        """True while this client or account has too many recent failures."""
        now = self._clock()
        if self._count(("ip", client_key(ip)), now) >= self.max_ip_failures:
            return True
        if account and (self._count(("account", _account_key(account)), now)
                        >= self.max_account_failures):
            return True
        return False

    # ---- outcomes -----------------------------------------------------------------------

    def failure(self, ip: str, account: str | None = None) -> None:
        """Record a failed attempt by `ip` (for `account`, when the client named one)."""
        now = self._clock()
        self._expire(now)
        self._record(("ip", client_key(ip)), now, self.max_ip_failures)
        if account:
            self._record(("account", _account_key(account)), now, self.max_account_failures)

    def success(self, ip: str, account: str | None = None) -> None:
        """A correct password: forget this client's and this account's penalties."""
        self._failures.pop(("ip", client_key(ip)), None)
        if account:
            self._failures.pop(("account", _account_key(account)), None)

    # ---- internals ----------------------------------------------------------------------

    def _count(self, key: Key, now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def _record(self, key: Key, now: float, limit: int) -> None:
        times = self._failures.get(key)
        if times is None:
            if len(self._failures) >= self.max_entries:
                self._failures.popitem(last=False)  # evict the least recently failing key
            times = self._failures[key] = deque(maxlen=limit)
        else:
            self._failures.move_to_end(key)
        times.append(now)

    def _expire(self, now: float) -> None:
        """Drop keys whose newest failure left the window (they sit at the front)."""
        horizon = now - self.window
        failures = self._failures
        while failures:
            key, times = next(iter(failures.items()))
            if times and times[-1] > horizon:
                break
            del failures[key]


class ConnectionLimiter:
    """Open connections in total and per client (IPv6 per /64, like AuthThrottle, unless
    `key` says otherwise: `key=str` counts each address as given).

    `admit(ip)` when a connection arrives: True means it was counted and must later be
    `release(ip)`d exactly once; False means refuse it (nothing was counted).
    """

    def __init__(self, max_total: int, max_per_ip: int,
                 key: Callable[[str], str] = client_key) -> None:
        if max_total < 1 or max_per_ip < 1:
            raise ValueError("connection limits must be positive")
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._key = key
        self._per_ip: dict[str, int] = {}

    def __len__(self) -> int:
        """Clients with at least one open connection (zero counts are never stored)."""
        return len(self._per_ip)

    def count(self, ip: str) -> int:
        return self._per_ip.get(self._key(ip), 0)

    def admit(self, ip: str) -> bool:
        key = self._key(ip)
        current = self._per_ip.get(key, 0)
        if self.total >= self.max_total or current >= self.max_per_ip:
            return False
        self._per_ip[key] = current + 1
        self.total += 1
        return True

    def release(self, ip: str) -> None:
        """Uncount one admitted connection; releasing one never admitted is a glue bug."""
        key = self._key(ip)
        current = self._per_ip.get(key, 0)
        if current <= 0:
            raise ValueError(f"release() without admit() for {ip!r}")
        if current == 1:
            del self._per_ip[key]
        else:
            self._per_ip[key] = current - 1
        self.total -= 1
