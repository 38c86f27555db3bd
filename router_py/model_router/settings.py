"""Configuration from the environment, checked once at start.

A bad value stops the service with a message that names the variable, rather
than surfacing later as a strange runtime failure.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ENVIRONMENTS = ("development", "production")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    port: int = 3003
    host: str = "0.0.0.0"
    redis_url: str | None = None
    redis_namespace: str = "mr"
    data_dir: Path = Path("./data")
    env: str = "development"
    log_level: str = "info"
    rate_limit_max: int = 1000
    rate_limit_window_ms: int = 900_000
    workers: int = os.cpu_count() or 1
    admin_key: str | None = None
    max_body_bytes: int = 1_048_576
    config_poll_ms: int = 250
    fail_open: bool = False
    min_samples: int = 20
    max_attempts: int = 4
    upstream_timeout_ms: int = 30_000
    request_timeout_ms: int = 60_000
    connect_timeout_ms: int = 5_000
    first_byte_timeout_ms: int = 30_000
    first_token_timeout_ms: int = 30_000
    stream_idle_timeout_ms: int = 30_000
    max_upstream_body_bytes: int = 16 * 1024 * 1024
    upstream_pool: int = 512
    recent_requests: int = 1000
    rollup_minutes_keep_hours: int = 48  # minute buckets of the outcome rollups
    rollup_hours_keep_days: int = 35  # hour buckets
    interface: str = "rsgi"
    # The core's front door owns the port and hands requests to Granian on a
    # private socket (docs/data-plane.md).
    door: bool = True
    # Active health monitoring of endpoints with a healthCheckUrl (issue 9).
    health_probe_interval_ms: int = 10_000
    health_probe_timeout_ms: int = 5_000
    health_failures_to_down: int = 3  # K consecutive failed probes take it out
    health_successes_to_up: int = 2  # J consecutive good probes bring it back
    # Store faults and shutdown (issue 8).
    store_timeout_ms: int = 1000
    shutdown_grace_s: int = 30
    metrics_key: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    jwt_secret: str | None = None
    jwt_jwks: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: int = 30
    backlog: int = 2048
    max_connections: int = 16_384
    header_read_timeout_ms: int = 10_000
    audit_max_entries: int = 10_000
    auth_failures_per_minute: int = 20  # per client address; 0: no limit
    max_in_flight_per_client: int = 1024  # per client address and worker; 0: no cap
    client_address_header: str | None = None  # set by a trusted ingress (X-Forwarded-For)

    @property
    def unattributed_clients(self) -> bool:
        """Per-address limits are on, no header names the client's address, and
        the service listens beyond loopback: most likely behind an ingress or
        load balancer, whose one address every request would then share (a few
        bad keys from anyone and everyone gets 429). A loopback-only listener
        is a local trial or a sidecar's, where the peer is the client."""
        limits_on = self.auth_failures_per_minute > 0 or self.max_in_flight_per_client > 0
        return limits_on and self.client_address_header is None and not _loopback(self.host)

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "model-router.sqlite3"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        d = cls()

        def read(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r}: {exc}") from None

        settings = cls(
            port=read("PORT", _int_in(1, 65535), d.port),
            host=read("HOST", str, d.host),
            redis_url=read("REDIS_URL", _redis_url, None),
            redis_namespace=read("MODEL_ROUTER_REDIS_NAMESPACE", _namespace, d.redis_namespace),
            data_dir=read("MODEL_ROUTER_DATA_DIR", Path, d.data_dir),
            env=read("MODEL_ROUTER_ENV", _one_of(ENVIRONMENTS), d.env),
            log_level=read("LOG_LEVEL", _one_of(LOG_LEVELS), d.log_level),
            rate_limit_max=read("RATE_LIMIT_MAX", _int_in(1, 10**9), d.rate_limit_max),
            rate_limit_window_ms=read(
                "RATE_LIMIT_WINDOW_MS", _int_in(1000, 31 * 86_400_000), d.rate_limit_window_ms
            ),
            workers=read("MODEL_ROUTER_WORKERS", _int_in(1, 256), d.workers),
            admin_key=read("MODEL_ROUTER_ADMIN_KEY", _secret, None),
            max_body_bytes=read(
                "MODEL_ROUTER_MAX_BODY_BYTES", _int_in(1024, 64 * 1_048_576), d.max_body_bytes
            ),
            config_poll_ms=read("MODEL_ROUTER_CONFIG_POLL_MS", _int_in(10, 1000), d.config_poll_ms),
            fail_open=read("MODEL_ROUTER_FAIL_OPEN", _bool, d.fail_open),
            min_samples=read("MODEL_ROUTER_MIN_SAMPLES", _int_in(1, 100_000), d.min_samples),
            max_attempts=read("MODEL_ROUTER_MAX_ATTEMPTS", _int_in(1, 20), d.max_attempts),
            upstream_timeout_ms=read(
                "MODEL_ROUTER_UPSTREAM_TIMEOUT_MS", _int_in(1, 600_000), d.upstream_timeout_ms
            ),
            request_timeout_ms=read(
                "MODEL_ROUTER_REQUEST_TIMEOUT_MS", _int_in(1, 600_000), d.request_timeout_ms
            ),
            connect_timeout_ms=read(
                "MODEL_ROUTER_CONNECT_TIMEOUT_MS", _int_in(1, 600_000), d.connect_timeout_ms
            ),
            first_byte_timeout_ms=read(
                "MODEL_ROUTER_FIRST_BYTE_TIMEOUT_MS", _int_in(1, 600_000), d.first_byte_timeout_ms
            ),
            first_token_timeout_ms=read(
                "MODEL_ROUTER_FIRST_TOKEN_TIMEOUT_MS", _int_in(1, 600_000), d.first_token_timeout_ms
            ),
            stream_idle_timeout_ms=read(
                "MODEL_ROUTER_STREAM_IDLE_TIMEOUT_MS", _int_in(1, 600_000), d.stream_idle_timeout_ms
            ),
            max_upstream_body_bytes=read(
                "MODEL_ROUTER_MAX_UPSTREAM_BODY_BYTES",
                _int_in(1024, 1 << 30),
                d.max_upstream_body_bytes,
            ),
            upstream_pool=read("MODEL_ROUTER_UPSTREAM_POOL", _int_in(1, 100_000), d.upstream_pool),
            interface=read("MODEL_ROUTER_INTERFACE", _one_of(("rsgi", "asgi")), d.interface),
            door=read("MODEL_ROUTER_DOOR", _bool, d.door),
            recent_requests=read(
                "MODEL_ROUTER_RECENT_REQUESTS", _int_in(1, 1_000_000), d.recent_requests
            ),
            store_timeout_ms=read(
                "MODEL_ROUTER_STORE_TIMEOUT_MS", _int_in(10, 60_000), d.store_timeout_ms
            ),
            shutdown_grace_s=read(
                "MODEL_ROUTER_SHUTDOWN_GRACE_S", _int_in(1, 3600), d.shutdown_grace_s
            ),
            metrics_key=read("MODEL_ROUTER_METRICS_KEY", _secret, None),
            tls_cert=read("MODEL_ROUTER_TLS_CERT", _file, None),
            tls_key=read("MODEL_ROUTER_TLS_KEY", _file, None),
            tls_client_ca=read("MODEL_ROUTER_TLS_CLIENT_CA", _file, None),
            jwt_secret=read("MODEL_ROUTER_JWT_SECRET", _secret, None),
            jwt_jwks=read("MODEL_ROUTER_JWT_JWKS", _jwks, None),
            jwt_issuer=read("MODEL_ROUTER_JWT_ISSUER", str, None),
            jwt_audience=read("MODEL_ROUTER_JWT_AUDIENCE", str, None),
            jwt_leeway_s=read("MODEL_ROUTER_JWT_LEEWAY_S", _int_in(0, 600), d.jwt_leeway_s),
            backlog=read("MODEL_ROUTER_BACKLOG", _int_in(128, 65_535), d.backlog),
            max_connections=read(
                "MODEL_ROUTER_MAX_CONNECTIONS", _int_in(16, 1_000_000), d.max_connections
            ),
            header_read_timeout_ms=read(
                "MODEL_ROUTER_HEADER_READ_TIMEOUT_MS", _int_in(1, 60_000), d.header_read_timeout_ms
            ),
            audit_max_entries=read(
                "MODEL_ROUTER_AUDIT_MAX_ENTRIES", _int_in(1, 10_000_000), d.audit_max_entries
            ),
            auth_failures_per_minute=read(
                "MODEL_ROUTER_AUTH_FAILURES_PER_MINUTE",
                _int_in(0, 1_000_000),
                d.auth_failures_per_minute,
            ),
            max_in_flight_per_client=read(
                "MODEL_ROUTER_MAX_IN_FLIGHT_PER_CLIENT",
                _int_in(0, 1_000_000),
                d.max_in_flight_per_client,
            ),
            client_address_header=read("MODEL_ROUTER_CLIENT_ADDRESS_HEADER", _header_name, None),
            rollup_minutes_keep_hours=read(
                "MODEL_ROUTER_ROLLUP_MINUTES_KEEP_HOURS",
                _int_in(1, 24 * 31),
                d.rollup_minutes_keep_hours,
            ),
            rollup_hours_keep_days=read(
                "MODEL_ROUTER_ROLLUP_HOURS_KEEP_DAYS", _int_in(1, 3660), d.rollup_hours_keep_days
            ),
            health_probe_interval_ms=read(
                "MODEL_ROUTER_HEALTH_PROBE_INTERVAL_MS",
                _int_in(100, 3_600_000),
                d.health_probe_interval_ms,
            ),
            health_probe_timeout_ms=read(
                "MODEL_ROUTER_HEALTH_PROBE_TIMEOUT_MS",
                _int_in(10, 600_000),
                d.health_probe_timeout_ms,
            ),
            health_failures_to_down=read(
                "MODEL_ROUTER_HEALTH_FAILURES", _int_in(1, 100), d.health_failures_to_down
            ),
            health_successes_to_up=read(
                "MODEL_ROUTER_HEALTH_SUCCESSES", _int_in(1, 100), d.health_successes_to_up
            ),
        )
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise SettingsError("MODEL_ROUTER_TLS_CERT and MODEL_ROUTER_TLS_KEY go together")
        if settings.tls_client_ca is not None and settings.tls_cert is None:
            raise SettingsError("MODEL_ROUTER_TLS_CLIENT_CA needs MODEL_ROUTER_TLS_CERT and _KEY")
        if settings.health_probe_timeout_ms >= settings.health_probe_interval_ms:
            # A probe still waiting when the next is due would stack probes up.
            raise SettingsError(
                f"MODEL_ROUTER_HEALTH_PROBE_TIMEOUT_MS={settings.health_probe_timeout_ms}: "
                "must be below MODEL_ROUTER_HEALTH_PROBE_INTERVAL_MS="
                f"{settings.health_probe_interval_ms}"
            )
        return settings


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("not a whole number") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return raw


def _jwks(raw: str) -> str:
    """A JWKS file, or an https URL that serves one."""
    if raw.startswith("https://") or Path(raw).is_file():
        return raw
    raise ValueError("neither an https:// URL nor an existing file")


def _file(raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ValueError(f"no such file: {raw}")
    return path


def _secret(raw: str) -> str:
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters")
    return raw


def _header_name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", raw):
        raise ValueError("a header name: 1-64 letters, digits or '-'")
    return raw.lower()


def _namespace(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", raw):
        raise ValueError("1-64 letters, digits, '_', '.' or '-'")
    return raw


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")
