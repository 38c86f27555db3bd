"""SQLiteStore: the embedded default, one WAL file under the data directory.

sqlite3 is synchronous, so every call runs on one private thread per process:
the event loop never waits on a disk or a lock held by another worker. A lock
held past the store timeout, or a file that cannot be opened or written, is
StoreUnavailable. SQLite has no pub/sub: it serves one instance, whose workers
learn of writes through shared memory (engine/signal.py) and polling.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .base import (
    BATCH_KEEP_MS,
    WRITE_KEEP_MS,
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
    RollupCell,
    SetEpoch,
    StoreUnavailable,
    lifetimes,
    new_epoch,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('config_version', 0);
CREATE TABLE IF NOT EXISTS config_epoch (
    only  INTEGER PRIMARY KEY CHECK (only = 1),
    epoch TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS recent (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name       TEXT PRIMARY KEY,
    value      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
-- Each add prunes the expired: without this, a scan of every counter.
CREATE INDEX IF NOT EXISTS counters_by_expiry ON counters (expires_ms);
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL,
    body    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS merged_batches (
    id         TEXT PRIMARY KEY,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS merged_batches_by_expiry ON merged_batches (expires_ms);
CREATE TABLE IF NOT EXISTS applied_writes (
    writer     TEXT PRIMARY KEY,
    id         TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollups (
    resolution TEXT NOT NULL,
    start_ms   INTEGER NOT NULL,
    key        TEXT NOT NULL,
    metric     TEXT NOT NULL,
    value      INTEGER NOT NULL,
    PRIMARY KEY (resolution, start_ms, key, metric)
) WITHOUT ROWID;
"""


# The OperationalErrors that mean "cannot reach the data", not "bad SQL".
_OUTAGE = re.compile(r"locked|busy|unable to open|disk I/O|readonly|full", re.IGNORECASE)


