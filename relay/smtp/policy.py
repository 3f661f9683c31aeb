"""Who may send what to whom: accept, relay and recipient decisions.

Rules (never an open relay, RFC 5321 §3.6.2 and §7.1):
- a recipient in a local domain is accepted from anyone, if it is an existing account
  (else 550 5.1.1);
- a recipient elsewhere is accepted only from `relay_networks` or an authenticated
  client (SMTP AUTH, RFC 4954), else 554 5.7.1;
- an authenticated client sends only as its own account or a subaddress of it
  (Postfix reject_sender_login_mismatch, simplified), else 553 5.7.1.

Functions of (config, accounts, peer, event) -> Decision; no I/O beyond the account store.
Imports: stdlib, relay.smtp.{grammar,replies}, relay.auth.accounts (read-only).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from relay.auth.accounts import SUBADDRESS_DELIMITER, AccountStore
from relay.smtp import replies as R
from relay.smtp.grammar import Mailbox

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Peer:
    """The client as the policy sees it."""

    address: str
    trusted: bool  # inside relay_networks
    authenticated: str | None = None  # account name after SMTP AUTH


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def check_sender(peer: Peer, sender: Mailbox | None) -> R.Reply | None:
    """None to accept MAIL FROM, else the refusal.

    Unauthenticated clients are not restricted here (port 25 takes mail from anyone; the
    submission ports refuse MAIL before AUTH in the machine). An authenticated client's
    envelope sender must be its account or account+tag (the null path <> is refused too:
    a user has no business sending bounces), so one user cannot send as another.
    """
    account = peer.authenticated
    if account is None:
        return None
    if sender is None:
        return R.SENDER_NOT_OWNED
    local, domain = sender.local.lower(), sender.domain.lower().rstrip(".")
    base = local.partition(SUBADDRESS_DELIMITER)[0]
    if account in (f"{local}@{domain}", f"{base}@{domain}"):
        return None
    return R.SENDER_NOT_OWNED


class RecipientPolicy:
    def __init__(self, local_domains: tuple[str, ...], accounts: AccountStore) -> None:
        self.local_domains = frozenset(local_domains)
        self.accounts = accounts

    def is_local(self, mailbox: Mailbox) -> bool:
        return mailbox.domain.lower().rstrip(".") in self.local_domains

    def check(self, peer: Peer, rcpt: Mailbox) -> R.Reply | None:
        """None to accept, else the refusal."""
        if self.is_local(rcpt):
            # RFC 5321 §4.5.1: postmaster must exist; operators create it as an account.
            if self.accounts.resolve(rcpt.local, rcpt.domain):
                return None
            return R.USER_UNKNOWN
        if peer.trusted or peer.authenticated:
            return None
        return R.RELAY_DENIED
