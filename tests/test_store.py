"""The Store protocol, run against both implementations."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from conftest import free_port, store_env
from model_router.settings import Settings
from model_router.store import (
    AppendAudit,
    Clear,
    ConfigStamp,
    CounterWrite,
    Delete,
    ExpectAbsent,
    ExpectBody,
    ExpectPresent,
    PreconditionFailed,
    Put,
    Reservation,
    SetEpoch,
    StoreUnavailable,
    open_store,
)
from model_router.store.redis import _reachable


@pytest.fixture
def store(backend, redis_url, tmp_path):
    env = store_env(backend, redis_url, tmp_path)
    settings = Settings.from_env(env)
    return lambda: open_store(settings)


def run(coro):
    return asyncio.run(coro)


def test_put_get_delete_and_version(store):
    async def scenario():
        s = store()
        assert await s.version() == 0
        assert await s.get("models", "m1") is None
        v1 = await s.apply([Put("models", "m1", b'{"a":1}'), Put("models", "m2", b"{}")])
        assert v1 == 1 and await s.version() == 1
        assert await s.get("models", "m1") == b'{"a":1}'
        assert await s.get_all("models") == {"m1": b'{"a":1}', "m2": b"{}"}
        assert await s.get_all("rules") == {}
        assert await s.apply([Delete("models", "m1")]) == 2
        assert await s.get_all("models") == {"m2": b"{}"}
        await s.apply([Clear("models"), Put("models", "m3", b"[]")])
        assert await s.get_all("models") == {"m3": b"[]"}
        await s.close()

    run(scenario())


def test_audit_entries_land_with_their_write_carry_its_version_and_stay_bounded(store):
    async def scenario():
        s, other = store(), store()
        await s.apply([Put("models", "m0", b"{}")])  # unaudited: no entry
        for i in range(1, 6):
            await (s if i % 2 else other).apply(
                [Put("models", f"m{i}", b"{}"), AppendAudit(f'{{"n": {i}}}'.encode(), keep=3)]
            )
        rows = await s.audit(None, 10)
        # The newest three, newest first, each with the version its write produced.
        assert [(version, body) for _, version, body in rows] == [
            (6, b'{"n": 5}'),
            (5, b'{"n": 4}'),
            (4, b'{"n": 3}'),
        ]
        seqs = [seq for seq, _, _ in rows]
        assert seqs == sorted(seqs, reverse=True)
        assert await s.audit(seqs[0], 1) == rows[1:2]  # paging: below a sequence number
        assert await s.audit(seqs[-1], 10) == []
        # A write refused by its precondition records nothing.
        with pytest.raises(PreconditionFailed):
            await s.apply([ExpectAbsent("models", "m1"), AppendAudit(b"{}", keep=3)])
        assert await other.audit(None, 10) == rows
        await s.close()
        await other.close()

    run(scenario())


def test_preconditions_fail_whole_and_change_nothing(store):
    async def scenario():
        s = store()
        await s.apply([Put("models", "m1", b"1")])
        for failing in (
            ExpectAbsent("models", "m1"),
            ExpectPresent("models", "nope"),
            ExpectBody("models", "m1", b"2"),
            ExpectBody("models", "nope", b"1"),
        ):
            with pytest.raises(PreconditionFailed) as err:
                await s.apply([Put("models", "m2", b"x"), failing, Delete("models", "m1")])
            assert err.value.op == failing
        assert await s.get_all("models") == {"m1": b"1"}
        assert await s.version() == 1
        await s.apply(
            [
                ExpectBody("models", "m1", b"1"),
                ExpectPresent("models", "m1"),
                ExpectAbsent("models", "m2"),
                Put("models", "m1", b"2"),
            ]
        )
        assert await s.get("models", "m1") == b"2"
        await s.close()

    run(scenario())


def test_state_survives_reopening(store):
    async def write():
        s = store()
        await s.apply([Put("rules", "r1", b"{}")])
        await s.close()

    async def read():
        s = store()
        try:
            return await s.get("rules", "r1"), await s.version()
        finally:
            await s.close()

    run(write())
    assert run(read()) == (b"{}", 1)


def test_compare_and_set_never_loses_a_concurrent_increment(store):
    """Many writers incrementing one document through CAS: every one counts."""

    async def writer(s, n):
        for _ in range(n):
            while True:
                raw = await s.get("counter", "c")
                value = int(raw or b"0")
                guard = ExpectBody("counter", "c", raw) if raw else ExpectAbsent("counter", "c")
                try:
                    await s.apply([guard, Put("counter", "c", str(value + 1).encode())])
                    break
                except PreconditionFailed:
                    continue

    async def scenario():
        stores = [store() for _ in range(4)]
        await asyncio.gather(*(writer(s, 10) for s in stores))
        assert await stores[0].get("counter", "c") == b"40"
        for s in stores:
            await s.close()

    run(scenario())


def test_counters_add_atomically_and_expire(store):
    async def scenario():
        stores = [store(), store()]
        results = await asyncio.gather(
            *(s.add_counters({"a": 1, "b": 2}, ttl_ms=60_000) for s in stores for _ in range(5))
        )
        assert sorted(r["a"] for r in results) == list(range(1, 11))
        assert max(r["b"] for r in results) == 20
        assert (await stores[0].add_counters({"short": 5}, ttl_ms=50))["short"] == 5
        await asyncio.sleep(0.2)
        assert (await stores[0].add_counters({"short": 1}, ttl_ms=50))["short"] == 1
        for s in stores:
            await s.close()

    run(scenario())


def test_counters_added_together_keep_each_its_own_lifetime(store):
    async def scenario():
        s = store()
        lifetimes = {"short": 50, "long": 60_000}
        assert await s.add_counters({"short": 5, "long": 7}, lifetimes) == {"short": 5, "long": 7}
        await asyncio.sleep(0.2)
        assert await s.read_counters(["short", "long"]) == {"short": 0, "long": 7}
        await s.close()

    run(scenario())


def test_a_counter_write_sent_again_is_added_once(store):
    """A write whose answer was lost is sent again as it was: the store
    remembers each writer's last applied write, which adds nothing the
    second time and says what the counters hold."""

    async def scenario():
        s = store()
        first, second = CounterWrite("w1", "1"), CounterWrite("w1", "2")
        assert await s.add_counters({"a": 5, "b": 1}, 60_000, first) == {"a": 5, "b": 1}
        await s.add_counters({"a": 2}, 60_000)  # another worker's write, meanwhile
        assert await s.add_counters({"a": 5, "b": 1}, 60_000, first) == {"a": 7, "b": 1}
        assert await s.add_counters({"a": 5, "b": 1}, 60_000, second) == {"a": 12, "b": 2}
        assert await s.add_counters({"a": 1}, 60_000, CounterWrite("w2", "2")) == {"a": 13}
        assert await s.add_counters({"new": 3}, 60_000, second) == {"new": 0}
        assert await s.read_counters(["a", "b", "new"]) == {"a": 13, "b": 2, "new": 0}
        await s.close()

    run(scenario())


def test_counters_are_read_together_without_being_written(store):
    async def scenario():
        s = store()
        await s.add_counters({"a": 3, "b": -2}, ttl_ms=60_000)
        await s.add_counters({"short": 7}, ttl_ms=50)
        await asyncio.sleep(0.2)
        names = ["a", "b", "never", "short"]
        assert await s.read_counters(names) == {"a": 3, "b": -2, "never": 0, "short": 0}
        assert await s.read_counters([]) == {}
        # Reading created nothing: the first add starts from zero.
        assert (await s.add_counters({"never": 1}, ttl_ms=60_000))["never"] == 1
        many = [f"c{i}" for i in range(40_000)]  # past SQLite's parameter limit
        assert sum((await s.read_counters(many)).values()) == 0
        await s.close()

    run(scenario())


def test_a_counter_is_claimed_once_and_read_without_being_created(store):
    async def scenario():
        stores = [store(), store()]
        assert await stores[0].read_counters(["x", "y"]) == {"x": 0, "y": 0}
        claims = await asyncio.gather(
            *(s.claim_counters({"x": v}, ttl_ms=60_000) for s in stores for v in (1, 2, 3))
        )
        first = claims[0]["x"]
        assert {c["x"] for c in claims} == {first}  # the first claim wins, no sum
        assert await stores[1].read_counters(["x", "y"]) == {"x": first, "y": 0}
        await stores[0].claim_counters({"short": 7}, ttl_ms=50)
        await asyncio.sleep(0.2)
        assert await stores[0].read_counters(["short"]) == {"short": 0}
        assert (await stores[0].claim_counters({"short": 9}, ttl_ms=50))["short"] == 9
        for s in stores:
            await s.close()

    run(scenario())


def test_shared_state_is_set_and_deleted_per_entry_and_leaves_the_config_version_alone(store):
    async def scenario():
        s, other = store(), store()
        await s.put_state("breakers", {"e1": b'{"a":1}', "e2": b"x"})
        await other.put_state("breakers", {"e1": b'{"a":2}'})
        assert await s.get_state("breakers") == {"e1": b'{"a":2}', "e2": b"x"}
        assert await s.get_state("nothing") == {}
        await other.delete_state("breakers", ["e1", "absent"])
        assert await s.get_state("breakers") == {"e2": b"x"}
        await other.delete_state("breakers", [])
        assert await s.version() == 0
        await s.close()
        await other.close()

    run(scenario())


def test_a_lease_has_one_holder_until_it_lapses_or_is_released(store):
    async def scenario():
        s, other = store(), store()
        assert await s.hold_lease("prober", "a", 300)
        assert not await other.hold_lease("prober", "b", 300)
        assert await s.hold_lease("prober", "a", 300)  # the holder renews
        assert await other.hold_lease("elsewhere", "b", 300)  # leases are by name
        await asyncio.sleep(0.4)  # unrenewed: free again
        assert await other.hold_lease("prober", "b", 300)
        assert not await s.hold_lease("prober", "a", 300)
        await s.release_lease("prober", "a")  # not a's to release: b keeps it
        assert not await s.hold_lease("prober", "a", 300)
        await other.release_lease("prober", "b")
        assert await s.hold_lease("prober", "a", 300)
        await s.close()
        await other.close()

    run(scenario())


def test_the_config_epoch_is_created_once_and_replaced_by_an_import(store):
    async def scenario():
        s = store()
        assert await s.stamp() == ConfigStamp(None, 0)
        created = await s.start_epoch()
        assert created.startswith("created-") and await store().start_epoch() == created
        assert not (await s.stamp()).imported
        version = await s.apply([Put("models", "m1", b"{}"), SetEpoch("imported-1")])
        assert await s.stamp() == ConfigStamp("imported-1", version)
        assert (await s.stamp()).imported and await s.start_epoch() == "imported-1"
        await s.close()

    run(scenario())


def test_reservations_never_let_spent_and_reserved_pass_a_limit(store):
    async def scenario():
        s, other = store(), store()
        day = Reservation("spent:d", "reserved:d", 100)
        month = Reservation("spent:m", "reserved:m", 1000)
        await s.add_counters({"spent:d": 60}, 60_000)
        assert await s.reserve([day, month], 30, 60_000) is None
        # 60 + 30 + 11 > 100: the day has no room (spent 60, reserved 30).
        assert await other.reserve([day, month], 11, 60_000) == (0, 60, 30)
        assert await other.reserve([day, month], 10, 60_000) is None
        # A refused reservation changed nothing; granted ones add up per period.
        totals = await s.add_counters({"reserved:d": 0, "reserved:m": 0}, 60_000)
        assert totals == {"reserved:d": 40, "reserved:m": 40}
        # Settling moves amounts from reserved to spent; the room comes back.
        await s.add_counters({"spent:d": 5, "reserved:d": -40}, 60_000)
        assert await s.reserve([day], 35, 60_000) is None
        await s.close()
        await other.close()

    run(scenario())


def test_a_cancelled_task_stops_in_whatever_store_call_it_was(store):
    """Cancelled during a store call, a task ends cancelled, every time.
    redis-py on Python 3.11 returned the command's result and dropped the
    cancellation when both came at once (4 in 5 of these rounds), so a loop
    over the store (a config reload, a beat, the config subscription) went
    on after a stopping worker cancelled it."""

    given_up = asyncio.Event()  # ends a loop whose cancellation was lost

    async def rounds_until_a_cancel_is_lost(loop_over, rounds: int) -> int | None:
        pause = random.Random(7)
        for n in range(rounds):
            task = asyncio.create_task(loop_over())
            await asyncio.sleep(pause.uniform(0, 0.0005))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                given_up.set()
                for _ in range(50):  # it ends on the flag, or on one of these cancels
                    task.cancel()
                    if (await asyncio.wait({task}, timeout=0.1))[0]:
                        break
                return n
        return None

    async def scenario():
        s = store()

        async def reading() -> None:
            while not given_up.is_set():
                await s.stamp()

        async def watching() -> None:
            await s.watch_config(lambda: None)
            await given_up.wait()  # SQLite cannot watch: it returns at once

        assert await rounds_until_a_cancel_is_lost(reading, 200) is None
        assert await rounds_until_a_cancel_is_lost(watching, 50) is None
        await s.close()

    run(scenario())


def test_a_cancel_dropped_in_a_redis_call_that_then_fails_still_ends_the_task():
    """The drop can come before a failure too (the send drops the cancel,
    then the read times out): the caller must still end cancelled, not loop
    on the store error."""

    @_reachable
    async def drops_the_cancel_then_fails() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as redis-py's wait_for does
            await asyncio.sleep(1)
        raise RedisTimeoutError("Timeout reading from socket")

    async def scenario():
        task = asyncio.create_task(drops_the_cancel_then_fails())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())


def test_a_store_out_of_reach_raises_store_unavailable(backend, tmp_path):
    """Redis refusing connections; a SQLite file locked past the timeout (for
    writes: in WAL mode readers are never blocked)."""
    env = {"MODEL_ROUTER_STORE_TIMEOUT_MS": "100", "MODEL_ROUTER_DATA_DIR": str(tmp_path)}
    if backend == "redis":
        env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    s = open_store(Settings.from_env(env))
    lock = sqlite3.connect(tmp_path / "model-router.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")

    async def scenario():
        with pytest.raises(StoreUnavailable):
            await s.apply([Put("models", "m1", b"{}")])
        with pytest.raises(StoreUnavailable):
            await s.add_counters({"c": 1}, ttl_ms=1000)

    try:
        run(scenario())
    finally:
        lock.execute("ROLLBACK")
        run(s.close())
