"""relay.config: the bundled file loads; every bad value or unknown key names its key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from relay import config
from relay.config import ConfigError, Endpoint

BUNDLED = Path(__file__).resolve().parents[2] / "config" / "relay.toml"


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(path)


def refused(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


# ---- the bundled configuration ------------------------------------------------------------


def test_bundled_config_loads() -> None:
    cfg = config.load(BUNDLED)
    assert cfg.server.hostname == "mx.example.test"
    assert cfg.listen.smtp == (Endpoint("127.0.0.1", 2525),)
    assert cfg.listen.metrics == (Endpoint("127.0.0.1", 9325),)
    assert cfg.relay.local_domains == ("example.test",)
    assert cfg.relay.relay_networks == (ipaddress.ip_network("127.0.0.0/8"),
                                        ipaddress.ip_network("::1/128"))
    assert cfg.relay.max_message_size == 10240000
    assert cfg.relay.max_recipients == 1000
    assert cfg.limits.idle_timeout == 300.0
    assert cfg.tls.cert is None and cfg.tls.key is None


def test_bundled_data_dir_is_resolved_against_the_config_directory() -> None:
    cfg = config.load(BUNDLED)
    assert cfg.server.data_dir.resolve() == (BUNDLED.parent.parent / "var").resolve()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert cfg.relay.max_recipients == 1000
    assert cfg.limits.idle_timeout == 300.0
    assert cfg.listen.smtp == ()


# ---- paths ---------------------------------------------------------------------------------------


def test_relative_data_dir_is_resolved_against_the_config_file_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "relay.toml").write_text('[server]\ndata_dir = "state/q"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config.load(Path("../etc/relay.toml"))
    assert cfg.server.data_dir.is_absolute()
    assert cfg.server.data_dir.resolve() == (conf_dir / "state" / "q").resolve()


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs"
    cfg = load_text(tmp_path, f'[server]\ndata_dir = "{target}"\n')
    assert cfg.server.data_dir == target


def test_relative_tls_paths_are_resolved_against_the_config_file_directory(
        tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    assert cfg.tls.cert == tmp_path.resolve() / "c.pem"
    assert cfg.tls.key == tmp_path.resolve() / "k.pem"


# ---- bad values name their key -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[limits]\nidle_timeout = 0\n", "limits.idle_timeout"),
        ("[limits]\nidle_timeout = -5\n", "limits.idle_timeout"),
        ('[limits]\nidle_timeout = "300"\n', "limits.idle_timeout"),
        ("[limits]\nidle_timeout = true\n", "limits.idle_timeout"),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        ("[limits]\nmax_connections_per_ip = 1.5\n", "limits.max_connections_per_ip"),
        ("[relay]\nmax_recipients = 99\n", "relay.max_recipients"),
        ('[relay]\nmax_recipients = "1000"\n', "relay.max_recipients"),
        ("[relay]\nmax_message_size = 1023\n", "relay.max_message_size"),
        ("[relay]\nmax_message_size = true\n", "relay.max_message_size"),
        ('[relay]\nlocal_domains = "example.test"\n', "relay.local_domains"),
        ('[relay]\nlocal_domains = [""]\n', "relay.local_domains"),
        ('[relay]\nrelay_networks = ["not-a-net"]\n', "relay.relay_networks"),
        ('[relay]\nrelay_networks = ["10.0.0.0/33"]\n', "relay.relay_networks"),
        ('[listen]\nsmtp = ["127.0.0.1"]\n', "listen.smtp"),
        ('[listen]\nsmtp = ["127.0.0.1:0"]\n', "listen.smtp"),
        ('[listen]\nsmtp = ["127.0.0.1:65536"]\n', "listen.smtp"),
        ('[listen]\nsmtp = [":25"]\n', "listen.smtp"),
        ('[listen]\nsmtp = ["host:port"]\n', "listen.smtp"),
        ('[listen]\nsmtp = "127.0.0.1:25"\n', "listen.smtp"),
        ('[listen]\nmetrics = ["localhost"]\n', "listen.metrics"),
        ("[server]\nworkers = -1\n", "server.workers"),
        ("[server]\nworkers = 257\n", "server.workers"),
        ("[server]\nhostname = 5\n", "server.hostname"),
        ("[queue]\nmap_size = 1000\n", "queue.map_size"),
        ("[queue]\nmap_size = 4194304\nmax_map_size = 2097152\n", "queue.max_map_size"),
        ("[queue]\ncommit_delay = -0.1\n", "queue.commit_delay"),
        ('[delivery]\nsmarthost = "relay.example"\n', "delivery.smarthost"),
        ("[delivery]\nsmarthost = 25\n", "delivery.smarthost"),
        ('[delivery]\nnameservers = ["dns.example"]\n', "delivery.nameservers"),
        ('[delivery]\nnameservers = ["192.0.2.53:0"]\n', "delivery.nameservers"),
        ("[delivery]\nport = 0\n", "delivery.port"),
        ('[delivery]\nconnect_timeout = "5x"\n', "delivery.connect_timeout"),
        ("[delivery]\ncommand_timeout = 0\n", "delivery.command_timeout"),
        ("[delivery]\nretry_schedule = []\n", "delivery.retry_schedule"),
        ('[delivery]\nretry_schedule = ["1m", "0s"]\n', "delivery.retry_schedule"),
        ("[delivery]\nbogus = 1\n", "delivery.bogus"),
    ],
)
def test_bad_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    err = refused(tmp_path, text)
    assert err.key == key
    assert f"{key}: " in str(err)


@pytest.mark.parametrize("key", ["limits.idle_timeout", "queue.commit_delay",
                                 "delivery.connect_timeout", "delivery.data_timeout"])
def test_nan_duration_is_refused(tmp_path: Path, key: str) -> None:
    # TOML allows nan, and NaN passes both "< 0" and "== 0": it must still be refused.
    section, name = key.split(".")
    err = refused(tmp_path, f"[{section}]\n{name} = nan\n")
    assert err.key == key


def test_tls_cert_without_key_names_tls_key(tmp_path: Path) -> None:
    err = refused(tmp_path, '[tls]\ncert = "c.pem"\n')
    assert err.key == "tls.key"


def test_tls_key_without_cert_names_tls_cert(tmp_path: Path) -> None:
    err = refused(tmp_path, '[tls]\nkey = "k.pem"\n')
    assert err.key == "tls.cert"


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    err = refused(tmp_path, "[server]\nbogus = 1\n")
    assert err.key == "server.bogus"
    assert "server.bogus: unknown key" in str(err)


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    err = refused(tmp_path, "[bogus]\nx = 1\n")
    assert err.key == "bogus"
    assert "bogus: unknown section" in str(err)


def test_section_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    err = refused(tmp_path, "server = 1\n")
    assert err.key == "server"


def test_error_names_the_file(tmp_path: Path) -> None:
    err = refused(tmp_path, "[server]\nbogus = 1\n")
    assert str(err).startswith(f"{tmp_path / 'relay.toml'}: server.bogus: ")


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    err = refused(tmp_path, "[server\n")
    assert err.key == "(file)"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "absent.toml")
    assert info.value.key == "(file)"


# ---- good values ---------------------------------------------------------------------------------


def test_ipv6_endpoint_in_brackets(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[listen]\nsmtp = ["[::1]:2525", "0.0.0.0:25"]\n')
    assert cfg.listen.smtp == (Endpoint("::1", 2525), Endpoint("0.0.0.0", 25))
    assert str(cfg.listen.smtp[0]) == "[::1]:2525"


def test_local_domains_are_lower_cased_without_trailing_dot(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[relay]\nlocal_domains = ["Example.TEST."]\n')
    assert cfg.relay.local_domains == ("example.test",)
    assert cfg.is_local_domain("EXAMPLE.test.")


def test_max_recipients_of_100_is_accepted(tmp_path: Path) -> None:
    # RFC 5321 §4.5.3.1.8: at least 100 recipients must be accepted.
    assert load_text(tmp_path, "[relay]\nmax_recipients = 100\n").relay.max_recipients == 100


def test_integer_idle_timeout_becomes_float(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[limits]\nidle_timeout = 30\n")
    assert cfg.limits.idle_timeout == 30.0
    assert isinstance(cfg.limits.idle_timeout, float)


def test_duration_strings_are_seconds(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[delivery]\nconnect_timeout = "90s"\ncommand_timeout = "5m"\n'
                              'retry_schedule = ["1m", "1h", "1d"]\n')
    assert cfg.delivery.connect_timeout == 90.0
    assert cfg.delivery.command_timeout == 300.0
    assert cfg.delivery.retry_schedule == (60.0, 3600.0, 86400.0)


def test_smarthost_is_one_endpoint(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[delivery]\nsmarthost = "[2001:db8::25]:587"\n')
    assert cfg.delivery.smarthost == Endpoint("2001:db8::25", 587)


def test_zero_commit_delay_is_accepted(tmp_path: Path) -> None:
    assert load_text(tmp_path, "[queue]\ncommit_delay = 0\n").queue.commit_delay == 0.0


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    with pytest.raises(AttributeError):
        cfg.relay.max_recipients = 5  # type: ignore[misc]
