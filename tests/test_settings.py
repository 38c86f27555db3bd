"""Configuration by environment: defaults, parsing, and a clear failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import ROUTER
from model_router.settings import Settings, SettingsError


def test_defaults():
    s = Settings.from_env({})
    assert (s.port, s.redis_url, s.env, s.log_level) == (3003, None, "development", "info")
    assert (s.rate_limit_max, s.rate_limit_window_ms) == (1000, 900_000)
    assert s.data_dir == Path("./data") and s.workers >= 1 and s.admin_key is None


def test_values_are_parsed():
    s = Settings.from_env(
        {
            "PORT": "8080",
            "REDIS_URL": "redis://localhost:6379/2",
            "MODEL_ROUTER_ENV": "Production",
            "LOG_LEVEL": "DEBUG",
            "RATE_LIMIT_MAX": "50",
            "RATE_LIMIT_WINDOW_MS": "60000",
            "MODEL_ROUTER_WORKERS": "3",
            "MODEL_ROUTER_ADMIN_KEY": "x" * 32,
            "MODEL_ROUTER_DATA_DIR": "/tmp/mr",
        }
    )
    assert (s.port, s.env, s.log_level, s.workers) == (8080, "production", "debug", 3)
    assert (s.rate_limit_max, s.rate_limit_window_ms) == (50, 60_000)
    assert s.redis_url == "redis://localhost:6379/2" and s.data_dir == Path("/tmp/mr")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("REDIS_URL", "localhost:6379"),
        ("MODEL_ROUTER_ENV", "staging"),
        ("LOG_LEVEL", "loud"),
        ("RATE_LIMIT_MAX", "0"),
        ("RATE_LIMIT_WINDOW_MS", "-5"),
        ("MODEL_ROUTER_WORKERS", "many"),
        ("MODEL_ROUTER_ADMIN_KEY", "short"),
        ("MODEL_ROUTER_REDIS_NAMESPACE", "a b"),
        ("MODEL_ROUTER_HEALTH_PROBE_INTERVAL_MS", "50"),
        ("MODEL_ROUTER_HEALTH_FAILURES", "0"),
    ],
)
def test_a_bad_value_names_the_variable(name, value):
    with pytest.raises(SettingsError, match=f"^{name}="):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "env",
    [
        {
            "MODEL_ROUTER_HEALTH_PROBE_INTERVAL_MS": "1000",
            "MODEL_ROUTER_HEALTH_PROBE_TIMEOUT_MS": "1000",
        },
        {"MODEL_ROUTER_HEALTH_PROBE_INTERVAL_MS": "2000"},  # the default timeout is 5 s
    ],
)
def test_a_probe_timeout_not_below_the_interval_is_refused(env):
    with pytest.raises(
        SettingsError, match="^MODEL_ROUTER_HEALTH_PROBE_TIMEOUT_MS=.*must be below"
    ):
        Settings.from_env(env)
    below = {**env, "MODEL_ROUTER_HEALTH_PROBE_TIMEOUT_MS": "999"}
    assert Settings.from_env(below).health_probe_timeout_ms == 999


def test_serve_refuses_to_start_on_a_bad_value():
    done = subprocess.run(
        [ROUTER, "serve"],
        env={"PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert b"PORT='not-a-port'" in done.stderr
