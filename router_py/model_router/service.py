"""One worker's running service: its settings, store, live config and limiter,
and the background tasks that keep them current."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from . import auth
from . import types as t
from .catalog import KEYS, Catalog
from .engine.breakers import BreakerSync, Prober
from .engine.budgets import BudgetLeases
from .engine.executor import Executor, Timeouts
from .engine.live import LiveConfig
from .engine.spend import SpendSync
from .engine.upstream import UpstreamClient
from .http import ApiError
from .periodic import every, log_failure
from .ratelimit import RateLimiter
from .settings import Settings
from .store import open_store
from .telemetry.requests import RequestObserver
from .telemetry.rollups import RollupSync, retention_ms

# How often breaker transitions are shared and half-open endpoints probed: a
# hung provider found by one worker is skipped by all within this.
BREAKER_SYNC_MS = 100
# How often each worker adds its outcome rollups to the store's buckets.
ROLLUP_FLUSH_MS = 1000


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = open_store(settings)
        self.catalog = Catalog(self.store)
        self.live = LiveConfig(
            self.catalog,
            t.EngineSettings(fail_open=settings.fail_open, min_samples=settings.min_samples),
        )
        self.budgets = BudgetLeases(self.live, self.store)
        self.spend = SpendSync(
            self.live.engine,
            self.store,
            lambda: [ws for ws, cfg in self.live.workspaces.items() if cfg.budget_limits],
            self.budgets,
        )
        self.limiter = RateLimiter(
            self.store, settings.rate_limit_max, settings.rate_limit_window_ms
        )
        self.client = UpstreamClient(settings.upstream_pool, settings.max_upstream_body_bytes)
        self.executor = Executor(
            self.live,
            self.client,
            settings.max_attempts,
            Timeouts(
                connect_ms=settings.connect_timeout_ms,
                first_byte_ms=settings.first_byte_timeout_ms,
                attempt_ms=settings.upstream_timeout_ms,
                first_token_ms=settings.first_token_timeout_ms,
                stream_idle_ms=settings.stream_idle_timeout_ms,
            ),
            self.budgets,
        )
        self.breakers = BreakerSync(self.live, self.store)
        self.prober = Prober(self.live, self.client, self.executor.timeouts)
        self.observer = RequestObserver(self.store, self.live.engine, settings.recent_requests)
        self.rollups = RollupSync(
            self.live.engine,
            self.store,
            retention_ms(settings.rollup_minutes_keep_hours, settings.rollup_hours_keep_days),
        )
        self.started_at = time.time()
        self.pid = os.getpid()
        self._admin_key_hash = auth.hash_key(settings.admin_key) if settings.admin_key else None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def backend(self) -> str:
        return "redis" if self.settings.redis_url else "sqlite"

    async def start(self) -> None:
        await self.live.refresh()
        beats = [
            ("config-poll", self.settings.config_poll_ms, self.live.refresh, self.live.failed),
            ("breaker-sync", BREAKER_SYNC_MS, self.breakers.sync, log_failure("breaker sync")),
            ("probes", BREAKER_SYNC_MS, self.prober.probe_due, log_failure("probes")),
            ("rate-limit-sync", 1000, self.limiter.sync, log_failure("rate-limit sync")),
            ("spend-sync", 1000, self.spend.flush, log_failure("spend flush")),
            ("telemetry-flush", 1000, self.observer.flush, log_failure("telemetry flush")),
            ("rollup-flush", ROLLUP_FLUSH_MS, self.rollups.flush, log_failure("rollup flush")),
        ]
        self._tasks = [
            asyncio.create_task(every(interval, work, on_error), name=name)
            for name, interval, work, on_error in beats
        ]

    async def stop(self) -> None:
        await self.prober.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Counts and spend since the last sync are not lost on a clean stop.
        with contextlib.suppress(Exception):
            await self.limiter.sync()
        with contextlib.suppress(Exception):
            await self.spend.flush()
        with contextlib.suppress(Exception):
            await self.observer.flush()
        with contextlib.suppress(Exception):
            await self.rollups.flush()
        await self.client.close()
        await self.store.close()

    async def authenticate(self, authorization: str | None) -> auth.Principal:
        key = auth.bearer_token(authorization)
        principal = auth.bootstrap_principal(key, self._admin_key_hash)
        if principal is not None:
            return principal
        key_id = auth.key_id_of(key)
        if key_id is None:
            raise auth.invalid_key()
        record: t.ApiKey | None = self.live.keys.get(key_id)
        if record is None:
            # Created moments ago through another worker: not yet in our view.
            record = await self.catalog.get(KEYS, key_id)
        return auth.verify(key, record)

    def check_rate(self, principal: auth.Principal) -> None:
        retry_after = self.limiter.hit(principal.key_id)
        if retry_after is not None:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {self.settings.rate_limit_max} requests per "
                f"{self.settings.rate_limit_window_ms} ms exceeded",
                {"retryAfterSeconds": retry_after},
                [("retry-after", str(int(retry_after)))],
            )
