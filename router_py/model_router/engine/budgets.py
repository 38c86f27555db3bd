"""Exact budgets across workers and replicas: a request of a budgeted
workspace is admitted only once its worst-case cost is reserved.

The worst case is the prompt's estimated tokens at the dearest candidate's
input price plus its output limit (the request's max_tokens, else the
model's) at that candidate's output price. Reservations are taken from the
store atomically (spent + reserved + this <= the limit, for every period
with a limit), so no two workers or replicas can promise the same money.

To keep the store off the request path, a worker reserves a lease of a few
requests' worth at once and admits requests from it locally; when the lease
runs short it takes another, and when the store has no room left for even
this one request, the answer is 402. When a request ends, its worst case
goes back to the lease and its real cost is settled: the spend flush
(spend.py) moves settled costs from the reserved counters to the spent ones
and hands back what the lease still holds, in one atomic write. A budget is
therefore never overspent by more than what requests cost beyond their own
worst case (a provider reporting more output than max_tokens allows).
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from ..store import Reservation, Store
from .exchanges import max_output_tokens
from .live import LiveConfig
from .spend import TTL_MS, counter_name, period_keys

LEASE_REQUESTS = 4  # a lease covers this many worst cases, when the budget has room
PERIODS = {"d": "daily", "w": "weekly", "m": "monthly"}


def prompt_tokens_at_most(prompt_chars: int) -> int:
    return prompt_chars // 2 + 16  # generous: most tokens hold 3-4 characters


def usd_to_nanos(usd: float) -> int:
    return math.ceil(usd * 1e9)


class BudgetRefused(Exception):
    """The budget has no room for this request's worst case: a 402 with
    what the store holds for the period that ran out (nano-dollars)."""

    def __init__(self, period: str, limit: int, spent: int, reserved: int, worst: int):
        super().__init__(f"the {period} budget cannot cover this request's worst-case cost")
        self.details = {
            "period": period,
            "limit": limit / 1e9,
            "spent": spent / 1e9,
            "reserved": reserved / 1e9,  # held by requests in flight
            "worstCase": worst / 1e9,
        }


@dataclass(frozen=True)
class Hold:
    """One request's reservation (0 when its workspace has no budget)."""

    workspace_id: str
    nanos: int


class BudgetLeases:
    def __init__(self, live: LiveConfig, store: Store):
        self.live = live
        self.store = store
        self._lease: dict[str, int] = defaultdict(int)  # reserved in the store, not yet promised
        self._settled: dict[str, int] = defaultdict(int)  # real costs since the last flush
        # One reservation in flight per workspace: the others wait for its lease.
        self._taking: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def worst_case(self, candidates: list[str], prompt_chars: int, body: dict[str, object]) -> int:
        """The most the request can cost on any of its candidate models (nanos)."""
        prompt_tokens = prompt_tokens_at_most(prompt_chars)
        worst = 0
        for model_id in candidates:
            model = self.live.models[model_id]
            if model.pricing is None:
                continue
            output = max_output_tokens(model, body)
            per_1k = prompt_tokens * model.pricing.input_per1k + output * model.pricing.output_per1k
            worst = max(worst, usd_to_nanos(per_1k / 1000))
        return worst

    def applies(self, workspace_id: str | None) -> bool:
        """Does the workspace have a budget to hold requests against?"""
        config = self.live.workspaces.get(workspace_id) if workspace_id else None
        return config is not None and config.budget_limits is not None

    def limited_periods(self, workspace_id: str) -> dict[str, int]:
        """The workspace's budget limits in nanos, by period letter."""
        config = self.live.workspaces.get(workspace_id)
        limits = config.budget_limits if config else None
        if limits is None:
            return {}
        return {
            period: usd_to_nanos(limit)
            for period, name in PERIODS.items()
            if (limit := getattr(limits, name)) is not None
        }

    async def hold(self, workspace_id: str | None, worst: int) -> Hold:
        """Reserve a request's worst case; BudgetRefused when the budget cannot
        cover it."""
        limits = self.limited_periods(workspace_id) if workspace_id else {}
        if workspace_id is None or not limits or worst <= 0:
            return Hold(workspace_id or "", 0)
        if self._lease[workspace_id] < worst:
            async with self._taking[workspace_id]:
                if self._lease[workspace_id] < worst:
                    await self._take(workspace_id, limits, worst)
        self._lease[workspace_id] -= worst
        return Hold(workspace_id, worst)

    async def _take(self, workspace_id: str, limits: dict[str, int], worst: int) -> None:
        """Add to the lease from the store: a few requests' worth, else just
        what this one lacks; BudgetRefused when the budget has no room for it."""
        keys = period_keys(datetime.now(UTC))
        checks = [
            Reservation(
                counter_name("ws", workspace_id, p, keys[p]),
                counter_name("reserved", workspace_id, p, keys[p]),
                limit,
            )
            for p, limit in limits.items()
        ]
        need = worst - self._lease[workspace_id]
        refused = None
        for amount in (need + worst * (LEASE_REQUESTS - 1), need):
            refused = await self.store.reserve(checks, amount, TTL_MS["m"])
            if refused is None:
                self._lease[workspace_id] += amount
                return
        assert refused is not None
        index, spent, reserved = refused
        period = list(limits)[index]
        raise BudgetRefused(PERIODS[period], limits[period], spent, reserved, worst)

    def settle(self, hold: Hold, cost: int) -> None:
        """The request is over: its worst case back to the lease, its cost settled."""
        if hold.nanos:
            self._lease[hold.workspace_id] += hold.nanos - cost
            self._settled[hold.workspace_id] += cost

    def begin_release(self) -> dict[str, tuple[int, int]]:
        """What to take off each workspace's reserved counters in the next
        flush, as (settled costs, unpromised lease): the flush adds the costs
        to the spent counters in the same write, and hands the lease back."""
        released = {}
        for ws in set(self._settled) | set(self._lease):
            settled, lease = self._settled.pop(ws, 0), max(0, self._lease[ws])
            self._lease[ws] -= lease
            if settled or lease:
                released[ws] = (settled, lease)
        return released
