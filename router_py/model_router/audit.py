"""The audit trail: every write an API caller makes to the config, keys or
health is stored with who made it, when, what it changed (before and after,
secrets removed) and the config version it produced.

The app marks a request as an audited write (WRITER); the catalog, which
every write goes through, asks the Auditor for the entry and hands it to the
store in the same atomic apply as the write: a write never lands unrecorded,
and a refused one records nothing. Each audited write also gets a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import msgspec

from . import types as t
from .auth import Principal
from .store import AppendAudit, Clear, Delete, ExpectBody, Op, Put, Store

log = logging.getLogger("model_router.audit")

# Documents listed with before and after per entry; a larger write (a config
# import) lists these and counts the rest, so an entry stays bounded.
MAX_CHANGES = 100
# Bytes of JSON: a before or after larger than MAX_DOCUMENT_BYTES is replaced by
# {"truncated": true, "bytes": N}; changes past MAX_ENTRY_BYTES in one entry are
# counted, not listed. The trail is at most MODEL_ROUTER_AUDIT_MAX_ENTRIES such
# entries (docs/operations.md gives the sizes).
MAX_DOCUMENT_BYTES = 8 * 1024
MAX_ENTRY_BYTES = 32 * 1024

# Fields that hold a secret's derivative and are never shown, whatever the kind.
HIDDEN_FIELDS = ("secretHash",)


@dataclass(frozen=True)
class Writer:
    """The request making the writes: set by the app for audited routes."""

    principal: Principal
    method: str
    path: str
    request_id: str


WRITER: ContextVar[Writer | None] = ContextVar("audit_writer", default=None)


def _shown(raw: bytes | None) -> Any:
    if raw is None:
        return None
    if len(raw) > MAX_DOCUMENT_BYTES:
        return {"truncated": True, "bytes": len(raw)}
    doc = msgspec.json.decode(raw)
    if isinstance(doc, dict):
        for name in HIDDEN_FIELDS:
            doc.pop(name, None)
    return doc


class Auditor:
    def __init__(
        self, store: Store, keep: int, redact: Callable[[Any], Any], now: Callable[[], str]
    ):
        self.store = store
        self.keep = keep
        self.redact = redact
        self.now = now

    async def entry(self, ops: Sequence[Op]) -> AppendAudit | None:
        """The audit entry of these writes, when a request of an audited route makes them."""
        writer = WRITER.get()
        if writer is None:
            return None
        known = {(op.kind, op.id): op.body for op in ops if isinstance(op, ExpectBody)}
        cleared: dict[str, dict[str, bytes]] = {}  # kind -> its documents before a Clear
        for op in ops:
            if isinstance(op, Clear):
                stored = op.before if op.before is not None else await self.store.get_all(op.kind)
                cleared[op.kind] = dict(stored)
        changes: list[t.AuditChange] = []
        size = omitted = 0

        def add(kind: str, id: str, before: bytes | None, after: bytes | None) -> None:
            nonlocal size, omitted
            change = t.AuditChange(
                resource_type=kind, resource_id=id, before=_shown(before), after=_shown(after)
            )
            size += len(msgspec.json.encode(change))
            if len(changes) < MAX_CHANGES and size <= MAX_ENTRY_BYTES:
                changes.append(change)
            else:
                omitted += 1

        for op in ops:
            if not isinstance(op, Put | Delete):
                continue
            after = op.body if isinstance(op, Put) else None
            before: bytes | None
            if op.kind in cleared:
                before = cleared[op.kind].pop(op.id, None)  # what is left was deleted
            elif len(changes) >= MAX_CHANGES:
                omitted += 1  # counted without reading what it was
                continue
            elif (op.kind, op.id) in known:
                before = known[op.kind, op.id]
            else:
                before = await self.store.get(op.kind, op.id)
            if before != after:  # a replace import rewrites its unchanged documents
                add(op.kind, op.id, before, after)
        for kind, documents in cleared.items():
            for id, body in sorted(documents.items()):
                add(kind, id, body, None)
        if not changes:
            return None
        ids = {c.resource_id for c in changes}
        principal = writer.principal
        entry = t.AuditEntry(
            seq=0,  # the store numbers entries, and knows the version: both set on reading
            at=self.now(),
            config_version=0,
            key_id=principal.key_id,
            user_id=principal.user_id,
            role=principal.role,
            method=writer.method,
            path=writer.path,
            request_id=writer.request_id,
            resource_type=changes[0].resource_type,
            resource_id=changes[0].resource_id if len(ids) == 1 and not omitted else None,
            changes=self.redact(changes),
            omitted_changes=omitted,
        )
        return AppendAudit(msgspec.json.encode(entry), self.keep)

    def landed(self, audit: AppendAudit, version: int) -> None:
        entry = msgspec.json.decode(audit.body, type=t.AuditEntry)
        what = entry.resource_id or f"{len(entry.changes) + entry.omitted_changes} documents"
        log.info(
            "admin write by %s: %s %s (%s %s) -> config version %d",
            entry.key_id,
            entry.method,
            entry.path,
            entry.resource_type,
            what,
            version,
            extra={
                "keyId": entry.key_id,
                "method": entry.method,
                "path": entry.path,
                "resourceType": entry.resource_type,
                "resourceId": entry.resource_id,
                "configVersion": version,
                "requestId": entry.request_id,
            },
        )


def read(row: tuple[int, int, bytes]) -> t.AuditEntry:
    seq, version, body = row
    entry = msgspec.json.decode(body, type=t.AuditEntry)
    return msgspec.structs.replace(entry, seq=seq, config_version=version)
