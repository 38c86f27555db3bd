"""Rollup cells on their way to the store, merged exactly once.

Cells wait in `pending`; a flush takes them as one batch under a new id and
sends it until the store has it. A merge whose answer is lost (a timeout: the
store may still apply it) is sent again under the same id, which the store
applies once (Store.merge_rollups), so a retry never counts anything twice;
cells recorded meanwhile wait for the next batch. While the store is away,
past `limit` cells the oldest buckets of what waits are dropped and said in
the log (bounded memory).
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Mapping

from .base import RollupCell, Store

log = logging.getLogger("model_router.store")


class MergeQueue:
    def __init__(self, store: Store, keep_ms: Mapping[str, int], limit: int, what: str):
        self.store = store
        self.keep_ms = keep_ms
        self.limit = limit
        self.what = what  # for the log
        self.pending: Counter[RollupCell] = Counter()
        self.batch: tuple[str, Counter[RollupCell]] | None = None

    def add(self, cells: Mapping[RollupCell, int]) -> None:
        self.pending.update(cells)

    async def flush(self) -> None:
        """Send the batch in flight, if any, then what waits; raise (keeping
        both) if the store fails."""
        while True:
            if self.batch is None:
                if not self.pending:
                    return
                self.batch, self.pending = (secrets.token_hex(12), self.pending), Counter()
            batch_id, cells = self.batch
            try:
                await self.store.merge_rollups(cells, self.keep_ms, batch_id)
            except BaseException:
                self._bound()
                raise
            self.batch = None

    def _bound(self) -> None:
        waiting = len(self.pending) + (len(self.batch[1]) if self.batch else 0)
        over = waiting - self.limit
        if over <= 0:
            return
        oldest = sorted(self.pending, key=lambda cell: cell[1])[:over]
        for cell in oldest:
            del self.pending[cell]
        dropped = len(oldest)
        if self.batch is not None and len(self.batch[1]) > self.limit:
            dropped += len(self.batch[1])
            self.batch = None
        log.error("%s: store unreachable, %d oldest cells dropped", self.what, dropped)