class SQLiteStore:
    def __init__(self, path: Path, timeout_s: float = 1.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # 256 KiB of pages per worker, not SQLite's 2,000 KiB: with several
        # workers writing every 100 ms, another connection's commit empties
        # this cache anyway, and the OS caches the file. -1.0 MiB of a
        # worker's RSS after c=64 (docs/performance.md, "Memory").
        self._db.execute("PRAGMA cache_size=-256")
        self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        self._db.executescript(SCHEMA)  # idempotent; each statement commits itself

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.OperationalError as exc:
            if _OUTAGE.search(str(exc)):
                raise StoreUnavailable(f"sqlite: {exc}") from exc
            raise

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        # IMMEDIATE takes the write lock up front, so checks and writes see one state.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    async def get(self, kind: str, id: str) -> bytes | None:
        def read() -> bytes | None:
            row = self._db.execute(
                "SELECT body FROM documents WHERE kind = ? AND id = ?", (kind, id)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(read)

    async def get_all(self, kind: str) -> dict[str, bytes]:
        def read() -> dict[str, bytes]:
            rows = self._db.execute("SELECT id, body FROM documents WHERE kind = ?", (kind,))
            return {id: bytes(body) for id, body in rows}

        return await self._run(read)

    async def apply(self, ops: Sequence[Op]) -> int:
        return await self._run(lambda: self._transaction(lambda db: _apply(db, ops)))

    async def version(self) -> int:
        return await self._run(_read_version_of(self._db))

    async def audit(self, before: int | None, count: int) -> list[AuditRow]:
        def read() -> list[AuditRow]:
            rows = self._db.execute(
                "SELECT seq, version, body FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (before if before is not None else 1 << 62, count),
            )
            return [(seq, version, bytes(body)) for seq, version, body in rows]

        return await self._run(read)

    async def stamp(self) -> ConfigStamp:
        def read() -> ConfigStamp:
            row = self._db.execute("SELECT epoch FROM config_epoch").fetchone()
            return ConfigStamp(row[0] if row else None, _read_version_of(self._db)())

        return await self._run(read)

    async def start_epoch(self) -> str:
        def start(db: sqlite3.Connection) -> str:
            db.execute(
                "INSERT OR IGNORE INTO config_epoch (only, epoch) VALUES (1, ?)",
                (new_epoch("created"),),
            )
            (epoch,) = db.execute("SELECT epoch FROM config_epoch").fetchone()
            return str(epoch)

        return await self._run(lambda: self._transaction(start))

    async def watch_config(self, changed: Callable[[], None]) -> None:
        return

    async def add_counters(
        self,
        deltas: Mapping[str, int],
        ttl_ms: int | Mapping[str, int],
        write: CounterWrite | None = None,
    ) -> dict[str, int]:
        def add(db: sqlite3.Connection) -> dict[str, int]:
            now = int(time.time() * 1000)
            db.execute("DELETE FROM counters WHERE expires_ms <= ?", (now,))
            if write is not None and _applied_last(db, write, now):
                return _read_counters(db, deltas, now)
            totals = {}
            for (name, delta), ttl in zip(deltas.items(), lifetimes(deltas, ttl_ms), strict=True):
                (totals[name],) = db.execute(
                    "INSERT INTO counters (name, value, expires_ms) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value "
                    "RETURNING value",
                    (name, delta, now + ttl),
                ).fetchone()
            if write is not None:
                db.execute(
                    "INSERT OR REPLACE INTO applied_writes (writer, id, expires_ms) "
                    "VALUES (?, ?, ?)",
                    (write.writer, write.id, now + WRITE_KEEP_MS),
                )
            return totals

        return await self._run(lambda: self._transaction(add))

    async def claim_counters(self, values: Mapping[str, int], ttl_ms: int) -> dict[str, int]:
        def claim(db: sqlite3.Connection) -> dict[str, int]:
            now = int(time.time() * 1000)
            db.execute("DELETE FROM counters WHERE expires_ms <= ?", (now,))
            held = {}
            for name, value in values.items():
                db.execute(
                    "INSERT OR IGNORE INTO counters (name, value, expires_ms) VALUES (?, ?, ?)",
                    (name, value, now + ttl_ms),
                )
                (held[name],) = db.execute(
                    "SELECT value FROM counters WHERE name = ?", (name,)
                ).fetchone()
            return held

        return await self._run(lambda: self._transaction(claim))

    async def read_counters(self, names: Sequence[str]) -> dict[str, int]:
        return await self._run(lambda: _read_counters(self._db, names, int(time.time() * 1000)))

    async def push_recent(self, items: Sequence[bytes], keep: int) -> None:
        def push(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO recent (body) VALUES (?)", [(item,) for item in items])
            db.execute("DELETE FROM recent WHERE seq <= (SELECT MAX(seq) FROM recent) - ?", (keep,))

        await self._run(lambda: self._transaction(push))

    async def recent(self, limit: int) -> list[bytes]:
        def read() -> list[bytes]:
            rows = self._db.execute("SELECT body FROM recent ORDER BY seq DESC LIMIT ?", (limit,))
            return [bytes(body) for (body,) in rows]

        return await self._run(read)

    async def reserve(
        self, checks: Sequence[Reservation], amount: int, ttl_ms: int
    ) -> tuple[int, int, int] | None:
        def reserve(db: sqlite3.Connection) -> tuple[int, int, int] | None:
            now = int(time.time() * 1000)

            def value(name: str) -> int:
                row = db.execute(
                    "SELECT value FROM counters WHERE name = ? AND expires_ms > ?", (name, now)
                ).fetchone()
                return int(row[0]) if row else 0

            for i, c in enumerate(checks):
                spent, reserved = value(c.spent), value(c.reserved)
                if spent + reserved + amount > c.limit:
                    return i, spent, reserved
            db.executemany(
                "INSERT INTO counters (name, value, expires_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                [(c.reserved, amount, now + ttl_ms) for c in checks],
            )
            return None

        return await self._run(lambda: self._transaction(reserve))

    async def put_state(self, kind: str, items: Mapping[str, bytes]) -> None:
        def put(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO state (kind, id, body) VALUES (?, ?, ?)",
                [(kind, id, body) for id, body in items.items()],
            )

        await self._run(lambda: self._transaction(put))

    async def get_state(self, kind: str) -> dict[str, bytes]:
        def read() -> dict[str, bytes]:
            rows = self._db.execute("SELECT id, body FROM state WHERE kind = ?", (kind,))
            return {id: bytes(body) for id, body in rows}

        return await self._run(read)

    async def delete_state(self, kind: str, ids: Collection[str]) -> None:
        def delete(db: sqlite3.Connection) -> None:
            db.executemany(
                "DELETE FROM state WHERE kind = ? AND id = ?", [(kind, id) for id in ids]
            )

        await self._run(lambda: self._transaction(delete))

    async def hold_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        def hold(db: sqlite3.Connection) -> bool:
            now = int(time.time() * 1000)
            row = db.execute(
                "SELECT holder, expires_ms FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            db.execute(
                "INSERT OR REPLACE INTO leases (name, holder, expires_ms) VALUES (?, ?, ?)",
                (name, holder, now + ttl_ms),
            )
            return True

        return await self._run(lambda: self._transaction(hold))

    async def release_lease(self, name: str, holder: str) -> None:
        def release(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

        await self._run(lambda: self._transaction(release))

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)

    async def merge_rollups(
        self, cells: Mapping[RollupCell, int], keep_ms: Mapping[str, int], batch: str = ""
    ) -> None:
        def merge(db: sqlite3.Connection) -> None:
            now = int(time.time() * 1000)
            if batch and not _first_time(db, batch, now):
                return  # merged before
            db.executemany(
                "INSERT INTO rollups (resolution, start_ms, key, metric, value) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (resolution, start_ms, key, metric) "
                "DO UPDATE SET value = value + excluded.value",
                [(*cell, value) for cell, value in cells.items()],
            )
            db.executemany(
                "DELETE FROM rollups WHERE resolution = ? AND start_ms < ?",
                [(resolution, now - keep) for resolution, keep in keep_ms.items()],
            )

        await self._run(lambda: self._transaction(merge))

    async def read_rollups(
        self, resolution: str, from_ms: int, to_ms: int
    ) -> list[tuple[int, str, str, int]]:
        def read() -> list[tuple[int, str, str, int]]:
            return self._db.execute(
                "SELECT start_ms, key, metric, value FROM rollups "
                "WHERE resolution = ? AND start_ms >= ? AND start_ms < ?",
                (resolution, from_ms, to_ms),
            ).fetchall()

        return await self._run(read)


def _read_version_of(db: sqlite3.Connection) -> Callable[[], int]:
    def read() -> int:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'config_version'").fetchone()
        return int(value)

    return read


def _apply(db: sqlite3.Connection, ops: Sequence[Op]) -> int:
    def current(kind: str, id: str) -> bytes | None:
        row = db.execute(
            "SELECT body FROM documents WHERE kind = ? AND id = ?", (kind, id)
        ).fetchone()
        return None if row is None else bytes(row[0])

    for op in ops:
        if isinstance(op, ExpectAbsent) and current(op.kind, op.id) is not None:
            raise PreconditionFailed(op)
        if isinstance(op, ExpectPresent) and current(op.kind, op.id) is None:
            raise PreconditionFailed(op)
        if isinstance(op, ExpectBody) and current(op.kind, op.id) != op.body:
            raise PreconditionFailed(op)
    for op in ops:
        if isinstance(op, Put):
            db.execute(
                "INSERT INTO documents (kind, id, body) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                (op.kind, op.id, op.body),
            )
        elif isinstance(op, Delete):
            db.execute("DELETE FROM documents WHERE kind = ? AND id = ?", (op.kind, op.id))
        elif isinstance(op, Clear):
            db.execute("DELETE FROM documents WHERE kind = ?", (op.kind,))
        elif isinstance(op, SetEpoch):
            db.execute(
                "INSERT OR REPLACE INTO config_epoch (only, epoch) VALUES (1, ?)", (op.epoch,)
            )
    db.execute("UPDATE meta SET value = value + 1 WHERE key = 'config_version'")
    version = _read_version_of(db)()
    for op in ops:
        if isinstance(op, AppendAudit):
            db.execute("INSERT INTO audit (version, body) VALUES (?, ?)", (version, op.body))
            db.execute(
                "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?", (op.keep,)
            )
    return version


def _read_counters(db: sqlite3.Connection, names: Iterable[str], now: int) -> dict[str, int]:
    totals = dict.fromkeys(names, 0)
    # One parameter however many names (SQLite caps the parameters).
    rows = db.execute(
        "SELECT name, value FROM counters WHERE expires_ms > ? "
        "AND name IN (SELECT value FROM json_each(?))",
        (now, json.dumps(list(totals))),
    )
    totals.update(rows)
    return totals


def _applied_last(db: sqlite3.Connection, write: CounterWrite, now: int) -> bool:
    """Whether this is the write its writer applied last."""
    db.execute("DELETE FROM applied_writes WHERE expires_ms <= ?", (now,))
    row = db.execute("SELECT id FROM applied_writes WHERE writer = ?", (write.writer,)).fetchone()
    return row is not None and row[0] == write.id


def _first_time(db: sqlite3.Connection, batch: str, now: int) -> bool:
    """Whether this is the first time the batch is applied (it is noted)."""
    db.execute("DELETE FROM merged_batches WHERE expires_ms <= ?", (now,))
    noted = db.execute(
        "INSERT OR IGNORE INTO merged_batches (id, expires_ms) VALUES (?, ?)",
        (batch, now + BATCH_KEEP_MS),
    )
    return noted.rowcount == 1
