"""The rollup flush, end to end below HTTP, on both stores: a real engine
records attempts at chosen times, RollupSync adds them to the store, and the
figures read back. Chosen times make minute and hour boundaries, restarts
(a second engine) and retention testable without waiting for the clock."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from conftest import store_env
from model_router._core import Engine
from model_router.settings import Settings
from model_router.store import open_store
from model_router.telemetry import figures
from model_router.telemetry.rollups import KEY_SEPARATOR, RollupSync, retention_ms

MINUTE, HOUR = 60_000, 3_600_000
SNAPSHOT = {
    "version": 1,
    "models": [
        {
            "id": "m1",
            "version": "m1",
            "provider": "openai",
            "modelType": "chat",
            "status": "active",
            "pricing": {"inputPer1k": 0.01, "outputPer1k": 0.03},
            "endpoints": [
                {
                    "id": "m1-ep",
                    "url": "http://127.0.0.1:9/v1/chat/completions",
                    "type": "primary",
                    "weight": 1.0,
                }
            ],
        }
    ],
}


def engine() -> Engine:
    e = Engine(seed=1)
    e.load(json.dumps(SNAPSHOT).encode())
    return e


def record(
    e: Engine, sent_ms: int, latency_ms: float, outcome: str = "success", **arm: str
) -> None:
    e.record(
        "m1",
        "m1-ep",
        outcome == "success",
        latency_ms,
        1000,
        1000,
        "ws",
        started_ms=sent_ms,
        outcome=outcome,
        agent_type="creative",
        **arm,
    )


@pytest.fixture
def run(backend, redis_url, tmp_path):
    """Run a scenario against a fresh store of the test's backend."""
    settings = Settings.from_env(store_env(backend, redis_url, tmp_path))

    def go(scenario):
        async def with_store():
            store = open_store(settings)
            try:
                await scenario(store)
            finally:
                await store.close()

        asyncio.run(with_store())

    return go


def totals(cells) -> dict[object, figures.Tally]:
    return figures.tally(cells, lambda start, _: start)


def test_a_minute_and_an_hour_boundary_and_a_restart(run):
    async def scenario(store):
        keep = retention_ms(48, 35)
        now = int(time.time() * 1000)
        hour = now - now % HOUR - HOUR  # the last whole hour
        edge = hour + HOUR  # its end: a minute and an hour boundary
        before, after = engine(), engine()  # the same worker before and after a restart
        for i in range(10):
            record(before, edge - 1 - i, 100.0 + i)  # the last ms of the hour
        record(before, edge - 5, 9.0, "timeout")
        await RollupSync(before, store, keep).flush()
        for i in range(5):
            record(after, edge + i, 200.0 + i)  # the first ms of the next
        record(after, edge - 1, 110.0)  # a late attempt that began before the edge
        await RollupSync(after, store, keep).flush()

        minutes = totals(await store.read_rollups("m", edge - MINUTE, edge + MINUTE))
        hours = totals(await store.read_rollups("h", hour, edge + HOUR))
        for by in (minutes, hours):
            last, first = by[edge - (MINUTE if by is minutes else HOUR)], by[edge]
            assert last.figures().attempts == 12 and last.figures().requests == 12
            assert last.figures().errors == {"timeout": 1}
            assert last.figures().cost_nanos == 12 * 40_000_000
            assert first.figures().attempts == 5
            assert first.figures().latency_ms.p50 == pytest.approx(202.0, rel=0.01)

    run(scenario)


def test_retention_prunes_minute_buckets_before_hour_buckets(run):
    async def scenario(store):
        keep = retention_ms(1, 35)  # minute buckets kept 1 h
        now = int(time.time() * 1000)
        old = now - 2 * HOUR
        e = engine()
        record(e, old, 50.0)
        record(e, now, 60.0)
        await RollupSync(e, store, keep).flush()
        assert await store.read_rollups("m", old - MINUTE, old + MINUTE) == []
        kept = totals(await store.read_rollups("h", old - HOUR, now + HOUR))
        assert sum(t.figures().attempts for t in kept.values()) == 2
        recent = totals(await store.read_rollups("m", now - MINUTE, now + MINUTE))
        assert sum(t.figures().attempts for t in recent.values()) == 1

    run(scenario)


def test_what_failed_to_merge_is_merged_with_the_next_beat(run, tmp_path):
    async def scenario(store):
        keep = retention_ms(48, 35)
        now = int(time.time() * 1000)
        e = engine()
        gone = open_store(Settings.from_env({"MODEL_ROUTER_DATA_DIR": str(tmp_path / "gone")}))
        await gone.close()  # a store that refuses every write
        sync = RollupSync(e, gone, keep)
        record(e, now, 10.0)
        with pytest.raises(RuntimeError):  # its executor is shut down
            await sync.flush()
        assert sync.queue.batch, "kept for the next beat"
        sync.queue.store = store  # the store is back
        record(e, now, 20.0)
        await sync.flush()
        got = totals(await store.read_rollups("m", now - MINUTE, now + MINUTE))
        assert sum(t.figures().attempts for t in got.values()) == 2
        assert sync.queue.batch is None and not sync.queue.pending

    run(scenario)


def test_cells_stored_before_the_rollout_and_variant_dimensions_read_as_none(run):
    """A key written with six dimensions (before canaries and experiments were
    keyed) reads as no rollout and no variant, beside the keys of today."""

    async def scenario(store):
        keep = retention_ms(48, 35)
        now = int(time.time() * 1000)
        minute = now - now % MINUTE
        six = KEY_SEPARATOR.join(("m1", "m1-ep", "ws", "creative", "", "success"))
        await store.merge_rollups({("m", minute, six, "attempts"): 3}, keep)
        e = engine()
        record(e, now, 10.0)
        record(e, now, 10.0, rollout_id="experiment-1", variant="m1")
        await RollupSync(e, store, keep).flush()
        cells = await store.read_rollups("m", minute, minute + MINUTE)
        by_arm = figures.tally(cells, lambda _, d: (d["rollout"], d["variant"]))
        attempts = {arm: tally.figures().attempts for arm, tally in by_arm.items()}
        assert attempts == {("", ""): 4, ("experiment-1", "m1"): 1}
        by_model = figures.tally(cells, lambda _, d: (d["model"], d["outcome"]))
        assert {k: v.figures().attempts for k, v in by_model.items()} == {("m1", "success"): 5}

    run(scenario)
