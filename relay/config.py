"""TOML configuration -> frozen dataclasses, one per section.

Every unknown key and every bad value raises ConfigError naming the key
("limits.idle_timeout: must be a number of seconds > 0"). Defaults cite the RFC or
the peer (Postfix) they follow. Relative paths are resolved against the directory
of the configuration file, so `relay ... -c FILE` works from any directory.

Imports: stdlib only.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration problem; str() names the file and key."""

    def __init__(self, key: str, why: str, path: str | os.PathLike[str] | None = None) -> None:
        self.key, self.why, self.path = key, why, path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{key}: {why}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str = "localhost"
    data_dir: Path = Path("var")
    workers: int = 0  # 0 = one worker process per core


@dataclass(frozen=True, slots=True)
class ListenConfig:
    smtp: tuple[Endpoint, ...] = ()
    submission: tuple[Endpoint, ...] = ()
    submissions: tuple[Endpoint, ...] = ()
    imap: tuple[Endpoint, ...] = ()
    imaps: tuple[Endpoint, ...] = ()
    pop3: tuple[Endpoint, ...] = ()
    pop3s: tuple[Endpoint, ...] = ()
    metrics: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path | None = None  # None: a development certificate is made under data_dir/tls
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class RelayConfig:
    local_domains: tuple[str, ...] = ()
    relay_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_message_size: int = 10_240_000  # Postfix message_size_limit
    max_recipients: int = 1000  # RFC 5321 §4.5.3.1.8 requires at least 100; Postfix uses 1000


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    idle_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: server timeout of 5 minutes


@dataclass(frozen=True, slots=True)
class QueueConfig:
    map_size: int = 64 << 20  # initial LMDB map; it grows as needed
    max_map_size: int = 1 << 40  # growth stops here: then 452 4.3.1
    commit_delay: float = 0.0  # extra seconds to wait for more messages before a group commit


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    enabled: bool = True  # false: accept and queue only (maintenance; Postfix defer_transports)
    smarthost: Endpoint | None = None  # None: direct to each domain's MX
    nameservers: tuple[str, ...] = ()  # "ip" or "ip:port"; empty: the system resolver
    port: int = 25  # remote MX port
    max_connections: int = 100  # outbound connections per worker
    max_connections_per_destination: int = 20  # Postfix default_destination_concurrency_limit
    connect_timeout: float = 30.0  # Postfix smtp_connect_timeout
    command_timeout: float = 300.0  # RFC 5321 §4.5.3.2.2-4: MAIL, RCPT 5 minutes
    data_timeout: float = 600.0  # RFC 5321 §4.5.3.2.6: DATA termination 10 minutes
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 3600.0, 14400.0)  # last repeats
    max_queue_lifetime: float = 5 * 86400.0  # Postfix maximal_queue_lifetime
    delay_warning: float = 4 * 3600.0  # 0 disables the delay DSN
    tls_verify: tuple[str, ...] = ()  # domains whose MX certificates must verify
    connection_cache_time: float = 2.0  # keep an idle outbound connection this long (Postfix)


@dataclass(frozen=True, slots=True)
class MdaConfig:
    # Plaintext passwords (LOGIN, USER/PASS, AUTH PLAIN) over unencrypted connections are
    # refused except from loopback unless this is set (RFC 8314 §3, Dovecot's default).
    allow_plaintext_auth: bool = False


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # Dovecot auth_cache: a password verified with argon2id within cache_ttl seconds, against
    # the same stored hash, is accepted without hashing again. 0 disables the cache.
    cache_ttl: float = 3600.0  # Dovecot auth_cache_ttl: 1 hour
    cache_size: int = 100_000  # accounts remembered per worker (least recently used evicted)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    mda: MdaConfig = field(default_factory=MdaConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)

    @property
    def worker_count(self) -> int:
        return self.server.workers or (os.cpu_count() or 1)

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.relay.local_domains


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file. Raises ConfigError naming the key."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read: {exc.strerror}", p) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("(file)", f"not valid TOML: {exc}", p) from None
    try:
        return parse(raw, p)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.why, p) from None


