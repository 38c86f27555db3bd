"""Each worker's live view of the config: the Rust engine's snapshot, the
endpoints and workspace configs the executor needs, and the API keys.

The store's config version is polled (a single cheap read); when it moves, the
whole config is read once, compiled into a snapshot document and loaded by the
Rust engine, which swaps it in atomically (breakers, stats and spend carry
over), so a request always sees one consistent version.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import msgspec

from .. import types as t
from .._core import Engine
from ..catalog import AGENTS, ENDPOINTS, HEALTH, KEYS, MODELS, RULES, WORKSPACES, Catalog

log = logging.getLogger("model_router.engine")


class LiveConfig:
    def __init__(self, catalog: Catalog, settings: t.EngineSettings):
        self.catalog = catalog
        self.settings = settings
        self.engine = Engine()
        self.version = -1  # nothing loaded yet
        self.keys: dict[str, t.ApiKey] = {}
        self.models: dict[str, t.SnapshotModel] = {}
        self.model_names: dict[str, str] = {}  # id or version -> model id
        self.agent_types: set[str] = set()  # those with preferences or named by a rule
        self.endpoints: dict[str, t.Endpoint] = {}
        self.workspaces: dict[str, t.WorkspaceConfig] = {}
        self.loaded_at: float | None = None
        self.last_error: str | None = None

    async def refresh(self) -> bool:
        """Reload when the stored version differs from ours; True if it did."""
        version = await self.catalog.store.version()
        if version == self.version:
            return False
        # Read the version first: a write racing this read only makes the next
        # poll reload once more, never leaves us believing stale data is new.
        document = await self._snapshot_document(version)
        self.engine.load(msgspec.json.encode(document))
        self.version = version
        self.models = {m.id: m for m in document.models}
        self.model_names = {m.version: m.id for m in document.models}
        self.model_names.update((m.id, m.id) for m in document.models)
        self.agent_types = set(document.agent_preferences).union(
            *(r.condition.agent_type or () for r in document.rules)
        )
        self.endpoints = {e.id: e for m in document.models for e in m.endpoints}
        self.workspaces = document.workspace_configs
        self.keys = {k.id: k for k in await self.catalog.all(KEYS)}
        self.loaded_at = time.time()
        self.last_error = None
        log.info("config version %d loaded", version, extra={"configVersion": version})
        return True

    async def _snapshot_document(self, version: int) -> t.ConfigSnapshot:
        c = self.catalog
        endpoints: dict[str, list[t.Endpoint]] = defaultdict(list)
        for endpoint in await c.all(ENDPOINTS):
            endpoints[endpoint.model_id].append(endpoint)
        health = {h.model_id: h for h in await c.all(HEALTH)}
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

    def failed(self, exc: Exception) -> None:
        """A reload failed: keep serving the version we have, and say so in health."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.error("config reload failed; keeping version %d", self.version, exc_info=exc)
