"""One worker process: the composition root of everything that serves.

Installs uvloop, opens the queue and the account store, starts the group committer,
binds every SMTP and metrics listener with SO_REUSEPORT (the kernel spreads
connections over the workers) and runs until SIGTERM, then stops gracefully: stop
accepting, let transactions in flight finish (bounded), commit, close LMDB.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop

from relay import _fast, metrics
from relay import log as relay_log
from relay.auth.accounts import AccountStore
from relay.delivery.connector import Timeouts
from relay.delivery.local import LocalDelivery
from relay.delivery.mx import MxResolver
from relay.delivery.pool import OutboundPool
from relay.delivery.route import Router
from relay.delivery.scheduler import DeliveryScheduler, Policy
from relay.auth.throttle import ConnectionLimiter, client_key
from relay.glue import ListenerBase, SessionGlue
from relay.mda.imap.session import ImapListener, ImapSession
from relay.auth.login import Authenticator
from relay.auth.cache import LoginCache
from relay.mda.maildir import MaildirStore
from relay.mda.pop3.session import Pop3Listener, Pop3Session
from relay.mda.store import MailStore
from relay.config import Config
from relay.intake import Intake
from relay.metrics_endpoint import MetricsEndpoint
from relay.queue.committer import GroupCommitter
from relay.queue.model import QueueIdFactory
from relay.queue.store import QueueStore
from relay.smtp.settings import SmtpSettings
from relay.smtp.policy import RecipientPolicy
from relay.smtp.session import Listener, SmtpSession
from relay import tls

log = logging.getLogger("relay.worker")

# How long a graceful stop waits for transactions in flight.
DRAIN_SECONDS = 30.0
SWITCH_INTERVAL = 0.0005
BACKLOG = 1024


def run(config: Config, index: int) -> int:
    """Entry point in the forked child; returns the exit status."""
    # The group-commit thread needs the GIL briefly between fsyncs; with the default 5 ms
    # switch interval a busy event loop would hold every commit back by up to 5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)
    relay_log.batch_in_worker()
    try:
        uvloop.run(_serve(config, index))
    except OSError as exc:
        log.error("worker %d: %s", index, exc)
        return 2
    finally:
        relay_log.flush()
    return 0


async def _serve(config: Config, index: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    data = config.server.data_dir
    store = QueueStore(data / "queue", config.queue.map_size, config.queue.max_map_size)
    accounts = AccountStore(data / "accounts")
    committer = GroupCommitter(store, loop, config.queue.commit_delay)
    ids = QueueIdFactory(index)
    scheduler = _delivery(config, index, store, committer, accounts, ids)
    cert, key = tls.certificate_paths(config)
    tls_context = tls.server_context(cert, key) if cert.exists() and key.exists() else None
    authenticator = Authenticator(accounts, cache=LoginCache(config.auth.cache_ttl,
                                                             config.auth.cache_size))
    policy = RecipientPolicy(config.relay.local_domains, accounts)
    intake = Intake(config.server.hostname, committer, ids,
                    scheduler.submit if config.delivery.enabled else None)

    limits = config.limits

    def limiter(key: Callable[[str], str] = client_key) -> ConnectionLimiter:
        return ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip, key)

    def smtp_listener(name: str) -> Listener:
        """smtp (25): AUTH offered after STARTTLS; submission (587, STARTTLS) and
        submissions (465, implicit TLS, RFC 8314): AUTH required before MAIL (RFC 6409)."""
        submission = name != "smtp"
        if submission and tls_context is None:
            raise OSError(f"{name} needs a TLS certificate (AUTH is only offered over TLS)")
        return Listener(
            settings=SmtpSettings(config.server.hostname, config.relay.max_message_size,
                                  config.relay.max_recipients,
                                  tls_available=tls_context is not None,
                                  postmaster_domain=(config.relay.local_domains or ("",))[0],
                                  auth_available=tls_context is not None,
                                  auth_required=submission),
            policy=policy, intake=intake,
            relay_networks=config.relay.relay_networks,
            idle_timeout=limits.idle_timeout,
            handshake_timeout=limits.idle_timeout,
            limiter=limiter(key=str),  # per address (IMAP and POP3: IPv6 per /64)
            tls_context=tls_context,
            auth=authenticator,
            implicit_tls=name == "submissions",
            name=name,
        )

    def mda_listener(name: str) -> ListenerBase:
        """imap/pop3 (STARTTLS, STLS) and imaps/pop3s (implicit TLS, RFC 8314)."""
        kind = ImapListener if name.startswith("imap") else Pop3Listener
        return kind(store=mail, auth=authenticator, limiter=limiter(),
                    tls_context=tls_context, implicit_tls=name.endswith("s"),
                    allow_plaintext=config.mda.allow_plaintext_auth)

    # (name, listener for it, session class); servers are bound in this order.
    protocols: list[tuple[str, Callable[[str], Any], Callable[[Any], SessionGlue]]] = [
        ("smtp", smtp_listener, SmtpSession), ("submission", smtp_listener, SmtpSession),
        ("submissions", smtp_listener, SmtpSession),
        ("pop3", mda_listener, Pop3Session), ("pop3s", mda_listener, Pop3Session),
        ("imap", mda_listener, ImapSession), ("imaps", mda_listener, ImapSession)]
    smtp_endpoints = {name: getattr(config.listen, name)
                      for name in ("smtp", "submission", "submissions")}
    # Drained at a graceful stop: SMTP's (IMAP and POP3 sessions end with the process).
    listeners: list[ListenerBase] = []
    metrics.BUILD_INFO.labels(version=_version(), parser=_fast.IMPLEMENTATION).set(1)

    def queue_counts() -> dict[str, int]:
        return store.state_counts(time.time())

    mail = MailStore(data / "mail")
    servers = []
    flushing = loop.create_task(_flush_metrics())
    delivering = loop.create_task(scheduler.run() if config.delivery.enabled
                                  else asyncio.sleep(0))
    try:
        for name, make_listener, session in protocols:
            endpoints = getattr(config.listen, name)
            if not endpoints:
                continue
            listener = make_listener(name)
            if listener.implicit_tls and tls_context is None:
                raise OSError(f"{name} on {', '.join(map(str, endpoints))} needs a TLS "
                              "certificate")
            if session is SmtpSession:
                listeners.append(listener)
            for ep in endpoints:
                servers.append(await loop.create_server(
                    lambda listener=listener, session=session: session(listener),
                    ep.host, ep.port, reuse_port=True, backlog=BACKLOG,
                    ssl=tls_context if listener.implicit_tls else None))
        for ep in config.listen.metrics:
            servers.append(await loop.create_server(
                lambda: MetricsEndpoint(queue_counts), ep.host, ep.port, reuse_port=True))
        log.info("worker %d serving %s (parser: %s)", index,
                 "; ".join(f"{name} on {', '.join(map(str, eps))}"
                           for name, eps in smtp_endpoints.items() if eps),
                 _fast.IMPLEMENTATION)
        await stop.wait()
        log.info("worker %d stopping", index)
    finally:
        for server in servers:
            server.close()
        for listener in listeners:
            listener.shutdown()
        deadline = loop.time() + DRAIN_SECONDS
        while any(lst.sessions for lst in listeners) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in [s for lst in listeners for s in lst.sessions]:
            if session.transport is not None:
                session.transport.abort()
        await asyncio.sleep(0)
        await scheduler.stop()
        delivering.cancel()
        await scheduler.remote.close()  # type: ignore[attr-defined]
        committer.stop()
        flushing.cancel()
        metrics.TALLY.flush()
        store.close()
        accounts.close()


def _delivery(config: Config, index: int, store: QueueStore, committer: GroupCommitter,
              accounts: AccountStore, ids: QueueIdFactory) -> DeliveryScheduler:
    d = config.delivery
    data = config.server.data_dir
    smarthost = (d.smarthost.host, d.smarthost.port) if d.smarthost else None
    pool = OutboundPool(
        resolver=MxResolver(list(d.nameservers), timeout=min(d.command_timeout, 30.0)),
        helo_name=config.server.hostname,
        timeouts=Timeouts(d.connect_timeout, d.command_timeout, d.data_timeout),
        max_connections=d.max_connections,
        max_per_destination=d.max_connections_per_destination,
        cache_time=d.connection_cache_time,
        tls_verify=d.tls_verify)
    return DeliveryScheduler(
        store=store, committer=committer,
        router=Router(config.relay.local_domains, accounts, smarthost, d.port),
        local=LocalDelivery(MaildirStore(data / "mail")),
        remote=pool,
        policy=Policy(d.retry_schedule, d.max_queue_lifetime, d.delay_warning),
        ids=ids, hostname=config.server.hostname, worker=index, workers=config.worker_count)


async def _flush_metrics() -> None:
    """Push batched counters and log lines out every half second."""
    while True:
        await asyncio.sleep(metrics.Tally.FLUSH_INTERVAL)
        metrics.TALLY.flush()
        relay_log.flush()


def _version() -> str:
    from relay import __version__

    return __version__
