"""State: the Store protocol and its two implementations."""

from __future__ import annotations

from ..settings import Settings
from .base import (
    Clear,
    Delete,
    ExpectAbsent,
    ExpectBody,
    ExpectPresent,
    Op,
    PreconditionFailed,
    Put,
    Reservation,
    Store,
)


def open_store(settings: Settings) -> Store:
    """Redis when REDIS_URL is set, else the embedded SQLite file."""
    if settings.redis_url:
        from .redis import RedisStore

        return RedisStore(settings.redis_url, settings.redis_namespace)
    from .sqlite import SQLiteStore

    return SQLiteStore(settings.sqlite_path)


__all__ = [
    "Clear",
    "Delete",
    "ExpectAbsent",
    "ExpectBody",
    "ExpectPresent",
    "Op",
    "PreconditionFailed",
    "Put",
    "Reservation",
    "Store",
    "open_store",
]
