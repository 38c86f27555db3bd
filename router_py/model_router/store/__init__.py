"""State: the Store protocol and its two implementations."""

from __future__ import annotations

from ..settings import Settings
from .base import (
    AppendAudit,
    AuditRow,
    Clear,
    ConfigStamp,
    CounterWrite,
    Delete,
    ExpectAbsent,
    ExpectBody,
    ExpectPresent,
    Op,
    PreconditionFailed,
    Put,
    Reservation,
    SetEpoch,
    Store,
    StoreUnavailable,
    new_epoch,
)
from .lease import Lease


def open_store(settings: Settings) -> Store:
    """Redis when REDIS_URL is set, else the embedded SQLite file."""
    if settings.redis_url:
        from .redis import RedisStore

        return RedisStore(
            settings.redis_url, settings.redis_namespace, settings.store_timeout_ms / 1000
        )
    from .sqlite import SQLiteStore

    return SQLiteStore(settings.sqlite_path, settings.store_timeout_ms / 1000)


__all__ = [
    "AppendAudit",
    "Lease",
    "AuditRow",
    "Clear",
    "ConfigStamp",
    "CounterWrite",
    "Delete",
    "ExpectAbsent",
    "ExpectBody",
    "ExpectPresent",
    "Op",
    "PreconditionFailed",
    "Put",
    "Reservation",
    "SetEpoch",
    "Store",
    "StoreUnavailable",
    "new_epoch",
    "open_store",
]
