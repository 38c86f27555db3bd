"""Per-key rate limit over fixed windows, exact across workers and replicas.

Admission spends from a local lease of the window's quota. A lease is taken
from the store atomically (what all workers took + this lease <= the limit)
and topped up in the background once half of it is spent, so the request
path waits on the store only when a burst outruns the lease. No worker can
admit what another already holds: over any number of workers and replicas
the limit is never exceeded. While the store is away each worker counts on
its own against the limit.

A lease's size follows the key's admissions in this worker: AHEAD_MS of the
rate measured since the last top-up (over at least RATE_MS), and at least
LEASE. So a busy key goes to the store about 1000 / (AHEAD_MS / 2) = 8 times
a second per worker whatever its rate, a key this worker admits fewer than
LEASE * 1000 / AHEAD_MS = 32 times a second takes LEASE at a time, and a
burst of n requests leases at most max(LEASE, AHEAD_MS / RATE_MS * n).

What a worker holds is also capped at 1/SHARE of what the window has left as
far as it knows (at least 1 while there is room), so never more than
limit / SHARE: a key near its limit is not starved by leases held elsewhere.
The admissions leased and never used by a window's end are those in the
hands of workers that stopped asking: at most limit / SHARE for each (with N
workers over all replicas, N / SHARE of the limit at the very worst; far
less in practice, as a lease is AHEAD_MS of the worker's own traffic), and
none of the workers that kept asking. The leases of workers still asking
shrink as the window fills.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass

from ._core import (
    AHEAD_MS,
    LEASE,
    RATE_MS,
    RETRY_MS,
    SHARE,
    SPENT_ALONE,
    SPENT_LEASED,
    SPENT_TAKE,
    Clients,
    Leases,
)
from .store import Reservation, Store

log = logging.getLogger("model_router.ratelimit")

# The leases' constants are the core's; named here with the why (above).
__all__ = [
    "AHEAD_MS",
    "LEASE",
    "RATE_MS",
    "RETRY_MS",
    "SHARE",
    "FailedAuthentications",
    "RateLimiter",
    "Verdict",
    "retry_after",
]

Slot = tuple[str, int]  # key id, window number
KEPT_LOCKS = 1024  # past this many, the locks of windows that ended go


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True)
class Verdict:
    """What the caller is told: admitted or not, and the window's figures."""

    admitted: bool
    limit: int
    remaining: int
    reset_s: float  # until the window ends

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("x-ratelimit-limit", str(self.limit)),
            ("x-ratelimit-remaining", str(self.remaining)),
            ("x-ratelimit-reset", retry_after(self.reset_s)),
        ]