def parse(raw: dict[str, Any], path: Path) -> Config:
    base = path.resolve().parent
    sections = {f.name for f in fields(Config)} - {"path"}
    for name in raw:
        if name not in sections:
            raise ConfigError(name, f"unknown section (known: {', '.join(sorted(sections))})")
        if not isinstance(raw[name], dict):
            raise ConfigError(name, "must be a table")
    r = _Reader(raw)
    server = ServerConfig(
        hostname=r.string("server", "hostname", ServerConfig().hostname),
        data_dir=base / r.string("server", "data_dir", str(ServerConfig.data_dir)),
        workers=r.integer("server", "workers", ServerConfig().workers, minimum=0, maximum=256),
    )
    listen = ListenConfig(**{f.name: r.endpoints("listen", f.name) for f in fields(ListenConfig)})
    cert, key = r.string("tls", "cert", ""), r.string("tls", "key", "")
    if bool(cert) != bool(key):
        raise ConfigError("tls.key" if cert else "tls.cert", "cert and key must be set together")
    tls = TlsConfig(cert=base / cert if cert else None, key=base / key if key else None)
    relay = RelayConfig(
        local_domains=tuple(d.lower().rstrip(".") for d in r.strings("relay", "local_domains")),
        relay_networks=r.networks("relay", "relay_networks"),
        max_message_size=r.integer(
            "relay", "max_message_size", RelayConfig().max_message_size, minimum=1024
        ),
        max_recipients=r.integer(
            "relay", "max_recipients", RelayConfig().max_recipients, minimum=100
        ),
    )
    limits = LimitsConfig(
        max_connections=r.integer("limits", "max_connections", LimitsConfig().max_connections, 1),
        max_connections_per_ip=r.integer(
            "limits", "max_connections_per_ip", LimitsConfig().max_connections_per_ip, 1
        ),
        idle_timeout=r.number("limits", "idle_timeout", LimitsConfig().idle_timeout),
    )
    queue = QueueConfig(
        map_size=r.integer("queue", "map_size", QueueConfig().map_size, minimum=1 << 20),
        max_map_size=r.integer("queue", "max_map_size", QueueConfig().max_map_size, 1 << 20),
        commit_delay=r.number("queue", "commit_delay", QueueConfig().commit_delay, allow_zero=True),
    )
    if queue.max_map_size < queue.map_size:
        raise ConfigError("queue.max_map_size", "must be >= queue.map_size")
    d = DeliveryConfig()
    for ns in r.strings("delivery", "nameservers"):
        host, _, port = ns.rpartition(":") if ns.count(":") == 1 else (ns, "", "")
        try:
            ipaddress.ip_address(host or ns)
        except ValueError:
            raise ConfigError("delivery.nameservers", f"{ns!r} is not ip or ip:port") from None
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError("delivery.nameservers", f"{ns!r} has a bad port")
    delivery = DeliveryConfig(
        enabled=r.boolean("delivery", "enabled", d.enabled),
        smarthost=r.endpoint("delivery", "smarthost"),
        nameservers=r.strings("delivery", "nameservers"),
        port=r.integer("delivery", "port", d.port, 1, 65535),
        max_connections=r.integer("delivery", "max_connections", d.max_connections, 1),
        max_connections_per_destination=r.integer(
            "delivery", "max_connections_per_destination", d.max_connections_per_destination, 1),
        connect_timeout=r.duration("delivery", "connect_timeout", d.connect_timeout),
        command_timeout=r.duration("delivery", "command_timeout", d.command_timeout),
        data_timeout=r.duration("delivery", "data_timeout", d.data_timeout),
        retry_schedule=r.durations("delivery", "retry_schedule", d.retry_schedule),
        max_queue_lifetime=r.duration("delivery", "max_queue_lifetime", d.max_queue_lifetime),
        delay_warning=r.duration("delivery", "delay_warning", d.delay_warning, allow_zero=True),
        tls_verify=tuple(x.lower() for x in r.strings("delivery", "tls_verify")),
        connection_cache_time=r.duration("delivery", "connection_cache_time",
                                         d.connection_cache_time, allow_zero=True),
    )
    mda = MdaConfig(allow_plaintext_auth=r.boolean("mda", "allow_plaintext_auth", False))
    auth = AuthConfig(
        cache_ttl=r.duration("auth", "cache_ttl", AuthConfig().cache_ttl, allow_zero=True),
        cache_size=r.integer("auth", "cache_size", AuthConfig().cache_size, minimum=1),
    )
    r.refuse_unknown()
    return Config(path=path, server=server, listen=listen, tls=tls, relay=relay,
                  limits=limits, queue=queue, delivery=delivery, mda=mda, auth=auth)


