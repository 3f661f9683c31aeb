"""Where each recipient goes (Postfix's trivial-rewrite): local, smarthost or MX.

A pure function of the configuration and the account store; no network.
Imports: stdlib, relay.auth.accounts (read-only).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.auth.accounts import AccountStore


@dataclass(frozen=True, slots=True)
class Destination:
    """A remote next hop: every recipient with the same Destination shares connections.

    kind "mx": look up `name`'s MX records; kind "host": connect to name:port directly
    (a smarthost, or an address literal domain).
    """

    kind: str
    name: str
    port: int

    def __str__(self) -> str:
        return self.name if self.kind == "mx" else f"[{self.name}]:{self.port}"


@dataclass(slots=True)
class Routes:
    local: list[tuple[str, str | None]]  # (recipient, account or None when unknown)
    remote: dict[Destination, list[str]]


class Router:
    def __init__(self, local_domains: tuple[str, ...], accounts: AccountStore,
                 smarthost: tuple[str, int] | None, port: int) -> None:
        self.local_domains = frozenset(local_domains)
        self.accounts = accounts
        self.smarthost = smarthost
        self.port = port

    def split(self, recipients: list[str]) -> Routes:
        routes = Routes([], {})
        for rcpt in recipients:
            local, _, domain = rcpt.rpartition("@")
            domain_key = domain.lower().rstrip(".")
            if domain_key in self.local_domains:
                routes.local.append((rcpt, self.accounts.resolve(local, domain_key)))
                continue
            routes.remote.setdefault(self.destination(domain_key), []).append(rcpt)
        return routes

    def destination(self, domain: str) -> Destination:
        if self.smarthost is not None:
            return Destination("host", self.smarthost[0], self.smarthost[1])
        if domain.startswith("[") and domain.endswith("]"):
            # RFC 5321 §4.1.3 address literal: no MX lookup, connect to the address.
            literal = domain[1:-1]
            if literal.lower().startswith("ipv6:"):
                literal = literal[5:]
            return Destination("host", literal, self.port)
        return Destination("mx", domain, self.port)
