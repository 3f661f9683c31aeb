"""A minimal HTTP/1.1 endpoint serving GET /metrics (Prometheus text format).

Each worker binds the metrics address with SO_REUSEPORT; whichever worker answers
renders every worker's values (multiprocess mode), so any scrape sees the whole server.

Imports: asyncio, relay.metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from relay import metrics

log = logging.getLogger("relay.metrics")
MAX_REQUEST = 8192


class MetricsEndpoint(asyncio.Protocol):
    def __init__(self, queue_counts: Callable[[], dict[str, int]]) -> None:
        self.queue_counts = queue_counts
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        if b"\r\n\r\n" not in self.buf and b"\n\n" not in self.buf:
            if len(self.buf) > MAX_REQUEST:
                self._respond(431, b"request too large\n", "text/plain")
            return
        parts = self.buf.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            self._respond(405, b"only GET\n", "text/plain")
        elif parts[1].split(b"?", 1)[0] != b"/metrics":
            self._respond(404, b"see /metrics\n", "text/plain")
        else:
            try:
                body, ctype = metrics.render(self.queue_counts)
            except Exception:  # noqa: BLE001 - a scrape must not take the worker down
                log.exception("rendering metrics failed")
                self._respond(500, b"error\n", "text/plain")
                return
            self._respond(200, body if parts[0] == b"GET" else b"", ctype, len(body))

    def _respond(self, status: int, body: bytes, ctype: str, length: int | None = None) -> None:
        assert self.transport is not None
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\n"
                "Connection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()
