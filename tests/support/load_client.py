"""An asyncio SMTP load client for tests: many sessions, pipelined transactions,
records which messages were acknowledged with 250 and under which queue id."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    acked: dict[str, str] = field(default_factory=dict)  # marker -> queue id
    refused: dict[str, str] = field(default_factory=dict)  # marker -> reply line
    errors: int = 0


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def _session(port: int, recipient: str, size: int, markers: itertools.count[int],
                   limit: int, result: LoadResult, stop: asyncio.Event, prefix: str) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        result.errors += 1
        return
    try:
        await _reply(reader)
        writer.write(b"EHLO load.test\r\n")
        await _reply(reader)
        while not stop.is_set():
            n = next(markers)
            if n >= limit:
                break
            marker = f"{prefix}-{n:06d}"
            body = (f"Subject: {marker}\r\nMessage-ID: <{marker}@load.test>\r\n\r\n".encode()
                    + b"x" * max(0, size - 60) + b"\r\n")
            writer.write(f"MAIL FROM:<load@remote.test>\r\nRCPT TO:<{recipient}>\r\n"
                         f"DATA\r\n".encode())
            codes = [await _reply(reader) for _ in range(3)]
            if codes[2][:3] != b"354":
                result.refused[marker] = codes[-1].decode()
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(body + b".\r\n")
            line = await _reply(reader)
            if line.startswith(b"250"):
                result.acked[marker] = line.decode().split()[-1]
            else:
                result.refused[marker] = line.decode().strip()
    except (ConnectionError, OSError):
        result.errors += 1
    finally:
        writer.close()


async def run_load(port: int, sessions: int, messages: int, size: int = 2000,
                   recipient: str = "sink@elsewhere.test", stop_after: float | None = None,
                   prefix: str = "m", result: LoadResult | None = None) -> LoadResult:
    """Send up to `messages` over `sessions` connections; stop early after `stop_after` s.

    Pass `result` to watch acknowledgements while the load runs."""
    result = result if result is not None else LoadResult()
    stop = asyncio.Event()
    markers = itertools.count()
    if stop_after is not None:
        asyncio.get_running_loop().call_later(stop_after, stop.set)
    await asyncio.gather(*(
        _session(port, recipient, size, markers, messages, result, stop, prefix)
        for _ in range(sessions)))
    return result
