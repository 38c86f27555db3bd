"""Each worker's live view of the config: the Rust engine's snapshot, the
endpoints and workspace configs the executor needs, and the API keys.

The store's config stamp (epoch and version) is read on a beat, on a pub/sub
message, and before any request that follows a write made on this instance
(the shared write counter); when it moved, the whole config is read once,
compiled into a snapshot document and loaded by the Rust engine, which swaps
it in atomically (breakers, stats and spend carry over), so a request always
sees one consistent version. Reloads are serialized: concurrent requests
waiting for one share it.

What is never loaded: a store whose version went backwards or whose epoch
changed to one no import wrote. That is a store reset (a wiped or restored
Redis): the worker keeps its config and keys, reports the reset, and waits
for an operator's import (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable

import msgspec

from .. import types as t
from .._core import Engine, Keys
from ..catalog import (
    AGENTS,
    CANARIES,
    ENDPOINTS,
    EXPERIMENTS,
    HEALTH,
    KEYS,
    MODELS,
    RULES,
    WORKSPACES,
    Catalog,
)
from ..experiments.routing import Rollouts
from ..store import ConfigStamp, ExpectAbsent, Op, PreconditionFailed
from ..telemetry import metrics
from ..telemetry.figures import epoch_ms, override_applies
from .write_counter import WriteCounter

log = logging.getLogger("model_router.engine")


class LiveConfig:
    def __init__(
        self,
        catalog: Catalog,
        settings: t.EngineSettings,
        writes: WriteCounter,
        admin_key_hash: str | None,
    ):
        self.catalog = catalog
        self.settings = settings
        self.writes = writes
        self.writes_seen = -1  # the write count read before the last reload
        self.engine = Engine()
        self.epoch: str | None = None
        self.version = -1  # nothing loaded yet
        self.reset: ConfigStamp | None = None  # the store's stamp, while it is a reset
        self.keys: dict[str, t.ApiKey] = {}
        # What a request's key is checked against: these keys, and the admin
        # key the service was started with (MODEL_ROUTER_ADMIN_KEY).
        self._admin_key_hash = admin_key_hash
        self.key_table = Keys([], admin_key_hash)
        self.models: dict[str, t.SnapshotModel] = {}
        self.model_names: dict[str, str] = {}  # id or version -> model id
        self.agent_types: set[str] = set()  # those with preferences or named by a rule
        self.endpoints: dict[str, t.Endpoint] = {}
        self.workspaces: dict[str, t.WorkspaceConfig] = {}
        self.rollouts: Rollouts | None = None  # None: no canary or experiment routes
        self.loaded_at: float | None = None
        # When the first operator's health report in the snapshot expires (ms).
        self.next_override_expiry_ms: int | None = None
        self.last_error: str | None = None
        # Called after every check of the store's config, whatever it found
        # (the door's plan follows the config and the writes seen).
        self.on_checked: list[Callable[[], None]] = []
        self._reloading = asyncio.Lock()

    def behind(self) -> bool:
        """A write was made on this instance since our last reload (per request)."""
        return self.writes.read() > self.writes_seen

    async def catch_up(self) -> None:
        """Reload before routing, after a write on this instance. Never raises:
        a failed reload routes on the config we have, and the beat retries."""
        target = self.writes.read()
        async with self._reloading:
            if self.writes_seen >= target:
                return  # a reload that started after the write already ran
            try:
                await self._reload_if_moved()
            except Exception as exc:
                self.failed(exc)
                self.writes_seen = target  # don't retry on every request
            finally:
                self._checked()

    async def refresh(self) -> bool:
        """Reload when the store's config moved forward; True if it did."""
        async with self._reloading:
            try:
                return await self._reload_if_moved()
            finally:
                self._checked()

    def _checked(self) -> None:
        for listener in self.on_checked:
            try:
                listener()
            except Exception:  # a listener's bug must not fail the check (or a request)
                log.exception("a config listener failed")

    async def refresh_quietly(self) -> None:
        """refresh(), keeping a failure for health instead of raising it (the
        config poll retries, and logs)."""
        try:
            await self.refresh()
        except Exception as exc:
            self.failed(exc)

    async def _reload_if_moved(self) -> bool:
        # Read the counter, then the stamp, then the documents: a write racing
        # these reads only makes the next check reload once more, never leaves
        # us believing stale data is new.
        writes = self.writes.read()
        stamp = await self.catalog.store.stamp()
        self.last_error = None
        if self.version < 0 and stamp.epoch is None:
            stamp = ConfigStamp(await self.catalog.store.start_epoch(), stamp.version)
        if stamp.epoch == self.epoch and stamp.version == self.version:
            self.writes_seen = writes
            if not self._an_override_expired():
                return False
            await self._load(stamp)  # the same config, without the report that expired
            return True
        if self.version >= 0 and not self._adoptable(stamp):
            self.writes_seen = writes
            self._report_reset(stamp)
            return False
        await self._load(stamp)
        self.writes_seen = writes
        return True

    def _adoptable(self, stamp: ConfigStamp) -> bool:
        """Newer in our epoch, or an epoch an operator's import wrote."""
        if stamp.epoch == self.epoch:
            return stamp.version > self.version
        return stamp.imported

    def _report_reset(self, stamp: ConfigStamp) -> None:
        if self.reset is None:
            log.warning(
                "store reset detected: it holds epoch %s version %d, we serve epoch %s "
                "version %d; keeping our config until the config is imported again",
                stamp.epoch,
                stamp.version,
                self.epoch,
                self.version,
            )
            metrics.STORE_RESET.set(1)
        self.reset = stamp

    async def _load(self, stamp: ConfigStamp) -> None:
        version = stamp.version
        document = await self._snapshot_document(version)
        keys = {k.id: k for k in await self.catalog.all(KEYS)}
        rollouts = Rollouts.of(
            await self.catalog.all(CANARIES), await self.catalog.all(EXPERIMENTS)
        )
        if self.reset is not None:
            keys |= await self._restore_lost_keys(keys)
        self.engine.load(msgspec.json.encode(document))
        self.epoch, self.version = stamp.epoch, version
        self.models = {m.id: m for m in document.models}
        self.model_names = {m.version: m.id for m in document.models}
        self.model_names.update((m.id, m.id) for m in document.models)
        self.agent_types = set(document.agent_preferences).union(
            *(r.condition.agent_type or () for r in document.rules)
        )
        self.endpoints = {e.id: e for m in document.models for e in m.endpoints}
        self.workspaces = document.workspace_configs
        self.rollouts = rollouts
        self.keys = keys
        self.key_table = Keys(
            [(k.id, k.role, k.secret_hash, k.workspace_id) for k in keys.values()],
            self._admin_key_hash,
        )
        self.loaded_at = time.time()
        self.reset = None
        metrics.STORE_RESET.set(0)
        log.info("config version %d loaded", version, extra={"configVersion": version})

    async def _restore_lost_keys(self, stored: dict[str, t.ApiKey]) -> dict[str, t.ApiKey]:
        """After a reset, the keys we kept authenticating with but the store lost
        go back into it (keys are no part of a config import). Returns them."""
        lost = {id: key for id, key in self.keys.items() if id not in stored}
        if lost:
            ops: list[Op] = [ExpectAbsent(KEYS.name, id) for id in lost]
            ops += [KEYS.put(id, key) for id, key in lost.items()]
            # Past the catalog, which refuses writes to a reset store.
            with contextlib.suppress(PreconditionFailed):  # another worker restored them
                await self.catalog.store.apply(ops)
                self.writes.bump()
            log.warning("restored %d API keys the store reset lost", len(lost))
        return lost

    async def _snapshot_document(self, version: int) -> t.ConfigSnapshot:
        c = self.catalog
        endpoints: dict[str, list[t.Endpoint]] = defaultdict(list)
        for endpoint in await c.all(ENDPOINTS):
            endpoints[endpoint.model_id].append(endpoint)
        now_ms = int(time.time() * 1000)
        health = {h.model_id: h for h in await c.all(HEALTH) if override_applies(h, now_ms)}
        expiries = [epoch_ms(h.expires_at) for h in health.values() if h.expires_at]
        self.next_override_expiry_ms = min(expiries, default=None)
        models = [
            t.SnapshotModel(
                id=m.id,
                version=m.version,
                provider=m.provider,
                model_type=m.model_type,
                status=m.status,
                capabilities=m.capabilities,
                compliance=m.compliance,
                pricing=m.pricing,
                tags=m.tags,
                health=health.get(m.id),
                endpoints=sorted(endpoints[m.id], key=lambda e: e.id),
                breaker=m.breaker,
                parameters=m.parameters,
                drop_params=m.drop_params,
            )
            for m in sorted(await c.all(MODELS), key=lambda m: m.id)
        ]
        return t.ConfigSnapshot(
            version=version,
            settings=self.settings,
            models=models,
            rules=await c.all(RULES),
            agent_preferences={a.agent_type: a for a in await c.all(AGENTS)},
            workspace_configs={w.workspace_id: w for w in await c.all(WORKSPACES)},
        )

    def _an_override_expired(self) -> bool:
        expiry = self.next_override_expiry_ms
        return expiry is not None and expiry <= time.time() * 1000

    def failed(self, exc: Exception) -> None:
        """A reload failed: keep serving the version we have, and say so in health
        (the beat that called us logs it)."""
        self.last_error = f"{type(exc).__name__}: {exc}"
