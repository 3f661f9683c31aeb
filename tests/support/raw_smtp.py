"""A raw-socket SMTP client for tests that must send exact octets (smuggling, pipelining,
over-long lines) and read exact replies."""

from __future__ import annotations

import socket
import ssl


class Reply:
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.code = int(lines[-1][:3])
        self.text = b"\n".join(line[4:] for line in lines).decode("utf-8", "replace")

    @property
    def status(self) -> str:
        """The enhanced status code of the last line (RFC 2034), or ""."""
        word = self.lines[-1][4:].split(b" ", 1)[0].decode()
        return word if word.count(".") == 2 and word[0].isdigit() else ""

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.text!r})"


class RawSmtp:
    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None,
                 timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> Reply:
        lines = [self._line()]
        while lines[-1][3:4] == b"-":
            lines.append(self._line())
        return Reply(lines)

    def cmd(self, line: str | bytes) -> Reply:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def ehlo(self, name: str = "client.example.net") -> Reply:
        return self.cmd(f"EHLO {name}")

    def starttls(self) -> None:
        r = self.cmd("STARTTLS")
        assert r.code == 220, r
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)

    def closed(self) -> bool:
        """True when the server closed the connection (after any pending replies)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, OSError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSmtp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
