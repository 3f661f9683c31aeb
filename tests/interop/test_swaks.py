"""swaks, the SMTP Swiss army knife, against the running relay."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support.relay_server import RelayProcess


def swaks(relay: RelayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("swaks")
    assert exe, "swaks is missing: make test installs it (Debian package swaks)"
    return subprocess.run([exe, "--server", f"127.0.0.1:{relay.port}", "--helo", "swaks.test",
                           "--from", "swaks@remote.test", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("extra", [[], ["--tls"], ["--pipeline"], ["--tls", "--pipeline"]],
                         ids=["plain", "starttls", "pipelining", "starttls+pipelining"])
def test_swaks_delivers(relay: RelayProcess, extra: list[str]) -> None:
    r = swaks(relay, "--to", "alice@example.test", "--header", f"Subject: swaks {extra}",
              *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "<-  250 2.0.0 OK queued as" in r.stdout or "<~  250 2.0.0 OK queued as" in r.stdout


def test_swaks_sees_the_relay_refusal(relay: RelayProcess) -> None:
    r = swaks(relay, "--to", "x@elsewhere.test", "--local-interface", "127.0.0.9")
    assert r.returncode != 0
    assert "554 5.7.1 Relay access denied" in r.stdout
