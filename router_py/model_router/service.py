"""One worker's running service: its settings, store, live config and limiter,
and the background tasks that keep them current.

The store can go away: nothing on the routing path waits for it. Config,
keys and spend are local and synced on beats (rate limits spend local leases); while the
store is unreachable the beats keep what they could not send (bounded) and
send it when the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import auth
from . import types as t
from ._core import Clients, release_free_memory
from .audit import Auditor
from .catalog import Catalog, utcnow
from .engine.breakers import BreakerSync, Prober
from .engine.budgets import BudgetLeases
from .engine.executor import Executor, Timeouts
from .engine.health import LEASE_BEAT_MS, TICK_MS, HealthMonitor
from .engine.live import LiveConfig
from .engine.secrets import Redactor
from .engine.spend import SpendSync
from .engine.upstream import UpstreamClient
from .engine.workspace_limits import WorkspaceLimits
from .engine.write_counter import WriteCounter, counter_path
from .experiments.controller import CONTROL_MS, Controller
from .http import ApiError
from .periodic import cancel_all, every, report_failure
from .ratelimit import FailedAuthentications, RateLimiter, retry_after
from .settings import Settings
from .store import Op, SetEpoch, StoreUnavailable, open_store
from .telemetry.requests import RECORDS_FLUSH_MS, RequestObserver
from .telemetry.rollups import RollupSync, retention_ms

if TYPE_CHECKING:
    from .jwt_auth import JwtVerifier

# Spend goes to the store this often: the most a `kill -9` of a worker loses.
SPEND_FLUSH_MS = 100
# Stopping waits this long for the background tasks it cancels (then flushes).
STOP_TASKS_S = 2.0

# How often breaker transitions are shared and half-open endpoints probed: a
# hung provider found by one worker is skipped by all within this.
BREAKER_SYNC_MS = 100
# How often each worker adds its outcome rollups to the store's buckets.
ROLLUP_FLUSH_MS = 1000
# How often the heap's free pages go back to the system: what a burst of
# connections left free is returned within this.
MEMORY_RELEASE_MS = 1000


async def _release_free_memory() -> None:
    # Off the loop: it takes up to ~2 ms after a burst (the GIL released).
    await asyncio.to_thread(release_free_memory)


def jwt_verifier(settings: Settings) -> JwtVerifier | None:
    """The JWT verifier when JWTs are configured. Imported only then: PyJWT
    and the cryptography it loads are 9 MiB of every worker's memory."""
    if not (settings.jwt_secret or settings.jwt_jwks):
        return None
    from .jwt_auth import JwtVerifier

    return JwtVerifier(settings)


