"""Shared fixtures: the relay as a real subprocess on loopback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.relay_server import RelayProcess  # noqa: E402


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A running relay with accounts alice@ and bob@example.test, trusted net 127.0.0.1/32."""
    server = RelayProcess(tmp_path_factory.mktemp("relay"))
    server.add_user("alice@example.test")
    server.add_user("bob@example.test")
    with server:
        yield server
