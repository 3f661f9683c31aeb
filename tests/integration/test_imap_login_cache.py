"""The login cache over a real IMAP socket: a repeated login is a hit on /metrics, a
password changed with `relay users` is seen at once, and `cache_ttl = 0` turns it off.

One worker, so both logins of a test reach the same process (each worker has its cache).
"""

from __future__ import annotations

import imaplib
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.relay_server import RelayProcess, free_port

USER = "carol@example.test"


def start_relay(workdir: Path, **auth: object) -> RelayProcess:
    imap = free_port()
    relay = RelayProcess(workdir, server={"workers": 1},
                         listen={"imap": [f"127.0.0.1:{imap}"]},
                         **({"auth": auth} if auth else {}))  # type: ignore[arg-type]
    relay.imap_port = imap  # type: ignore[attr-defined]
    relay.add_user(USER, "first-pw")
    return relay.start()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    server = start_relay(tmp_path_factory.mktemp("login-cache"))
    try:
        yield server
    finally:
        server.stop()


def login(relay: RelayProcess, password: str) -> None:
    """One IMAP session: LOGIN (raises imaplib.IMAP4.error if refused), then LOGOUT."""
    box = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)  # type: ignore[attr-defined]
    try:
        box.login(USER, password)
    finally:
        box.logout()


def cache_counts(relay: RelayProcess) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{relay.metrics_port}/metrics",
                                  timeout=10).read().decode()
    samples = re.finditer(r'^relay_auth_cache_total\{result="(\w+)"\} (\S+)$', text,
                          re.MULTILINE)
    return {m.group(1): float(m.group(2)) for m in samples}


def test_second_imap_login_is_a_cache_hit(relay: RelayProcess) -> None:
    before = cache_counts(relay)
    login(relay, "first-pw")
    login(relay, "first-pw")
    after = cache_counts(relay)
    assert after.get("miss", 0) - before.get("miss", 0) == 1
    assert after.get("hit", 0) - before.get("hit", 0) == 1


def test_a_password_changed_with_relay_users_is_seen_at_once(relay: RelayProcess) -> None:
    login(relay, "first-pw")  # cached (again)
    assert relay.cli("users", "del", USER).returncode == 0
    relay.add_user(USER, "second-pw")
    before = cache_counts(relay)
    with pytest.raises(imaplib.IMAP4.error):
        login(relay, "first-pw")
    login(relay, "second-pw")
    after = cache_counts(relay)
    assert after.get("hit", 0) == before.get("hit", 0)  # both took the argon2id path


def test_cache_ttl_zero_turns_the_cache_off(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "no-cache", cache_ttl=0)
    try:
        login(relay, "first-pw")
        login(relay, "first-pw")
        assert cache_counts(relay) == {}  # no lookups, so no samples
    finally:
        relay.stop()
