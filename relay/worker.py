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

import uvloop

from relay import _fast, metrics
from relay.auth.accounts import AccountStore
from relay.config import Config
from relay.intake import Intake
from relay.metrics_endpoint import MetricsEndpoint
from relay.queue.committer import GroupCommitter
from relay.queue.model import QueueIdFactory
from relay.queue.store import QueueStore
from relay.smtp.machine import SmtpSettings
from relay.smtp.policy import RecipientPolicy
from relay.smtp.session import Listener, SmtpSession
from relay import tls

log = logging.getLogger("relay.worker")

# How long a graceful stop waits for transactions in flight.
DRAIN_SECONDS = 30.0
BACKLOG = 1024


def run(config: Config, index: int) -> int:
    """Entry point in the forked child; returns the exit status."""
    try:
        uvloop.run(_serve(config, index))
    except OSError as exc:
        log.error("worker %d: %s", index, exc)
        return 2
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
    cert, key = tls.certificate_paths(config)
    tls_context = tls.server_context(cert, key) if cert.exists() and key.exists() else None
    listener = Listener(
        settings=SmtpSettings(config.server.hostname, config.relay.max_message_size,
                              config.relay.max_recipients, tls_available=tls_context is not None,
                              postmaster_domain=(config.relay.local_domains or ("",))[0]),
        policy=RecipientPolicy(config.relay.local_domains, accounts),
        intake=Intake(config.server.hostname, committer, QueueIdFactory(index)),
        relay_networks=config.relay.relay_networks,
        idle_timeout=config.limits.idle_timeout,
        max_connections=config.limits.max_connections,
        max_per_ip=config.limits.max_connections_per_ip,
        tls_context=tls_context,
    )
    metrics.BUILD_INFO.labels(version=_version(), parser=_fast.IMPLEMENTATION).set(1)

    def queue_counts() -> dict[str, int]:
        return dict(store.count_by_state())

    servers = []
    try:
        for ep in config.listen.smtp:
            servers.append(await loop.create_server(
                lambda: SmtpSession(listener), ep.host, ep.port, reuse_port=True,
                backlog=BACKLOG))
        for ep in config.listen.metrics:
            servers.append(await loop.create_server(
                lambda: MetricsEndpoint(queue_counts), ep.host, ep.port, reuse_port=True))
        log.info("worker %d serving smtp on %s (parser: %s)", index,
                 ", ".join(map(str, config.listen.smtp)), _fast.IMPLEMENTATION)
        await stop.wait()
        log.info("worker %d stopping", index)
    finally:
        for server in servers:
            server.close()
        listener.shutdown()
        deadline = loop.time() + DRAIN_SECONDS
        while listener.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(listener.sessions):
            if session.transport is not None:
                session.transport.abort()
        await asyncio.sleep(0)
        committer.stop()
        store.close()
        accounts.close()


def _version() -> str:
    from relay import __version__

    return __version__
