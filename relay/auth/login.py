"""Login: password checks for POP3, IMAP and SMTP AUTH, with the brute-force throttle.

Argon2id verification is deliberately slow (tens of ms), so it runs in a thread; a
client past its failure budget waits the throttle's delay before hearing the answer, and
one that is blocked is refused without a check (Dovecot's auth penalty, Postfix anvil).
Every failure is logged with the client address and counted per protocol. A password
verified recently against the same stored hash is accepted from the LoginCache without
argon2id (Dovecot's auth_cache); a blocked client is refused before the cache is asked,
and anything but a hit takes the slow path, throttle included.

Imports: asyncio, logging, relay.auth.{accounts,cache,throttle}, relay.metrics.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import time

from relay import metrics
from relay.auth.accounts import AccountError, AccountStore
from relay.auth.cache import LoginCache
from relay.auth.throttle import AuthThrottle

log = logging.getLogger("relay.auth")


class LoginResult(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    BLOCKED = "blocked"  # too many recent failures: temporary refusal


class Authenticator:
    def __init__(self, accounts: AccountStore, throttle: AuthThrottle | None = None,
                 cache: LoginCache | None = None) -> None:
        self.accounts = accounts
        # `is not None`: an AuthThrottle with no failures yet has len() 0, so is falsy.
        self.throttle = throttle if throttle is not None else AuthThrottle(time.monotonic)
        self.cache = cache if cache is not None else LoginCache()

    async def login(self, protocol: str, ip: str, user: str,
                    password: str) -> tuple[LoginResult, str]:
        """(result, the account's normalised name or the user as given)."""
        try:
            account = self.accounts.normalize(user)
        except AccountError:
            account = user
        if self.throttle.blocked(ip, account):
            log.warning("%s login blocked: user=<%s> ip=%s (too many failures)",
                        protocol, account, ip)
            metrics.AUTH_FAILURES.labels(protocol=protocol).inc()
            return LoginResult.BLOCKED, account
        if self.cache.enabled:
            stored = self.accounts.password_hash(account)  # one LMDB read, no hashing
            hit = stored is not None and self.cache.hit(account, stored, password)
            metrics.AUTH_CACHE.labels(result="hit" if hit else "miss").inc()
            if hit:
                self.throttle.success(ip, account)
                return LoginResult.OK, account
        loop = asyncio.get_running_loop()
        verified = await loop.run_in_executor(None, self.accounts.verified_hash, account,
                                              password)
        if verified is not None:
            self.cache.remember(account, verified, password)
            self.throttle.success(ip, account)
            return LoginResult.OK, account
        delay = self.throttle.delay(ip, account)
        self.throttle.failure(ip, account)
        metrics.AUTH_FAILURES.labels(protocol=protocol).inc()
        log.warning("%s login failed: user=<%s> ip=%s", protocol, account, ip)
        if delay:
            await asyncio.sleep(delay)
        return LoginResult.FAILED, account


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