class Service:
    def __init__(self, settings: Settings, clients: Clients):
        """`clients`: the worker's table of client addresses (the app's)."""
        self.settings = settings
        self.store = open_store(settings)
        writes = WriteCounter(counter_path(settings.port))
        auditor = Auditor(
            self.store,
            settings.audit_max_entries,
            lambda changes: self.redactor.redact_json(changes),
            utcnow,
        )
        self.catalog = Catalog(
            self.store,
            on_write=writes.bump,
            check_write=self._refuse_writes_to_a_reset_store,
            auditor=auditor,
        )
        self.live = LiveConfig(
            self.catalog,
            t.EngineSettings(fail_open=settings.fail_open, min_samples=settings.min_samples),
            writes,
            auth.hash_key(settings.admin_key) if settings.admin_key else None,
        )
        self.budgets = BudgetLeases(self.live, self.store)
        self.workspace_limits = WorkspaceLimits(self.live, self.store)
        self.spend = SpendSync(
            self.live.engine,
            self.store,
            lambda: [ws for ws, cfg in self.live.workspaces.items() if cfg.budget_limits],
            self.budgets,
        )
        self.limiter = RateLimiter(
            self.store, settings.rate_limit_max, settings.rate_limit_window_ms
        )
        self.failed_auth = FailedAuthentications(
            self.store, settings.auth_failures_per_minute, clients
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
            self.workspace_limits,
        )
        self.breakers = BreakerSync(self.live, self.store)
        self.prober = Prober(self.live, self.client, self.executor.timeouts)
        self.redactor = Redactor(
            self.live,
            [settings.admin_key, settings.metrics_key, settings.jwt_secret],
            settings.redis_url,
        )
        self.active_health = HealthMonitor(self.live, self.store, settings, self.redactor)
        self.observer = RequestObserver(self.store, self.live.engine, settings.recent_requests)
        self.jwt = jwt_verifier(settings)
        self.rollups = RollupSync(
            self.live.engine,
            self.store,
            retention_ms(settings.rollup_minutes_keep_hours, settings.rollup_hours_keep_days),
        )
        self.controller = Controller(self.catalog)
        self.started_at = time.time()
        self.pid = os.getpid()
        self._tasks: list[asyncio.Task[None]] = []
        self._store_changed = asyncio.Event()

    @property
    def backend(self) -> str:
        return "redis" if self.settings.redis_url else "sqlite"

    async def start(self) -> None:
        try:
            await self.live.refresh()
        except StoreUnavailable as exc:
            # Start anyway (alive, not ready): the config poll loads it when the store answers.
            self.live.failed(exc)
            report_failure("first config load", exc)
        s = self.settings
        beats = [
            every(s.config_poll_ms, "config poll", self.live.refresh, self.live.failed),
            every(1000, "rate-limit reconcile", self.limiter.reconcile),
            every(SPEND_FLUSH_MS, "spend flush", self.spend.flush),
            every(SPEND_FLUSH_MS, "workspace token flush", self.workspace_limits.flush),
            every(RECORDS_FLUSH_MS, "request records flush", self.observer.flush_records),
            every(1000, "metrics flush", self.observer.flush_metrics),
            every(BREAKER_SYNC_MS, "breaker sync", self.breakers.sync),
            every(BREAKER_SYNC_MS, "probes", self.prober.probe_due),
            every(BREAKER_SYNC_MS, "active health sync", self.active_health.sync),
            every(LEASE_BEAT_MS, "active health lease", self.active_health.lead),
            every(TICK_MS, "active health probes", self.active_health.probe_due),
            every(ROLLUP_FLUSH_MS, "rollup flush", self.rollups.flush),
            every(ROLLUP_FLUSH_MS, "experiment outcomes flush", self.observer.arms.flush),
            every(CONTROL_MS, "canary and experiment control", self.controller.tick),
            every(MEMORY_RELEASE_MS, "free memory release", _release_free_memory),
        ]
        self._tasks = [asyncio.create_task(beat) for beat in beats]
        self._tasks.append(asyncio.create_task(self.store.watch_config(self._store_changed.set)))
        self._tasks.append(asyncio.create_task(self._reload_on_change()))

    async def _reload_on_change(self) -> None:
        """Reload when the store says another process wrote the config (pub/sub)."""
        while True:
            await self._store_changed.wait()
            self._store_changed.clear()
            await self.live.refresh_quietly()

    async def stop(self) -> None:
        await self.prober.stop()
        await cancel_all(self._tasks, STOP_TASKS_S)
        # After the beats: none takes a lease back.
        await self.active_health.stop()
        await self.controller.stop()
        # Counts, spend and records since the last beat are not lost on a clean stop.
        with contextlib.suppress(Exception):
            await self.limiter.reconcile()
        with contextlib.suppress(Exception):
            await self.spend.flush()
        with contextlib.suppress(Exception):
            await self.workspace_limits.flush()
        with contextlib.suppress(Exception):
            await self.observer.flush_records()
        await self.observer.flush_metrics()
        with contextlib.suppress(Exception):
            await self.rollups.flush()
        with contextlib.suppress(Exception):
            await self.observer.arms.flush()
        await self.client.close()
        await self.store.close()
        self.live.writes.close()
        self.observer.flush_log()

    def _refuse_writes_to_a_reset_store(self, ops: Sequence[Op]) -> None:
        """A write to a reset store would answer 2xx and never be routed under:
        only the import that recovers the store may write to it."""
        reset = self.live.reset
        if reset is not None and not any(isinstance(op, SetEpoch) for op in ops):
            raise ApiError(
                409,
                "store_reset",
                "the state store was reset and the router keeps serving its last config; "
                "import the config first (POST /api/config/import or `model-router config "
                "import`, see docs/operations.md)",
                {
                    "storeEpoch": reset.epoch,
                    "storeVersion": reset.version,
                    "servedEpoch": self.live.epoch,
                    "servedVersion": self.live.version,
                },
            )

    async def authenticate(self, authorization: str | None, client: str) -> auth.Principal:
        """The caller, or 401; 429 for an address past its failed authentications."""
        if self.failed_auth.limit:
            wait = self.failed_auth.blocked_for(client)
            if wait is not None:
                raise self._too_many_failures(wait)
        try:
            return await self._principal(authorization)
        except ApiError as err:
            if err.status == 401 and self.failed_auth.limit:
                wait = await self.failed_auth.failed(client)
                if wait is not None:
                    raise self._too_many_failures(wait) from None
            raise

    def _too_many_failures(self, wait_s: float) -> ApiError:
        wait = retry_after(wait_s)
        limit = self.settings.auth_failures_per_minute
        return ApiError(
            429,
            "too_many_failed_authentications",
            f"more than {limit} failed authentications from this address in a minute; "
            f"retry after {wait} s",
            {"limit": limit, "retryAfterSeconds": int(wait)},
            [("retry-after", wait)],
        )

    async def _principal(self, authorization: str | None) -> auth.Principal:
        key = auth.bearer_token(authorization)
        if self.jwt is not None and auth.looks_like_jwt(key):
            return await self.jwt.authenticate(key)
        # No store read for a key we do not know. A key created through
        # another worker is already here (the request caught up with that
        # write); through another replica, once its publish arrives.
        found = self.live.key_table.verify(key)
        if found is None:
            raise auth.invalid_key()
        return auth.Principal(*found)

    async def check_rate(self, principal: auth.Principal) -> list[tuple[str, str]]:
        """Admit one request of the key, or 429; the X-RateLimit-* headers."""
        verdict = await self.limiter.admit(principal.key_id)
        headers = verdict.headers()
        if not verdict.admitted:
            retry_after = headers[-1][1]
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {self.settings.rate_limit_max} requests per "
                f"{self.settings.rate_limit_window_ms} ms exceeded",
                {"retryAfterSeconds": int(retry_after)},
                [("retry-after", retry_after), *headers],
            )
        return headers
