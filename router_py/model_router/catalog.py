"""Typed documents over the Store: which Struct lives under which kind, and the
read-modify-write loop that keeps concurrent updates from losing each other.
Every write is first shown to `check_write` (which may refuse it), then to
the auditor (whose entry, if any, lands in the same atomic apply) and, once
it lands, reported to `on_write` (the service bumps the instance's write
counter there, so the next request routes under it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

import msgspec

from . import types as t
from .store import AppendAudit, ExpectBody, Op, PreconditionFailed, Put, Store

T = TypeVar("T", bound=msgspec.Struct)


@dataclass(frozen=True)
class Kind(Generic[T]):
    name: str
    type: type[T]
    label: str  # what one is called in messages: "model", "rule"

    def encode(self, doc: T) -> bytes:
        return msgspec.json.encode(doc)

    def decode(self, raw: bytes) -> T:
        return msgspec.json.decode(raw, type=self.type)

    def put(self, id: str, doc: T) -> Put:
        return Put(self.name, id, self.encode(doc))


MODELS = Kind("models", t.Model, "model")
ENDPOINTS = Kind("endpoints", t.Endpoint, "endpoint")
RULES = Kind("rules", t.RoutingRule, "rule")
AGENTS = Kind("agents", t.AgentPreferences, "agentType")
WORKSPACES = Kind("workspaces", t.WorkspaceConfig, "workspace")
HEALTH = Kind("health", t.ModelHealth, "health")
KEYS = Kind("keys", t.ApiKey, "key")
# Live state an operator starts and the controller moves (docs/experiments.md):
# documents, so every worker reloads them with the config, but not config
# (an export or import leaves them alone).
CANARIES = Kind("canaries", t.Canary, "canary")
EXPERIMENTS = Kind("experiments", t.Experiment, "experiment")
LABELS = {
    k.name: k.label
    for k in (MODELS, ENDPOINTS, RULES, AGENTS, WORKSPACES, HEALTH, KEYS, CANARIES, EXPERIMENTS)
}

CONFIG_KINDS = (MODELS, ENDPOINTS, RULES, AGENTS, WORKSPACES)


class WriteAuditor(Protocol):
    async def entry(self, ops: Sequence[Op]) -> AppendAudit | None: ...

    def landed(self, audit: AppendAudit, version: int) -> None: ...


class ConcurrentUpdate(Exception):
    """Other writers kept changing a document while an update tried to land."""


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso(ms: int) -> str:
    """A time in ms since the epoch, written as utcnow writes the present."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Catalog:
    def __init__(
        self,
        store: Store,
        on_write: Callable[[], object] = lambda: None,
        check_write: Callable[[Sequence[Op]], object] = lambda ops: None,
        auditor: WriteAuditor | None = None,
    ):
        self.store = store
        self.on_write = on_write
        self.check_write = check_write
        self.auditor = auditor

    async def get(self, kind: Kind[T], id: str) -> T | None:
        raw = await self.store.get(kind.name, id)
        return None if raw is None else kind.decode(raw)

    async def all(self, kind: Kind[T]) -> list[T]:
        return [kind.decode(raw) for raw in (await self.store.get_all(kind.name)).values()]

    async def apply(self, ops: Sequence[Op]) -> int:
        self.check_write(ops)
        audit = await self.auditor.entry(ops) if self.auditor is not None else None
        version = await self.store.apply([*ops, audit] if audit is not None else ops)
        self.on_write()
        if audit is not None and self.auditor is not None:
            self.auditor.landed(audit, version)
        return version

    async def update(
        self, kind: Kind[T], ids: Sequence[str], change: Callable[[T], T], attempts: int = 8
    ) -> list[T] | str:
        """Apply ``change`` to each document, all at once, as a compare-and-set
        that retries when another writer got there first. Returns the new
        documents, or the first id that does not exist (nothing changed then)."""
        for _ in range(attempts):
            raws = [await self.store.get(kind.name, id) for id in ids]
            missing = next((id for id, raw in zip(ids, raws, strict=True) if raw is None), None)
            if missing is not None:
                return missing
            new = [change(kind.decode(raw)) for raw in raws if raw is not None]
            ops: list[Op] = [
                ExpectBody(kind.name, id, raw) for id, raw in zip(ids, raws, strict=True) if raw
            ]
            ops += [kind.put(id, doc) for id, doc in zip(ids, new, strict=True)]
            try:
                await self.apply(ops)
            except PreconditionFailed:
                continue
            return new
        raise ConcurrentUpdate(f"{kind.label} changed {attempts} times while being updated; retry")
