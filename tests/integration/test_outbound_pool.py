"""OutboundPool's connection cache against a real SMTP receiver on 127.0.0.2.

Kept connections carry the next message to the same destination; those idle for
cache_time are closed by the destination's sweep (one timer per destination).
"""

from __future__ import annotations

import asyncio

from relay.delivery.connector import Timeouts
from relay.delivery.mx import MxResolver
from relay.delivery.pool import OutboundPool
from relay.delivery.route import Destination
from support.relay_server import free_port
from support.sink import Sink

SENDER = "alice@example.org"
BODY = b"Subject: pool\r\n\r\nHello.\r\n"


def _pool(cache_time: float) -> OutboundPool:
    return OutboundPool(resolver=MxResolver(["127.0.0.1:9"]), helo_name="relay.test",
                        timeouts=Timeouts(2.0, 5.0, 5.0), max_connections=10,
                        max_per_destination=2, cache_time=cache_time)


def test_a_kept_connection_carries_the_next_message_then_expires() -> None:
    sink = Sink("127.0.0.2", free_port("127.0.0.2")).start()
    try:
        async def scenario() -> tuple[int, int, bool, int]:
            pool = _pool(cache_time=0.5)
            dest = Destination("host", "127.0.0.2", sink.port)
            for n in range(3):
                outcomes = await pool.deliver(dest, SENDER, [f"r{n}@example.net"], BODY, False)
                assert [o.action for o in outcomes] == ["delivered"]
            reused = sink.connections
            [(conn, _)] = pool._idle[dest]
            await asyncio.sleep(1.2)  # past cache_time: the sweep closed it
            left = len(pool._idle[dest])
            await pool.deliver(dest, SENDER, ["late@example.net"], BODY, False)
            await pool.close()
            return reused, left, conn.closed, sink.connections

        reused, left, closed, total = asyncio.run(scenario())
        assert reused == 1  # three messages, one connection
        assert left == 0 and closed
        assert total == 2  # the message after the expiry needed a new connection
        assert len(sink.messages) == 4
    finally:
        sink.stop()


def test_no_cache_closes_after_each_message() -> None:
    sink = Sink("127.0.0.2", free_port("127.0.0.2")).start()
    try:
        async def scenario() -> None:
            pool = _pool(cache_time=0)
            dest = Destination("host", "127.0.0.2", sink.port)
            for n in range(2):
                await pool.deliver(dest, SENDER, [f"r{n}@example.net"], BODY, False)
            assert not pool._idle[dest]
            await pool.close()

        asyncio.run(scenario())
        assert sink.connections == 2
    finally:
        sink.stop()