def _counter(slot: Slot) -> str:
    """The store's counter of what all workers took in a key's window."""
    return f"rl:{slot[0]}:{slot[1]}"


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class RateLimiter:
    """Admissions are spent from the core's leases (`_core.Leases`, one
    table per worker); taking a lease from the store is this class's."""

    def __init__(self, store: Store, limit: int, window_ms: int):
        self.store = store
        self.limit = limit
        self.window_ms = window_ms
        self.leases = Leases()
        self._taking: dict[Slot, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._refills: set[asyncio.Task[None]] = set()

    async def admit(
        self, key_id: str, now_ms: int | None = None, limit: int | None = None
    ) -> Verdict:
        """One admission for the key, against `limit` (else the limiter's own)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        limit = self.limit if limit is None else limit
        window = now_ms // self.window_ms
        reset_s = ((window + 1) * self.window_ms - now_ms) / 1000
        spent, remaining, top_up = self.leases.spend(key_id, window, limit, True, _monotonic_ms())
        if spent == SPENT_TAKE:
            self._forget_locks_before(window)
            await self._take((key_id, window), limit, now_ms)
            spent, remaining, top_up = self.leases.spend(
                key_id, window, limit, False, _monotonic_ms()
            )
        if top_up:
            self.refill((key_id, window), limit, now_ms)
        admitted = spent in (SPENT_LEASED, SPENT_ALONE)
        return Verdict(admitted, limit, remaining, reset_s)

    def refill(self, slot: Slot, limit: int, now_ms: int) -> None:
        """Top the slot's lease up in the background (half of it is spent)."""
        task = asyncio.get_running_loop().create_task(self._take(slot, limit, now_ms))
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def _take(self, slot: Slot, limit: int, now_ms: int) -> None:
        """Top the slot's lease up to its size, within 1/SHARE of what the
        window has left. A store that does not answer leaves the lease as it
        is and starts counting this worker's admissions on its own."""
        key_id, window = slot
        async with self._taking[slot]:
            amount = self.leases.begin_take(key_id, window, limit, now_ms)
            if amount is None:
                return  # another waiter refilled it
            # One counter of what all workers took; nothing is "spent" apart
            # from it (that counter stays 0).
            check = Reservation(f"rl-spent:{key_id}", _counter(slot), limit)
            try:
                while amount > 0:
                    refused = await self.store.reserve([check], amount, 2 * self.window_ms)
                    if refused is None:
                        self.leases.granted(key_id, window, amount)
                        break
                    _, _, taken = refused  # what all workers took, exactly
                    amount = self.leases.refused(key_id, window, limit, amount, taken)
            except Exception as exc:  # the store is away: no waiting on it for a while
                log.warning("rate limit counted locally: %s", exc)
                self.leases.store_away(key_id, window, _monotonic_ms())
                return
            self.leases.take_ended(key_id, window)

    async def reconcile(self) -> None:
        """Hand the store what this worker admitted on its own while it was
        away (a beat): from then on it counts against the window for all."""
        for key_id, window, alone in self.leases.offline():
            await self.store.add_counters({_counter((key_id, window)): alone}, 2 * self.window_ms)
            self.leases.handed_over(key_id, window, alone)

    def _forget_locks_before(self, window: int) -> None:
        """The locks of windows that ended (one per key and window would
        grow for ever), but none a take still holds."""
        if len(self._taking) > KEPT_LOCKS:
            for slot in [s for s in self._taking if s[1] < window]:
                if not self._taking[slot].locked():
                    del self._taking[slot]


class FailedAuthentications:
    """At most `limit` failed authentications (401) per client address per
    minute, over every worker and replica: each failure is counted in the
    store, and the one that takes an address past the limit is answered 429
    instead. A worker that saw an address over its limit answers every
    request from it 429 until the minute ends, without checking the key, so
    guessing stops paying; other workers learn it from the address's next
    failure there. While the store is away each worker counts on its own.
    The worker's blocks are the core's (`clients`), for every path a request
    takes through the worker."""

    WINDOW_MS = 60_000

    def __init__(self, store: Store, limit: int, clients: Clients):
        self.store = store
        self.limit = limit
        self.clients = clients
        self._alone: dict[Slot, int] = defaultdict(int)  # counted while the store was away
        self._window = 0  # the minute the tables hold

    def blocked_for(self, address: str, now_ms: int | None = None) -> float | None:
        """Seconds until the address may try again, if it is blocked here."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        wait_ms = self.clients.blocked_for(address, now_ms)
        return None if wait_ms is None else wait_ms / 1000

    async def failed(self, address: str, now_ms: int | None = None) -> float | None:
        """Count one failure; the seconds to wait when it is over the limit."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        window = now_ms // self.WINDOW_MS
        if window != self._window:  # a new minute: what the last ones held is over
            self._window = window
            self.clients.unblock_ended(now_ms)
            self._alone = defaultdict(int, {s: n for s, n in self._alone.items() if s[1] >= window})
        name = f"authfail:{address}:{window}"
        try:
            total = (await self.store.add_counters({name: 1}, 2 * self.WINDOW_MS))[name]
        except Exception as exc:  # the store is away: this worker's own count
            log.warning("failed authentications counted locally: %s", exc)
            self._alone[(address, window)] += 1
            total = self._alone[(address, window)]
        if total <= self.limit:
            return None
        self.clients.block(address, (window + 1) * self.WINDOW_MS, now_ms)
        return self.blocked_for(address, now_ms)
