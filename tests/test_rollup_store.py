"""The Store's rollup cells, run against both implementations: merges add up,
reads see a range of bucket starts, and retention forgets old buckets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from test_experiment_stats import finished

from conftest import store_env
from model_router.experiments.routing import Arm, Kind
from model_router.experiments.tally import KEEP_MS, outcome_cells, read_arms
from model_router.settings import Settings
from model_router.store import StoreUnavailable, open_store

MINUTE, HOUR = 60_000, 3_600_000
KEEP = {"m": 48 * HOUR, "h": 35 * 24 * HOUR}


@pytest.fixture
def store(backend, redis_url, tmp_path):
    env = store_env(backend, redis_url, tmp_path)
    settings = Settings.from_env(env)
    return lambda: open_store(settings)


def now_minute() -> int:
    now = int(time.time() * 1000)
    return now - now % MINUTE


def test_merges_from_many_writers_add_up(store):
    async def scenario():
        s, other = store(), store()
        start = now_minute()
        cell = ("m", start, "gpt-4\x1fep\x1f\x1f\x1f\x1fsuccess", "attempts")
        sketch = ("m", start, cell[2], "l-12")
        await asyncio.gather(
            *(w.merge_rollups({cell: 3, sketch: 2}, KEEP) for w in (s, other, s, other))
        )
        cells = await s.read_rollups("m", start, start + MINUTE)
        assert sorted(cells) == [(start, cell[2], "attempts", 12), (start, cell[2], "l-12", 8)]
        await s.close()
        await other.close()

    asyncio.run(scenario())


def test_reads_see_bucket_starts_in_the_half_open_range(store):
    async def scenario():
        s = store()
        start = now_minute() - 10 * MINUTE
        await s.merge_rollups(
            {("m", start + i * MINUTE, "k", "requests"): i + 1 for i in range(5)}, KEEP
        )
        await s.merge_rollups({("h", start - start % HOUR, "k", "requests"): 15}, KEEP)
        got = await s.read_rollups("m", start + MINUTE, start + 4 * MINUTE)
        assert sorted(v for _, _, _, v in got) == [2, 3, 4]
        assert [c[3] for c in await s.read_rollups("h", start - HOUR, start + HOUR)] == [15]
        await s.close()

    asyncio.run(scenario())


def test_retention_forgets_buckets_older_than_their_resolution_keeps(store):
    async def scenario():
        s = store()
        recent, old = now_minute(), now_minute() - 49 * HOUR
        keep = {"m": 48 * HOUR, "h": 35 * 24 * HOUR}
        # Written while still young (a long retention), then a merge with the
        # real retention prunes it.
        await s.merge_rollups({("m", old, "k", "attempts"): 1}, {"m": 50 * HOUR, "h": 1})
        await s.merge_rollups({("h", old - old % HOUR, "k", "attempts"): 1}, keep)
        await s.merge_rollups({("m", recent, "k", "attempts"): 1}, keep)
        if hasattr(s, "client"):  # Redis forgets by expiry: the old hash expires at its end
            ttl = await s.client.pttl(s._rollup_key("m", old))
            assert 0 < ttl <= HOUR
        else:
            assert await s.read_rollups("m", old, old + MINUTE) == []
        assert len(await s.read_rollups("m", recent, recent + MINUTE)) == 1
        assert len(await s.read_rollups("h", old - HOUR, old + HOUR)) == 1
        await s.close()

    asyncio.run(scenario())


def test_window_buckets_start_at_any_ms_and_are_read_one_at_a_time(store):
    """Canary and experiment windows ("w"): a bucket per window start, however
    close two starts are, and the squares of big sums still fit."""

    async def scenario():
        s, other = store(), store()
        start = int(time.time() * 1000)
        keep = {"w": HOUR}
        big = 10**17  # a sum of squares of latencies in µs² / 1000
        for w in (s, other):
            await w.merge_rollups({("w", start, "c1\x1fcanary", "lq"): big}, keep)
            await w.merge_rollups({("w", start + 1, "c1\x1fcanary", "n"): 1}, keep)
        assert await s.read_rollups("w", start, start + 1) == [
            (start, "c1\x1fcanary", "lq", 2 * big)
        ]
        assert await s.read_rollups("w", start + 1, start + 2) == [
            (start + 1, "c1\x1fcanary", "n", 2)
        ]
        await s.close()
        await other.close()

    asyncio.run(scenario())


def test_a_window_of_expensive_slow_requests_adds_up_without_overflow(store):
    """100,000 requests of $3 taking 60 s each: the arm's sums of squares
    stay integers the store can add, and read back to the true figures."""

    async def scenario():
        s = store()
        start = int(time.time() * 1000)
        arm = Arm(Kind.EXPERIMENT, "e1", "0", "m", start)
        done = finished("r", "m", True, 60_000.0, 3.0)
        one = outcome_cells(arm, done)
        for _ in range(10):  # ten workers' flushes of 10,000 requests each
            await s.merge_rollups(Counter({c: v * 10_000 for c, v in one.items()}), KEEP_MS)
        tally = (await read_arms(s, "e1", start))["0"]
        assert tally.requests == 100_000
        assert tally.cost.mean == pytest.approx(3.0)
        assert tally.cost.squares == pytest.approx(9.0 * 100_000)
        assert tally.latency.squares == pytest.approx(60_000.0**2 * 100_000)
        await s.close()

    asyncio.run(scenario())


def test_a_cell_redis_cannot_add_loses_itself_only_and_adds_nothing_twice(store, backend):
    """Redis applies the rest of a script when one HINCRBY fails: the merge
    must not raise (its caller would merge every cell again)."""
    if backend != "redis":
        pytest.skip("SQLite rolls a failed transaction back whole")

    async def scenario():
        s = store()
        start = int(time.time() * 1000)
        keep = {"w": HOUR}
        await s.merge_rollups({("w", start, "k", "full"): 2**63 - 1}, keep)
        await s.merge_rollups({("w", start, "k", "full"): 1, ("w", start, "k", "n"): 5}, keep)
        assert sorted(await s.read_rollups("w", start, start + 1)) == [
            (start, "k", "full", 2**63 - 1),
            (start, "k", "n", 5),
        ]
        await s.close()

    asyncio.run(scenario())


def test_a_batch_sent_twice_is_merged_once(store):
    async def scenario():
        s, other = store(), store()
        start = now_minute()
        cell = ("m", start, "k", "requests")
        for w in (s, other, s):  # a retry may reach any worker's connection
            await w.merge_rollups({cell: 3}, KEEP, batch="flush-1")
        await s.merge_rollups({cell: 4}, KEEP, batch="flush-2")
        await s.merge_rollups({cell: 5}, KEEP)  # no id: merged every time
        await s.merge_rollups({cell: 5}, KEEP)
        assert await s.read_rollups("m", start, start + 1) == [(start, "k", "requests", 17)]
        await s.close()
        await other.close()

    asyncio.run(scenario())


# Holds Redis busy for ARGV[1] seconds, as a slow command or a fork can.
BUSY = (
    "local t0 = redis.call('TIME') local s = t0[1] + t0[2] / 1e6 "
    "while true do local t = redis.call('TIME') "
    "if t[1] + t[2] / 1e6 - s > tonumber(ARGV[1]) then break end end return 1"
)


def test_a_merge_that_times_out_is_not_sent_again_and_its_retry_lands_once(
    store, backend, redis_url
):
    """Redis busy past the store's 1 s timeout: the merge raises (the client
    does not send it again by itself), Redis runs it once it is free, and the
    caller's retry under the same batch id adds nothing more."""
    if backend != "redis":
        pytest.skip("a stall of the server is Redis's")
    import redis as sync_redis

    async def scenario():
        s = store()
        start = now_minute()
        cell = ("m", start, "k", "requests")
        await s.merge_rollups({cell: 1}, KEEP)
        busy = asyncio.create_task(
            asyncio.to_thread(sync_redis.Redis.from_url(redis_url).eval, BUSY, 0, 1.5)
        )
        await asyncio.sleep(0.1)
        with pytest.raises(StoreUnavailable):
            await s.merge_rollups({cell: 10}, KEEP, batch="stalled")
        await busy
        await s.merge_rollups({cell: 10}, KEEP, batch="stalled")
        assert await s.read_rollups("m", start, start + 1) == [(start, "k", "requests", 11)]
        await s.close()

    asyncio.run(scenario())