class _Reader:
    """Typed access to the raw TOML tables that remembers which keys were read."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.seen: set[tuple[str, str]] = set()

    def _get(self, section: str, key: str) -> Any:
        self.seen.add((section, key))
        return self.raw.get(section, {}).get(key)

    def refuse_unknown(self) -> None:
        for section, table in self.raw.items():
            for key in table:
                if (section, key) not in self.seen:
                    raise ConfigError(f"{section}.{key}", "unknown key")

    def string(self, section: str, key: str, default: str) -> str:
        v = self._get(section, key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise ConfigError(f"{section}.{key}", "must be a string")
        return v

    def strings(self, section: str, key: str) -> tuple[str, ...]:
        v = self._get(section, key)
        if v is None:
            return ()
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ConfigError(f"{section}.{key}", "must be a list of non-empty strings")
        return tuple(v)

    def boolean(self, section: str, key: str, default: bool) -> bool:
        v = self._get(section, key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise ConfigError(f"{section}.{key}", "must be true or false")
        return v

    def integer(self, section: str, key: str, default: int, minimum: int = 0,
                maximum: int | None = None) -> int:
        v = self._get(section, key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{section}.{key}", "must be an integer")
        if v < minimum or (maximum is not None and v > maximum):
            bound = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            raise ConfigError(f"{section}.{key}", f"must be {bound}")
        return v

    def number(self, section: str, key: str, default: float, allow_zero: bool = False) -> float:
        v = self._get(section, key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{section}.{key}", "must be a number of seconds")
        if v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"{section}.{key}", "must be a number of seconds > 0")
        return float(v)

    def duration(self, section: str, key: str, default: float, allow_zero: bool = False) -> float:
        """Seconds as a number, or a string with a unit: "90s", "5m", "4h", "5d"."""
        v = self._get(section, key)
        if v is None:
            return default
        seconds = _seconds(v)
        if seconds is None or seconds < 0 or (seconds == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{section}.{key}",
                              f'must be a duration {bound}: seconds, or "30s", "5m", "4h", "5d"')
        return seconds

    def durations(self, section: str, key: str, default: tuple[float, ...]) -> tuple[float, ...]:
        v = self._get(section, key)
        if v is None:
            return default
        values = [_seconds(x) for x in v] if isinstance(v, list) and v else [None]
        if any(x is None or x <= 0 for x in values):
            raise ConfigError(f"{section}.{key}", 'must be a non-empty list of durations ("5m")')
        return tuple(x for x in values if x is not None)

    def endpoints(self, section: str, key: str) -> tuple[Endpoint, ...]:
        return tuple(_endpoint(f"{section}.{key}", item) for item in self.strings(section, key))

    def endpoint(self, section: str, key: str) -> Endpoint | None:
        """One optional "host:port" string ("" or absent: None)."""
        v = self._get(section, key)
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            raise ConfigError(f"{section}.{key}", 'must be a "host:port" string')
        return _endpoint(f"{section}.{key}", v)

    def networks(self, section: str, key: str) -> tuple[Any, ...]:
        out = []
        for item in self.strings(section, key):
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"{section}.{key}", f"{item!r} is not a network") from None
        return tuple(out)


def _endpoint(key: str, item: str) -> Endpoint:
    host, sep, port = item.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"{item!r} is not host:port")
    return Endpoint(host, int(port))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _seconds(v: object) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str) and v[:-1].replace(".", "", 1).isdigit() and v[-1:] in _UNITS:
        return float(v[:-1]) * _UNITS[v[-1]]
    return None
