"""250 means on disk: kill -9 under load, a full LMDB map, a full disk, graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from support.load_client import LoadResult, run_load
from support.raw_smtp import RawSmtp
from support.relay_server import RELAY, ROOT, RelayProcess

from relay.queue.store import QueueStore


def stored_markers(data_dir: Path) -> dict[str, list[str]]:
    """marker (Subject) -> queue ids holding it, read straight from the LMDB queue."""
    store = QueueStore(data_dir / "queue")
    found: dict[str, list[str]] = {}
    try:
        for env in store.envelopes():
            got = store.get(env.id)
            assert got is not None
            body = got[1]
            subject = body.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
            found.setdefault(subject, []).append(env.id)
    finally:
        store.close()
    return found


def test_kill9_under_load_keeps_every_acknowledged_message_once(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path).start()

    async def load_then_kill() -> dict[str, str]:
        progress = LoadResult()
        task = asyncio.create_task(run_load(relay.port, sessions=20, messages=100_000,
                                            size=3000, stop_after=30, result=progress))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(progress.acked) < 500:
            await asyncio.sleep(0.05)
        relay.kill9()  # supervisor and workers, mid-load
        result = await task
        return result.acked

    acked = asyncio.run(load_then_kill())
    assert len(acked) >= 100, "the load did not get going"
    relay.start()
    try:
        stored = stored_markers(relay.data_dir)
        missing = [m for m in acked if m not in stored]
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
        assert all(stored[m] == [qid] for m, qid in acked.items())
        assert all(len(ids) == 1 for ids in stored.values()), "a message was stored twice"
        with RawSmtp(relay.port) as c:  # and the restarted server works
            assert c.ehlo().code == 250
    finally:
        relay.stop()


def test_full_map_answers_452_4_3_1_and_keeps_running(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, server={"workers": 1},
                         queue={"map_size": 1 << 20, "max_map_size": 1 << 20})
    with relay:
        result = asyncio.run(run_load(relay.port, sessions=2, messages=40, size=60_000))
        full = [r for r in result.refused.values() if r.startswith("452")]
        assert full and all(r.startswith("452 4.3.1") for r in full), result.refused
        assert result.acked, "nothing fit in the map at all"
        with RawSmtp(relay.port) as c:
            c.ehlo()
            assert c.cmd("NOOP").code == 250
    relay.start()
    try:
        stored = stored_markers(relay.data_dir)
        assert all(stored.get(m) == [qid] for m, qid in result.acked.items())
    finally:
        relay.stop()


def _ns_prefix() -> list[str]:
    # A private mount namespace (a user namespace too when not root) holds a small tmpfs.
    return ["unshare", "-m", "--propagation", "private"] if os.geteuid() == 0 else \
        ["unshare", "-Urm", "--propagation", "private"]


def test_full_disk_answers_452_4_3_1_and_loses_nothing(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, server={"workers": 1})
    relay.data_dir.mkdir()
    serve = f"mount -t tmpfs -o size=4m tmpfs {relay.data_dir} && exec \"$@\""
    relay.prefix = [*_ns_prefix(), "sh", "-c", serve, "sh"]
    relay.start()
    try:
        result = asyncio.run(run_load(relay.port, sessions=2, messages=60, size=150_000))
        full = [r for r in result.refused.values() if r.startswith("452")]
        assert full and all(r.startswith("452 4.3.1") for r in full), result.refused
        assert result.acked
        with RawSmtp(relay.port) as c:
            c.ehlo()
            assert c.cmd("NOOP").code == 250
        # Inspect the queue from inside the server's mount namespace.
        assert relay.proc is not None
        enter = ["nsenter", "-t", str(relay.proc.pid), "-m"] if os.geteuid() == 0 else \
            ["nsenter", "-t", str(relay.proc.pid), "-U", "-m", "--preserve-credentials"]
        out = subprocess.run([*enter, *RELAY, "queue", "list", "--json", "-c",
                              str(relay.config)], capture_output=True, cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        ids = {e["id"] for e in json.loads(out.stdout)}
        assert set(result.acked.values()) <= ids
    finally:
        relay.stop()
    assert "Traceback" not in relay.log_text()


def test_sigterm_lets_the_transaction_in_flight_finish(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, server={"workers": 1}).start()
    with RawSmtp(relay.port) as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@remote.test>")
        c.cmd("RCPT TO:<x@elsewhere.test>")
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: in-flight\r\n\r\nfirst half\r\n")
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # The listener is closed to newcomers...
        try:
            with RawSmtp(relay.port, timeout=2) as late:
                assert late.greeting.code == 421
        except (ConnectionError, OSError):
            pass
        # ...while our transaction completes, then the session is closed with 421.
        c.send(b"second half\r\n.\r\n")
        r = c.reply()
        assert r.code == 250, r
        r = c.reply()
        assert (r.code, r.status) == (421, "4.3.2")
    assert relay.stop() == 0
    assert "in-flight" in stored_markers(relay.data_dir)
