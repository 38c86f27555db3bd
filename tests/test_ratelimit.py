"""RateLimiter's leases on a real store (SQLite and Redis): sized to the key's
admission rate in each worker, never past the limit, never starving a key.

Each limiter plays one worker. The clock the limiter reads (`now_ms`) is
simulated, so a stream's pace does not depend on the machine; the store is
real, and each admission yields to the loop as a server's request does, so
background top-ups run between requests.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import store_env
from model_router.ratelimit import AHEAD_MS, LEASE, RATE_MS, SHARE, RateLimiter, Verdict
from model_router.settings import Settings
from model_router.store import open_store

WINDOW_MS = 60_000
START = 1_000 * WINDOW_MS  # a window's first ms


@pytest.fixture
def store(backend, redis_url, tmp_path):
    """Open a connection to one fresh store (each call: another worker's)."""
    settings = Settings.from_env(store_env(backend, redis_url, tmp_path))
    return lambda: open_store(settings)


def reserved_amounts(store) -> list[int]:
    """Record the amount of each `reserve` call the real store answers."""
    amounts: list[int] = []
    reserve = store.reserve

    async def counted(checks, amount, ttl_ms):
        amounts.append(amount)
        return await reserve(checks, amount, ttl_ms)

    store.reserve = counted
    return amounts


async def admit(limiter: RateLimiter, now_ms: int) -> Verdict:
    verdict = await limiter.admit("k", now_ms)
    await asyncio.sleep(0)  # a server's request yields at least once
    return verdict


def test_a_busy_key_goes_to_the_store_a_few_times_a_second(store):
    async def scenario():
        s = store()
        amounts = reserved_amounts(s)
        limiter = RateLimiter(s, 10**9, WINDOW_MS)
        # 5000 admissions a second for two seconds.
        first = [await admit(limiter, START + i // 5) for i in range(5_000)]
        calls_in_first_second = len(amounts)
        then = [await admit(limiter, START + i // 5) for i in range(5_000, 10_000)]
        assert all(v.admitted for v in first + then)
        # A lease of LEASE a time would be 10_000 / (LEASE / 2) = 2500 round trips.
        assert len(amounts) < 60, len(amounts)
        # Once grown, a lease holds AHEAD_MS of traffic and is topped up when
        # half is spent: about 1000 / (AHEAD_MS / 2) = 8 round trips a second.
        assert len(amounts) - calls_in_first_second <= 12, amounts
        await s.close()

    asyncio.run(scenario())


def test_a_slow_key_takes_small_leases(store):
    async def scenario():
        s = store()
        amounts = reserved_amounts(s)
        limiter = RateLimiter(s, 10**9, WINDOW_MS)
        # Five requests a second: each lease is LEASE, no more.
        verdicts = [await admit(limiter, START + 200 * i) for i in range(50)]
        assert all(v.admitted for v in verdicts)
        assert amounts and max(amounts) <= LEASE, amounts
        # A burst of 20 at once after a quiet spell: at most AHEAD_MS / RATE_MS
        # times the burst, however fast it came.
        amounts.clear()
        burst = [await admit(limiter, START + 20_000) for _ in range(20)]
        assert all(v.admitted for v in burst)
        assert max(amounts) <= 20 * AHEAD_MS // RATE_MS, amounts
        await s.close()

    asyncio.run(scenario())


def test_workers_that_keep_asking_admit_exactly_the_limit(store):
    async def scenario():
        stores = [store() for _ in range(4)]
        workers = [RateLimiter(s, 100, WINDOW_MS) for s in stores]
        admitted, refused_in_a_row, i = 0, 0, 0
        while refused_in_a_row < 3 * len(workers):  # each refused, again and again
            verdict = await admit(workers[i % len(workers)], START + i // 20)
            admitted += verdict.admitted
            refused_in_a_row = 0 if verdict.admitted else refused_in_a_row + 1
            assert admitted <= 100
            i += 1
        # Every lease was spent: what the store counted is what was admitted.
        assert admitted == 100
        counted = await stores[0].read_counters([f"rl:k:{START // WINDOW_MS}"])
        assert list(counted.values()) == [100]
        for s in stores:
            await s.close()

    asyncio.run(scenario())


def test_leases_left_unused_by_idle_workers_are_at_most_a_share_of_the_limit_each(store):
    async def scenario():
        limit = 1600
        stores = [store() for _ in range(4)]
        amounts = [reserved_amounts(s) for s in stores]
        workers = [RateLimiter(s, limit, WINDOW_MS) for s in stores]
        # All four busy (5000 a second each) until half the window is spent...
        admitted, i = 0, 0
        while admitted < limit // 2:
            admitted += (await admit(workers[i % 4], START + i // 20)).admitted
            i += 1
        # ...then three go quiet, holding their leases; the fourth keeps asking.
        refused_in_a_row = 0
        while refused_in_a_row < 3:
            verdict = await admit(workers[0], START + i // 20)
            admitted += verdict.admitted
            refused_in_a_row = 0 if verdict.admitted else refused_in_a_row + 1
            i += 1
        # No worker ever held more than limit / SHARE, so the three idle
        # leases keep at most that much each from the one still asking.
        assert max(max(a) for a in amounts) <= limit // SHARE
        assert limit - 3 * (limit // SHARE) <= admitted <= limit, admitted
        for s in stores:
            await s.close()

    asyncio.run(scenario())


def test_a_fast_key_holds_at_most_a_share_of_what_the_window_has_left(store):
    async def scenario():
        limit = 16_000
        s = store()
        amounts = reserved_amounts(s)
        worker = RateLimiter(s, limit, WINDOW_MS)
        # 20_000 a second: at its rate the lease would hold 5000.
        verdicts = [await admit(worker, START + i // 20) for i in range(limit + 10)]
        assert sum(v.admitted for v in verdicts) == limit
        assert max(amounts) <= limit // SHARE, max(amounts)
        # The last of the window is handed out one admission at a time.
        assert amounts[-2:] == [1, 1], amounts[-40:]
        await s.close()

    asyncio.run(scenario())


def test_what_ended_windows_held_is_let_go(store):
    """A worker that sees many keys and windows holds a bounded state: the
    leases, counts and locks of windows that ended are dropped."""

    async def scenario():
        limiter = RateLimiter(store(), 100, WINDOW_MS)
        for window in range(1_200):
            assert (await limiter.admit(f"key-{window}", START + window * WINDOW_MS)).admitted
        tables = (limiter.leases, limiter._taking)
        assert all(len(table) <= 1_025 for table in tables), [len(t) for t in tables]

    asyncio.run(scenario())
