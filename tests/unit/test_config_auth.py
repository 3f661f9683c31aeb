"""relay.config [auth]: the login cache keys (Dovecot auth_cache_ttl / auth_cache_size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay import config
from relay.config import ConfigError

BUNDLED = Path(__file__).resolve().parents[2] / "config" / "relay.toml"


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(path)


def test_defaults_are_one_hour_and_100k_accounts(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert cfg.auth.cache_ttl == 3600.0
    assert cfg.auth.cache_size == 100_000


def test_bundled_config_sets_the_auth_keys() -> None:
    cfg = config.load(BUNDLED)
    assert (cfg.auth.cache_ttl, cfg.auth.cache_size) == (3600.0, 100_000)


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("90", 90.0), ('"15m"', 900.0),
                                                ('"2h"', 7200.0), ("0.5", 0.5)])
def test_cache_ttl_is_a_duration_and_zero_disables(tmp_path: Path, value: str,
                                                   seconds: float) -> None:
    cfg = load_text(tmp_path, f"[auth]\ncache_ttl = {value}\n")
    assert cfg.auth.cache_ttl == seconds


def test_cache_size_is_read(tmp_path: Path) -> None:
    assert load_text(tmp_path, "[auth]\ncache_size = 5\n").auth.cache_size == 5


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[auth]\ncache_ttl = -1\n", "auth.cache_ttl"),
        ('[auth]\ncache_ttl = "1 hour"\n', "auth.cache_ttl"),
        ("[auth]\ncache_ttl = true\n", "auth.cache_ttl"),
        ("[auth]\ncache_ttl = nan\n", "auth.cache_ttl"),
        ("[auth]\ncache_ttl = inf\n", "auth.cache_ttl"),
        ("[auth]\ncache_size = 0\n", "auth.cache_size"),
        ("[auth]\ncache_size = -5\n", "auth.cache_size"),
        ("[auth]\ncache_size = 1.5\n", "auth.cache_size"),
        ('[auth]\ncache_size = "100"\n', "auth.cache_size"),
        ("[auth]\ncache_size = false\n", "auth.cache_size"),
        ("[auth]\ncache = 1\n", "auth.cache"),
        ("auth = 1\n", "auth"),
    ],
)
def test_bad_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert info.value.key == key
    assert f"{key}: " in str(info.value)


def test_negative_ttl_message_says_zero_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "[auth]\ncache_ttl = -1\n")
    assert "must be a duration >= 0" in str(info.value)
