"""Spend counters: what each workspace and model spent, shared by every worker.

The engine accounts each call's cost locally (no network on the request
path). On a short beat this loop adds what the worker spent to the store's
counters, one per workspace or model and per UTC day, ISO week and month, and
reads back the totals of all workers, which the engine's budget check then
uses. Budgets are held exactly by reservations (budgets.py): the same write
moves settled costs out of the reserved counters and hands back unused leases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .._core import Engine
from ..store import Store

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

    async def flush(self, now: datetime | None = None) -> None:
        keys = period_keys(now or datetime.now(UTC))
        workspaces, models = self.engine.begin_flush()
        released = self.leases.begin_release()
        watched = set(workspaces) | set(self.budgeted())
        try:
            # One write for every period: each counter lives as long as its period needs.
            deltas: dict[str, int] = {}
            ttls: dict[str, int] = {}

            def add(name: str, period: str, delta: int) -> None:
                deltas[name], ttls[name] = delta, TTL_MS[period]

            for ws in watched:
                for period, key in keys.items():
                    add(counter_name("ws", ws, period, key), period, workspaces.get(ws, 0))
            for model, nanos in models.items():
                for period, key in keys.items():
                    add(counter_name("model", model, period, key), period, nanos)
            for ws, (settled, lease) in released.items():
                for period in self.leases.limited_periods(ws):
                    name = counter_name("reserved", ws, period, keys[period])
                    add(name, period, -(settled + lease))
            totals = await self.store.add_counters(deltas, ttls) if deltas else {}
        except BaseException:
            self.engine.abort_flush()
            self.leases.abort_release(released)
            raise
        self.engine.end_flush(
            {
                ws: (
                    totals[counter_name("ws", ws, "d", keys["d"])],
                    totals[counter_name("ws", ws, "w", keys["w"])],
                    totals[counter_name("ws", ws, "m", keys["m"])],
                )
                for ws in watched
            }
        )
