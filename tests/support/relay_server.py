"""Harness: the real relay as a subprocess (`relay serve -c FILE`) on loopback.

Each RelayProcess writes its own TOML file and data directory, picks free ports,
starts the server and waits for it to answer. Tests talk to it over real sockets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELAY = [sys.executable, "-m", "relay"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


class RelayProcess:
    def __init__(self, workdir: Path, **sections: dict[str, object]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_port = free_port()
        conf: dict[str, dict[str, object]] = {
            "server": {"hostname": "mx.example.test", "data_dir": "data", "workers": 2},
            "listen": {"smtp": [f"127.0.0.1:{self.port}"],
                       "metrics": [f"127.0.0.1:{self.metrics_port}"]},
            "relay": {"local_domains": ["example.test"], "relay_networks": ["127.0.0.1/32"],
                      "max_message_size": 200_000, "max_recipients": 100},
            "limits": {"idle_timeout": 60},
            # Deliver nothing unless a test says so (and then only via its loopback DNS).
            "delivery": {"enabled": False},
        }
        for name, values in sections.items():
            conf.setdefault(name, {}).update(values)
        self.config = workdir / "relay.toml"
        self.config.write_text("".join(
            f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
            for name, values in conf.items()))
        self.data_dir = workdir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "relay.log"
        self.prefix: list[str] = []

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RELAY, *args, "-c", str(self.config)], input=stdin,
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    def add_user(self, address: str, password: str = "secret") -> None:
        r = self.cli("users", "add", address, stdin=password + "\n")
        assert r.returncode == 0, r.stderr

    def queue(self) -> list[dict[str, object]]:
        r = self.cli("queue", "list", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def start(self, timeout: float = 20.0) -> RelayProcess:
        log = open(self.log, "ab")
        env = dict(os.environ)
        self.proc = subprocess.Popen([*self.prefix, *RELAY, "serve", "-c", str(self.config)],
                                     stdout=log, stderr=log, cwd=ROOT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited {self.proc.returncode}:\n{self.log_text()}")
            if self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"relay did not start:\n{self.log_text()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(512).startswith(b"220")
        except OSError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        self.proc = None
        return code

    def kill9(self) -> None:
        """kill -9 the supervisor and every worker at once (the whole process group)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_users(relay: RelayProcess, users: tuple[str, ...]) -> None:
    """Accounts <user>@example.test with password <user>-pw, written in-process (quicker
    than one `relay users add` per user)."""
    from relay.auth.accounts import AccountStore

    accounts = AccountStore(relay.data_dir / "accounts")
    for user in users:
        accounts.add(f"{user}@example.test", f"{user}-pw")
    accounts.close()
