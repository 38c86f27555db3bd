"""Per-key rate limit over fixed windows, exact across workers and replicas.

Admission spends from a local lease of the window's quota. A lease is taken
from the store atomically (what all workers took + this lease <= the limit),
a few requests' worth at a time, and refilled in the background once half of
it is spent, so the request path waits on the store only when a burst
outruns the lease. No worker can admit what another already holds: over any
number of workers and replicas the limit is never exceeded. While the store
is away each worker counts on its own against the limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass

from .store import Reservation, Store

log = logging.getLogger("model_router.ratelimit")

LEASE = 8  # admissions taken from the store at once
RETRY_S = 1.0  # after the store failed to answer, how long to count alone before asking again

Slot = tuple[str, int]  # key id, window number


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


class RateLimiter:
    def __init__(self, store: Store, limit: int, window_ms: int):
        self.store = store
        self.limit = limit
        self.window_ms = window_ms
        self._lease: dict[Slot, int] = defaultdict(int)  # admissions in hand
        self._taken: dict[Slot, int] = {}  # what all workers held after our last take
        self._alone: set[Slot] = set()  # the store was away at the last take
        self._offline: dict[Slot, int] = defaultdict(int)  # admitted meanwhile
        self._taking: dict[Slot, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._ask_again = 0.0  # time.monotonic() before which the store is not asked
        self._refills: set[asyncio.Task[None]] = set()

    async def admit(
        self, key_id: str, now_ms: int | None = None, limit: int | None = None
    ) -> Verdict:
        """One admission for the key, against `limit` (else the limiter's own)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        limit = self.limit if limit is None else limit
        window = now_ms // self.window_ms
        slot = (key_id, window)
        reset_s = ((window + 1) * self.window_ms - now_ms) / 1000
        self._forget_before(window)
        if self._lease[slot] <= 0 and time.monotonic() >= self._ask_again:
            await self._take(slot, limit)
        if self._lease[slot] > 0:
            self._lease[slot] -= 1
            if self._lease[slot] == LEASE // 2:
                self._refill(slot, limit)
            return Verdict(True, limit, self._remaining(slot, limit), reset_s)
        store_away = slot in self._alone or time.monotonic() < self._ask_again
        if store_away and self._offline[slot] < limit:
            self._alone.add(slot)
            self._offline[slot] += 1  # the store is away: this worker's own count
            return Verdict(True, limit, limit - self._offline[slot], reset_s)
        return Verdict(False, limit, 0, reset_s)

    def _remaining(self, slot: Slot, limit: int) -> int:
        return max(0, limit - self._taken.get(slot, 0) + self._lease[slot])

    def _refill(self, slot: Slot, limit: int) -> None:
        task = asyncio.get_running_loop().create_task(self._take(slot, limit))
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def _take(self, slot: Slot, limit: int) -> None:
        """Add up to LEASE admissions to the slot's lease: as many as the
        window has room for. A store that does not answer leaves the lease as
        it is and starts counting this worker's admissions on its own."""
        async with self._taking[slot]:
            if self._lease[slot] > LEASE // 2:
                return  # another waiter refilled it
            # One counter of what all workers took; nothing is "spent" apart
            # from it (that counter stays 0).
            check = Reservation(f"rl-spent:{slot[0]}", _counter(slot), limit)
            amount = LEASE
            try:
                while amount > 0:
                    refused = await self.store.reserve([check], amount, 2 * self.window_ms)
                    if refused is None:
                        self._lease[slot] += amount
                        self._taken[slot] = self._taken.get(slot, 0) + amount
                        self._alone.discard(slot)
                        return
                    _, _, taken = refused
                    self._taken[slot] = taken
                    amount = min(amount - 1, limit - taken)
            except Exception as exc:  # the store is away: no waiting on it for a while
                log.warning("rate limit counted locally: %s", exc)
                self._ask_again = time.monotonic() + RETRY_S
                self._alone.add(slot)

    async def reconcile(self) -> None:
        """Hand the store what this worker admitted on its own while it was
        away (a beat): from then on it counts against the window for all."""
        for slot in list(self._offline):
            alone = self._offline[slot]
            await self.store.add_counters({_counter(slot): alone}, 2 * self.window_ms)
            self._taken[slot] = self._taken.get(slot, 0) + alone
            del self._offline[slot]

    def _forget_before(self, window: int) -> None:
        if len(self._lease) > 1024:  # windows that ended: nothing left to spend
            for table in (self._lease, self._taken, self._offline):
                for slot in [s for s in table if s[1] < window]:
                    del table[slot]
            self._alone = {s for s in self._alone if s[1] >= window}


class FailedAuthentications:
    """At most `limit` failed authentications (401) per client address per
    minute, over every worker and replica: each failure is counted in the
    store, and the one that takes an address past the limit is answered 429
    instead. A worker that saw an address over its limit answers every
    request from it 429 until the minute ends, without checking the key, so
    guessing stops paying; other workers learn it from the address's next
    failure there. While the store is away each worker counts on its own."""

    WINDOW_MS = 60_000

    def __init__(self, store: Store, limit: int):
        self.store = store
        self.limit = limit
        self._blocked: dict[str, int] = {}  # address -> ms when its window ends
        self._alone: dict[Slot, int] = defaultdict(int)  # counted while the store was away
        self._window = 0  # the minute the tables hold

    def blocked_for(self, address: str, now_ms: int | None = None) -> float | None:
        """Seconds until the address may try again, if it is blocked here."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        until = self._blocked.get(address)
        if until is None:
            return None
        if until <= now_ms:
            del self._blocked[address]
            return None
        return (until - now_ms) / 1000

    async def failed(self, address: str, now_ms: int | None = None) -> float | None:
        """Count one failure; the seconds to wait when it is over the limit."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        window = now_ms // self.WINDOW_MS
        if window != self._window:  # a new minute: what the last ones held is over
            self._window = window
            self._blocked = {a: u for a, u in self._blocked.items() if u > now_ms}
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
        self._blocked[address] = (window + 1) * self.WINDOW_MS
        return self.blocked_for(address, now_ms)


class InFlight:
    """Requests in progress per client address, in this worker, capped: one
    address cannot hold every worker's attention (0 lifts the cap)."""

    def __init__(self, cap: int):
        self.cap = cap
        self._count: dict[str, int] = {}

    def enter(self, address: str) -> bool:
        """Count one more request of the address; False when at its cap."""
        count = self._count.get(address, 0)
        if self.cap and count >= self.cap:
            return False
        self._count[address] = count + 1
        return True

    def leave(self, address: str) -> None:
        count = self._count[address] - 1
        if count:
            self._count[address] = count
        else:
            del self._count[address]
