"""The operator's commands: check-config, users, queue, serve errors."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from support.relay_server import RELAY, ROOT, RelayProcess


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RELAY, *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_bundled_config_is_valid() -> None:
    r = run("check-config", "-c", "config/relay.toml")
    assert r.returncode == 0, r.stderr


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    for text, key in [
        ('[limits]\nidle_timeout = "soon"\n', "limits.idle_timeout"),
        ("[server]\nbogus = 1\n", "server.bogus"),
        ('[listen]\nsmtp = ["127.0.0.1"]\n', "listen.smtp"),
        ("[relay]\nmax_recipients = 5\n", "relay.max_recipients"),
        ("[nonsense]\n", "nonsense"),
    ]:
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
        r = run("check-config", "-c", str(cfg))
        assert r.returncode != 0
        assert key in r.stderr and str(cfg) in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_serve_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[server]\nworkers = -1\n")
    r = run("serve", "-c", str(cfg))
    assert r.returncode == 2 and "server.workers" in r.stderr


def test_serve_refuses_a_port_in_use_and_a_data_dir_in_use(tmp_path: Path) -> None:
    first = RelayProcess(tmp_path / "a", server={"workers": 1}).start()
    try:
        second = RelayProcess(tmp_path / "b", server={"workers": 1})
        second.config.write_text(second.config.read_text().replace(
            f"127.0.0.1:{second.port}", f"127.0.0.1:{first.port}"))
        r = subprocess.run([*RELAY, "serve", "-c", str(second.config)], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 1
        assert f"127.0.0.1:{first.port} is already in use" in r.stderr
        r = subprocess.run([*RELAY, "serve", "-c", str(first.config)], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 1 and "in use by another relay" in r.stderr
    finally:
        first.stop()


def test_serve_stops_when_a_worker_cannot_bind(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, server={"workers": 1})
    with socket.socket() as holder:  # bound without SO_REUSEPORT, not listening
        holder.bind(("127.0.0.1", relay.port))
        r = subprocess.run([*RELAY, "serve", "-c", str(relay.config)], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1
    assert "failed at start" in r.stderr and "Traceback" not in r.stderr


def test_users_add_list_del(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path)
    r = relay.cli("users", "add", "Carol@Example.TEST", stdin="pw one\n")
    assert r.returncode == 0, r.stderr
    assert relay.cli("users", "add", "carol@example.test", stdin="x\n").returncode == 1
    assert relay.cli("users", "add", "not-an-address", stdin="x\n").returncode == 1
    assert relay.cli("users", "list").stdout.split() == ["carol@example.test"]
    raw = (relay.data_dir / "accounts" / "data.mdb").read_bytes()
    assert b"$argon2id$" in raw and b"pw one" not in raw
    assert relay.cli("users", "del", "carol@example.test").returncode == 0
    assert relay.cli("users", "list").stdout.split() == []
    assert relay.cli("users", "del", "carol@example.test").returncode == 1


def test_users_added_while_running_are_seen_at_once(relay: RelayProcess) -> None:
    from support.raw_smtp import RawSmtp

    with RawSmtp(relay.port, source="127.0.0.9") as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@remote.test>")
        assert c.cmd("RCPT TO:<dave@example.test>").code == 550
        relay.add_user("dave@example.test")
        assert c.cmd("RCPT TO:<dave@example.test>").code == 250


def test_queue_list_and_show(relay: RelayProcess) -> None:
    import smtplib

    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("x@remote.test", ["bob@example.test"], b"Subject: show me\r\n\r\nhi\r\n")
    items = json.loads(relay.cli("queue", "list", "--json").stdout)
    item = next(i for i in items if i["sender"] == "x@remote.test")
    assert set(item) >= {"id", "sender", "recipients", "state", "attempts", "next_attempt",
                         "last_error"}
    assert item["state"] == "active" and item["attempts"] == 0
    shown = relay.cli("queue", "show", str(item["id"]))
    assert shown.returncode == 0 and "Subject: show me" in shown.stdout
    assert relay.cli("queue", "show", "NOSUCHID").returncode == 1
