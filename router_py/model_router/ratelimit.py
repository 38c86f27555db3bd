"""Per-key rate limit over fixed windows, shared by every worker and replica
without a store round trip per request.

Each worker counts locally and, once a second, adds its counts to the store's
counter for the window and reads back the total of all workers. A request is
admitted while the last known total plus this worker's unsynced count stays
within the limit, so the limit can be overshot by at most what the other
workers admit within one sync interval. While the store is away each worker
goes on counting on its own, and adds its counts when the store answers.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

from .store import Store

log = logging.getLogger("model_router.ratelimit")


class RateLimiter:
    def __init__(self, store: Store, limit: int, window_ms: int):
        self.store = store
        self.limit = limit
        self.window_ms = window_ms
        self._pending: dict[tuple[str, int], int] = defaultdict(int)
        self._known: dict[tuple[str, int], int] = {}

    def hit(self, key_id: str, now_ms: int | None = None) -> float | None:
        """Count one request; None if admitted, else seconds until the window ends."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        window = now_ms // self.window_ms
        slot = (key_id, window)
        if self._known.get(slot, 0) + self._pending[slot] >= self.limit:
            return max(1.0, math.ceil(((window + 1) * self.window_ms - now_ms) / 1000))
        self._pending[slot] += 1
        return None

    async def sync(self) -> None:
        pending, self._pending = self._pending, defaultdict(int)
        current = int(time.time() * 1000) // self.window_ms
        self._known = {slot: n for slot, n in self._known.items() if slot[1] >= current}
        if not pending:
            return
        names = {f"rl:{key}:{window}": (key, window) for key, window in pending}
        try:
            totals = await self.store.add_counters(
                {name: pending[slot] for name, slot in names.items()}, ttl_ms=2 * self.window_ms
            )
        except Exception:
            # Keep the counts for the next attempt rather than forget traffic;
            # those of windows that have ended no longer matter (this bounds
            # what an outage piles up).
            for slot, n in pending.items():
                if slot[1] >= current:
                    self._pending[slot] += n
            raise
        for name, total in totals.items():
            self._known[names[name]] = total
