"""The rollup flush: on a beat, drain the engine's per-minute outcome buckets
and add them to the store's minute and hour buckets, off the request path.

The store adds (never overwrites), so the drains of every worker and replica
sum to the fleet's figures. A merge that fails is sent again on the next beat
under its batch id, so it counts once (store/merges.py), up to
MAX_PENDING_CELLS; past that the oldest is dropped and said in the log
(bounded memory while the store is away).
"""

from __future__ import annotations

import logging

from .._core import Engine
from ..store import Store
from ..store.base import ROLLUP_STEP_MS
from ..store.merges import MergeQueue

log = logging.getLogger("model_router.rollups")

# The bucket's counters, in the order Engine.take_rollups gives them.
COUNTERS = (
    "attempts",
    "requests",
    "failovers_in",
    "failovers_out",
    "tokens_in",
    "tokens_out",
    "cost_nanos",
)
# A sketch bin's metric is its prefix and bucket index: "l-12", "t340".
LATENCY_BIN, TTFT_BIN = "l", "t"
# The dimensions of a key, joined by KEY_SEPARATOR (no id may hold it). New
# ones go last: a key stored before them reads them as "" (figures.tally).
# rollout and variant: the canary or experiment id and the arm's label.
DIMENSIONS = (
    "model",
    "endpoint",
    "workspace",
    "agent_type",
    "rule",
    "outcome",
    "rollout",
    "variant",
)
KEY_SEPARATOR = "\x1f"
MAX_PENDING_CELLS = 500_000

HOUR_MS = ROLLUP_STEP_MS["h"]


def retention_ms(minutes_keep_hours: int, hours_keep_days: int) -> dict[str, int]:
    return {"m": minutes_keep_hours * HOUR_MS, "h": hours_keep_days * 24 * HOUR_MS}


class RollupSync:
    def __init__(self, engine: Engine, store: Store, keep_ms: dict[str, int]):
        self.engine = engine
        self.queue = MergeQueue(store, keep_ms, MAX_PENDING_CELLS, "rollups")

    def _fold(self) -> None:
        buckets, dropped = self.engine.take_rollups()
        if dropped:
            log.warning("rollups: %d attempts over the key bound were not counted", dropped)
        pending = self.queue.pending
        for minute_ms, dims, counters, latency, ttft in buckets:
            key = KEY_SEPARATOR.join(dims)
            for cell in (("m", minute_ms), ("h", minute_ms - minute_ms % HOUR_MS)):
                for name, value in zip(COUNTERS, counters, strict=True):
                    if value:
                        pending[(*cell, key, name)] += value
                for prefix, bins in ((LATENCY_BIN, latency), (TTFT_BIN, ttft)):
                    for index, count in bins:
                        pending[(*cell, key, f"{prefix}{index}")] += count

    async def flush(self) -> None:
        self._fold()
        await self.queue.flush()
