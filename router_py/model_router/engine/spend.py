"""Spend counters: what each workspace and model spent, shared by every worker.

The engine accounts each call's cost locally (no network on the request
path). On a short beat this loop adds what the worker spent to the store's
counters, one per workspace or model and per UTC day, ISO week and month, and
reads back the totals of all workers, which the engine's budget check then
uses. Budgets are held exactly by reservations (budgets.py): the same write
moves settled costs out of the reserved counters and hands back unused leases.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .._core import Engine
from ..store import CounterWrite, Store

if TYPE_CHECKING:
    from .budgets import BudgetLeases

log = logging.getLogger("model_router.spend")

DAY_MS = 86_400_000
# How long each period's counter outlives its period, for late readers.
TTL_MS = {"d": 3 * DAY_MS, "w": 15 * DAY_MS, "m": 62 * DAY_MS}
# Each period's name in answers and metrics, in the order of budget limits.
PERIOD_NAMES = {"d": "daily", "w": "weekly", "m": "monthly"}


def period_keys(now: datetime) -> dict[str, str]:
    """The current day, ISO week and month, in UTC."""
    year, week, _ = now.isocalendar()
    return {"d": now.strftime("%Y-%m-%d"), "w": f"{year}-W{week:02d}", "m": now.strftime("%Y-%m")}


def counter_name(scope: str, id: str, period: str, key: str) -> str:
    return f"spend:{scope}:{id}:{period}:{key}"


async def workspaces_spent(
    store: Store, workspace_ids: Iterable[str], now: datetime
) -> dict[str, dict[str, int]]:
    """Nano-dollars each workspace spent in the current day, week and month
    ("d", "w", "m"), fleet-wide, in one read that writes nothing."""
    keys = period_keys(now)
    names = {(w, p): counter_name("ws", w, p, keys[p]) for w in workspace_ids for p in keys}
    spent = await store.read_counters(list(names.values()))
    totals: dict[str, dict[str, int]] = {}
    for (workspace, period), name in names.items():
        totals.setdefault(workspace, {})[period] = spent[name]
    return totals


@dataclass
class _SpendWrite:
    id: CounterWrite
    deltas: dict[str, int]
    ttls: dict[str, int]
    totals_of: dict[str, tuple[str, str, str]]  # each watched workspace's day, week, month


class SpendSync:
    def __init__(
        self,
        engine: Engine,
        store: Store,
        budgeted: Callable[[], Iterable[str]],
        leases: BudgetLeases,
    ):
        self.engine = engine
        self.store = store
        self.budgeted = budgeted  # the workspaces whose totals the budget check needs
        self.leases = leases
        # A write whose answer was lost (a timeout: the store may have applied
        # it) is sent again, as it was, under its id, which the store applies
        # once; what was spent meanwhile waits for the next write. Giving the
        # amounts back to the ledger instead would count them twice.
        self._writer = secrets.token_hex(8)
        self._in_doubt: _SpendWrite | None = None
        # One flush at a time: a stopping worker's last flush waits for a beat's.
        self._flushing = asyncio.Lock()

    async def flush(self, now: datetime | None = None) -> None:
        """Send the write in doubt, if any, then what was spent since; raise
        (keeping the write in doubt) if the store fails."""
        async with self._flushing:
            if self._in_doubt is not None:
                await self._send(self._in_doubt)
            self._in_doubt = self._next_write(now or datetime.now(UTC))
            await self._send(self._in_doubt)

    def _next_write(self, now: datetime) -> _SpendWrite:
        keys = period_keys(now)
        budgeted = set(self.budgeted())
        workspaces, models = self.engine.begin_flush()
        released = self.leases.begin_release()
        watched = set(workspaces) | budgeted
        # One write for every period: each counter lives as long as its period needs.
        write = _SpendWrite(CounterWrite(self._writer, secrets.token_hex(8)), {}, {}, {})

        def add(name: str, period: str, delta: int) -> None:
            write.deltas[name], write.ttls[name] = delta, TTL_MS[period]

        for ws in watched:
            day, week, month = (counter_name("ws", ws, p, keys[p]) for p in ("d", "w", "m"))
            write.totals_of[ws] = (day, week, month)
            for period, key in keys.items():
                add(counter_name("ws", ws, period, key), period, workspaces.get(ws, 0))
        for model, nanos in models.items():
            for period, key in keys.items():
                add(counter_name("model", model, period, key), period, nanos)
        for ws, (settled, lease) in released.items():
            for period in self.leases.limited_periods(ws):
                name = counter_name("reserved", ws, period, keys[period])
                add(name, period, -(settled + lease))
        return write

    async def _send(self, write: _SpendWrite) -> None:
        totals = (
            await self.store.add_counters(write.deltas, write.ttls, write.id)
            if write.deltas
            else {}
        )
        self._in_doubt = None
        self.engine.end_flush(
            {ws: (totals[d], totals[w], totals[m]) for ws, (d, w, m) in write.totals_of.items()}
        )
