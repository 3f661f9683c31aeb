"""LoginCache: recently verified passwords, so a repeated login skips argon2id.

Follows Dovecot's auth_cache (auth_cache_ttl, auth_cache_size): after a successful
argon2id check the account is remembered with a keyed digest, and a later login with
the same password, against the same stored hash, within `ttl` seconds of that check,
succeeds without hashing again. A hit never refreshes the entry's age, so every
password is re-verified with argon2id at least once per `ttl`.

Theory of operation: each entry is account -> (HMAC-SHA256(key, stored hash NUL
password), time of the argon2id check). The key is 32 random bytes made per process
and never written anywhere, so the digests are useless outside this process. Binding
the stored hash into the digest is the invalidation: `relay users del`/`add` write a
new hash (a fresh salt), the digest no longer matches, and the login takes the slow
path; the caller reads the hash from the account store on every lookup (one LMDB
read). The NUL cannot occur in an encoded argon2 hash, so the two parts never blur.
A wrong password never matches, and an entry is never dropped on a mismatch (that
would let anyone evict other users' entries). Entries live in one OrderedDict in
least-recently-used order; when it is full the least recently used is evicted, so
memory is bounded by `max_entries`. Expired entries go when looked up or evicted.

Not thread-safe: the glue uses it from the event loop thread only.
Trust: account and password come from the unauthenticated peer.
Imports: stdlib only; the clock is injected so every rule is testable without sleeping.
"""

from __future__ import annotations

import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_TTL = 3600.0  # Dovecot auth_cache_ttl: 1 hour
DEFAULT_SIZE = 100_000


class LoginCache:
    """Accounts whose password was recently verified, bounded and expiring.

    Args:
        ttl: seconds an argon2id success is trusted; 0 disables the cache.
        max_entries: accounts remembered at most (least recently used evicted).
        clock: seconds on a monotonic scale (a fake in tests).
    """

    def __init__(self, ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 0 or max_entries < 1:
            raise ValueError("cache ttl must be >= 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def hit(self, account: str, stored_hash: str, password: str) -> bool:
        """True when `password` was verified against `stored_hash` less than ttl ago."""
        entry = self._entries.get(account)
        if entry is None:
            return False
        digest, verified_at = entry
        if self._clock() - verified_at >= self.ttl:
            del self._entries[account]
            return False
        if not hmac.compare_digest(digest, self._digest(stored_hash, password)):
            return False
        self._entries.move_to_end(account)
        return True

    def remember(self, account: str, stored_hash: str, password: str) -> None:
        """Record a successful argon2id check of `password` against `stored_hash`."""
        if not self.enabled:
            return
        entries = self._entries
        if account in entries:
            entries.move_to_end(account)
        elif len(entries) >= self.max_entries:
            entries.popitem(last=False)
        entries[account] = (self._digest(stored_hash, password), self._clock())

    def _digest(self, stored_hash: str, password: str) -> bytes:
        # surrogatepass: a password that is not valid UTF-8 still has one digest.
        message = (stored_hash + "\0" + password).encode("utf-8", "surrogatepass")
        return hmac.digest(self._key, message, "sha256")
