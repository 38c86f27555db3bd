"""RedisStore: shared state for many workers and replicas (``REDIS_URL``).

All keys share one hash tag, ``{<namespace>}`` (default ``{mr}``), so the Lua
script that applies a write touches one slot and works unchanged on Redis
Cluster, and several deployments can share one Redis under different
namespaces. Each kind is a hash of id -> JSON document; the config version is
a counter that the same script bumps and publishes, so other replicas reload
within a round trip (polling stays the fallback).

Every command is bounded by the store timeout and retried once (a pooled
connection may predate a Redis restart); what still fails is StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import (
    BATCH_KEEP_MS,
    ROLLUP_STEP_MS,
    WRITE_KEEP_MS,
    AppendAudit,
    AuditRow,
    Clear,
    ConfigStamp,
    CounterWrite,
    Delete,
    ExpectAbsent,
    ExpectBody,
    ExpectPresent,
    Op,
    PreconditionFailed,
    Put,
    Reservation,
    RollupCell,
    SetEpoch,
    StoreUnavailable,
    lifetimes,
    new_epoch,
)

log = logging.getLogger("model_router.store")

P = ParamSpec("P")
R = TypeVar("R")


def _reachable(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Redis connection failures and timeouts, as StoreUnavailable; and a
    cancellation redis-py dropped, raised again."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        cancels = _cancels()
        try:
            result = await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            _raise_dropped_cancel(cancels, exc)
            raise StoreUnavailable(f"redis: {exc}") from exc
        except Exception as exc:
            _raise_dropped_cancel(cancels, exc)
            raise
        _raise_dropped_cancel(cancels)
        return result

    return call


def _cancels() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _raise_dropped_cancel(cancels_before: int, cause: BaseException | None = None) -> None:
    """redis-py sends each command under `asyncio.wait_for`, which on Python
    3.11 returns the result and drops the caller's cancellation when both
    come at once (CPython gh-86296, fixed in 3.12): 4 in 5 cancels of a task
    looping over commands were lost, so a stopping worker's background tasks
    never ended. A cancel requested during the call and not delivered (the
    call returned, or failed otherwise) is raised here."""
    if _cancels() > cancels_before:
        raise asyncio.CancelledError from cause


# KEYS[1] is the version key, KEYS[2..] the document hashes (and the audit
# sorted set). ARGV[1] is the channel, then four slots per operation: name,
# index into KEYS, id, body. An audit entry's id slot holds how many to keep;
# it is filed under the next sequence number as "<seq> <version> <body>".
APPLY = """
local audit = nil
local function check(op, key, id, body)
  if op == 'absent' then return redis.call('HEXISTS', key, id) == 0 end
  if op == 'present' then return redis.call('HEXISTS', key, id) == 1 end
  if op == 'body' then return redis.call('HGET', key, id) == body end
  return true
end
for i = 2, #ARGV, 4 do
  if not check(ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]) then
    return {0, (i - 2) / 4}
  end
end
for i = 2, #ARGV, 4 do
  local op, key, id = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2]
  if op == 'put' then redis.call('HSET', key, id, ARGV[i + 3])
  elseif op == 'delete' then redis.call('HDEL', key, id)
  elseif op == 'clear' then redis.call('DEL', key)
  elseif op == 'epoch' then redis.call('SET', key, ARGV[i + 3])
  elseif op == 'audit' then audit = {key, tonumber(ARGV[i + 2]), ARGV[i + 3]} end
end
local version = redis.call('INCR', KEYS[1])
if audit then
  local top = redis.call('ZREVRANGE', audit[1], 0, 0, 'WITHSCORES')
  local seq = 1
  if #top > 0 then seq = tonumber(top[2]) + 1 end
  redis.call('ZADD', audit[1], seq, seq .. ' ' .. version .. ' ' .. audit[3])
  redis.call('ZREMRANGEBYRANK', audit[1], 0, -(audit[2] + 1))
end
redis.call('PUBLISH', ARGV[1], version)
return {1, version}
"""

# KEYS[1] holds the writer's last applied write (a key never read when
# ARGV[1] is empty), then the counters. ARGV[1]: the write's id or "", ARGV[2]
# how long to remember it, then each counter's delta and time to live, in
# pairs. The write applied last adds nothing again: its counters are read.
ADD_COUNTERS = """
local totals = {}
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then
  for i = 2, #KEYS do totals[i - 1] = tonumber(redis.call('GET', KEYS[i]) or '0') end
  return totals
end
for i = 2, #KEYS do
  local total = redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2 * i]) end
  totals[i - 1] = total
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return totals
"""

# KEYS: spent and reserved counter of each check, in pairs. ARGV[1] is the
# amount, ARGV[2] the time to live, then the limit of each check.
RESERVE = """
local amount = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  local spent = tonumber(redis.call('GET', KEYS[i]) or '0')
  local reserved = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  if spent + reserved + amount > tonumber(ARGV[2 + (i + 1) / 2]) then
    return {(i - 1) / 2, spent, reserved}
  end
end
for i = 2, #KEYS, 2 do
  redis.call('INCRBY', KEYS[i], amount)
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
return false
"""

# KEYS: counters; ARGV[1] is the time to live, then each counter's value.
CLAIM_COUNTERS = """
local held = {}
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'PX', ARGV[1])
  held[i] = redis.call('GET', KEYS[i])
end
return held
"""

# KEYS[1] is the lease; ARGV: holder, time to live (ms).
HOLD_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# A rollup cell's hash field is its key and metric joined by this.
ROLLUP_SEPARATOR = "\x1d"

OP_NAMES = {
    Put: "put",
    Delete: "delete",
    Clear: "clear",
    ExpectAbsent: "absent",
    ExpectPresent: "present",
    ExpectBody: "body",
    SetEpoch: "epoch",
    AppendAudit: "audit",
}

# KEYS[1] is the batch's id (a key never read when ARGV[1] is empty), then
# one hash per bucket. ARGV[1]: the batch id or "", ARGV[2] how long to keep
# it; then per hash its expiry, its number of fields and field, amount pairs.
# One script: the whole batch lands once or not at all. A field that would
# overflow is skipped and counted (the others still land).
MERGE_ROLLUPS = """
if ARGV[1] ~= '' and not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then
  return -1
end
local failed, i = 0, 3
for k = 2, #KEYS do
  local expires, fields = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, fields do
    local added = redis.pcall('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1])
    if type(added) == 'table' and added.err then failed = failed + 1 end
    i = i + 2
  end
  redis.call('PEXPIREAT', KEYS[k], expires)
end
return failed
"""

# How long the config watcher waits before subscribing again after a failure.
RESUBSCRIBE_S = 0.5


class RedisStore:
    def __init__(self, url: str, namespace: str = "mr", timeout_s: float = 1.0):
        self._prefix = "{" + namespace + "}"
        self._version_key = f"{self._prefix}:config_version"
        self._epoch_key = f"{self._prefix}:config_epoch"
        self._channel = f"{self._prefix}:config"
        self._audit_key = f"{self._prefix}:audit"
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # A command is sent again only when the connection failed (a pooled
            # one Redis closed): after a timeout it may still run, and every
            # write here adds or appends, so sending it again would count twice.
            retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
            # No CLIENT SETINFO on each new connection: it only names the
            # library, and against a hung server redis-py 6's handshake made
            # an admin call wait 1.7-2.1 s, not one timeout (0.3 s in
            # test_a_hung_redis_costs_routing_nothing_and_admin_calls_a_bounded_503).
            lib_name=None,
            lib_version=None,
        )
        self._merge_rollups = self._redis.register_script(MERGE_ROLLUPS)
        self._apply = self._redis.register_script(APPLY)
        self._add_counters = self._redis.register_script(ADD_COUNTERS)
        self._reserve = self._redis.register_script(RESERVE)
        self._claim_counters = self._redis.register_script(CLAIM_COUNTERS)
        self._hold_lease = self._redis.register_script(HOLD_LEASE)
        self._release_lease = self._redis.register_script(RELEASE_LEASE)

    def _doc_key(self, kind: str) -> str:
        return f"{self._prefix}:doc:{kind}"

    @property
    def client(self) -> aioredis.Redis:
        return self._redis

    @_reachable
    async def get(self, kind: str, id: str) -> bytes | None:
        return cast(bytes | None, await self._redis.hget(self._doc_key(kind), id))

    @_reachable
    async def get_all(self, kind: str) -> dict[str, bytes]:
        raw = cast(dict[bytes, bytes], await self._redis.hgetall(self._doc_key(kind)))
        return {k.decode(): v for k, v in raw.items()}

    @_reachable
    async def apply(self, ops: Sequence[Op]) -> int:
        keys = [self._version_key]
        args: list[str | bytes | int] = [self._channel]
        for op in ops:
            if isinstance(op, SetEpoch):
                key, id, body = self._epoch_key, "", op.epoch.encode()
            elif isinstance(op, AppendAudit):
                key, id, body = self._audit_key, str(op.keep), op.body
            else:
                key, id = self._doc_key(op.kind), getattr(op, "id", "")
                body = getattr(op, "body", b"")
            if key not in keys:
                keys.append(key)
            args += [OP_NAMES[type(op)], keys.index(key) + 1, id, body]
        ok, value = await self._apply(keys=keys, args=args)
        if not ok:
            failed = ops[int(value)]
            assert isinstance(failed, ExpectAbsent | ExpectPresent | ExpectBody)
            raise PreconditionFailed(failed)
        return int(value)

    @_reachable
    async def version(self) -> int:
        return int(await self._redis.get(self._version_key) or 0)

    @_reachable
    async def audit(self, before: int | None, count: int) -> list[AuditRow]:
        top = f"({before}" if before is not None else "+inf"
        members = await self._redis.zrevrangebyscore(self._audit_key, top, "-inf", 0, count)
        rows = []
        for member in cast(list[bytes], members):
            seq, version, body = member.split(b" ", 2)
            rows.append((int(seq), int(version), body))
        return rows

    @_reachable
    async def stamp(self) -> ConfigStamp:
        raw = await self._redis.mget(self._epoch_key, self._version_key)
        epoch, version = cast(list[bytes | None], raw)
        return ConfigStamp(epoch.decode() if epoch else None, int(version or 0))

    @_reachable
    async def start_epoch(self) -> str:
        await self._redis.set(self._epoch_key, new_epoch("created"), nx=True)
        epoch = cast(bytes, await self._redis.get(self._epoch_key))
        return epoch.decode()

    async def watch_config(self, changed: Callable[[], None]) -> None:
        cancels = _cancels()
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    changed()  # anything written while we were not listening
                    while True:
                        _raise_dropped_cancel(cancels)
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None:
                            changed()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                _raise_dropped_cancel(cancels, exc)
                log.debug("config subscription lost (%s); subscribing again", exc)
                await asyncio.sleep(RESUBSCRIBE_S)

    @_reachable
    async def add_counters(
        self,
        deltas: Mapping[str, int],
        ttl_ms: int | Mapping[str, int],
        write: CounterWrite | None = None,
    ) -> dict[str, int]:
        names = list(deltas)
        writer, id = write or ("", "")
        keys = [f"{self._prefix}:applied:{writer}"] + [self._counter_key(n) for n in names]
        pairs = zip(deltas.values(), lifetimes(names, ttl_ms), strict=True)
        args: list[str | int] = [id, WRITE_KEEP_MS, *(n for pair in pairs for n in pair)]
        totals = await self._add_counters(keys=keys, args=args)
        return dict(zip(names, map(int, totals), strict=True))

    @_reachable
    async def claim_counters(self, values: Mapping[str, int], ttl_ms: int) -> dict[str, int]:
        names = list(values)
        keys = [self._counter_key(name) for name in names]
        held = await self._claim_counters(keys=keys, args=[ttl_ms, *values.values()])
        return dict(zip(names, map(int, held), strict=True))

    @_reachable
    async def read_counters(self, names: Sequence[str]) -> dict[str, int]:
        if not names:
            return {}
        values = await self._redis.mget([self._counter_key(name) for name in names])
        return {name: int(v or 0) for name, v in zip(names, values, strict=True)}

    @_reachable
    async def push_recent(self, items: Sequence[bytes], keep: int) -> None:
        key = f"{self._prefix}:recent"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, *items)  # pushed oldest first, so the newest ends at the head
            pipe.ltrim(key, 0, keep - 1)
            await pipe.execute()

    @_reachable
    async def recent(self, limit: int) -> list[bytes]:
        return cast(list[bytes], await self._redis.lrange(f"{self._prefix}:recent", 0, limit - 1))

    def _counter_key(self, name: str) -> str:
        return f"{self._prefix}:counter:{name}"

    @_reachable
    async def reserve(
        self, checks: Sequence[Reservation], amount: int, ttl_ms: int
    ) -> tuple[int, int, int] | None:
        keys = [self._counter_key(n) for c in checks for n in (c.spent, c.reserved)]
        limits = [c.limit for c in checks]
        refused = await self._reserve(keys=keys, args=[amount, ttl_ms, *limits])
        return None if refused is None else (int(refused[0]), int(refused[1]), int(refused[2]))

    @_reachable
    async def put_state(self, kind: str, items: Mapping[str, bytes]) -> None:
        await self._redis.hset(f"{self._prefix}:state:{kind}", mapping=dict(items))

    @_reachable
    async def get_state(self, kind: str) -> dict[str, bytes]:
        raw = cast(dict[bytes, bytes], await self._redis.hgetall(f"{self._prefix}:state:{kind}"))
        return {k.decode(): v for k, v in raw.items()}

    @_reachable
    async def delete_state(self, kind: str, ids: Collection[str]) -> None:
        if ids:
            await self._redis.hdel(f"{self._prefix}:state:{kind}", *ids)

    @_reachable
    async def hold_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        key = f"{self._prefix}:lease:{name}"
        return bool(await self._hold_lease(keys=[key], args=[holder, ttl_ms]))

    @_reachable
    async def release_lease(self, name: str, holder: str) -> None:
        await self._release_lease(keys=[f"{self._prefix}:lease:{name}"], args=[holder])

    @_reachable
    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()

    def _rollup_key(self, resolution: str, start_ms: int) -> str:
        return f"{self._prefix}:rollup:{resolution}:{start_ms}"

    @_reachable
    async def merge_rollups(
        self, cells: Mapping[RollupCell, int], keep_ms: Mapping[str, int], batch: str = ""
    ) -> None:
        # One hash per bucket start, expiring when its retention ends: pruning
        # is Redis's own expiry. HINCRBY adds, so drains of any number of
        # workers and replicas add up in any order.
        by_key: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
        for (resolution, start_ms, key, metric), value in cells.items():
            by_key[resolution, start_ms][key + ROLLUP_SEPARATOR + metric] = value
        now = int(time.time() * 1000)
        keys = [self._batch_key(batch)]
        args: list[str | int] = [batch, BATCH_KEEP_MS]
        for (resolution, start_ms), fields in by_key.items():
            expires = start_ms + keep_ms[resolution]
            if expires <= now:
                continue
            keys.append(self._rollup_key(resolution, start_ms))
            args += [expires, len(fields)]
            for field, value in fields.items():
                args += [field, value]
        failed = await self._merge_rollups(keys=keys, args=args)
        if failed > 0:
            log.error("rollups: %d of the merged cells would overflow and were not added", failed)

    def _batch_key(self, batch: str) -> str:
        return f"{self._prefix}:merged:{batch}"

    @_reachable
    async def read_rollups(
        self, resolution: str, from_ms: int, to_ms: int
    ) -> list[tuple[int, str, str, int]]:
        step = ROLLUP_STEP_MS[resolution]
        starts = range(-(-from_ms // step) * step, to_ms, step)
        async with self._redis.pipeline(transaction=False) as pipe:
            for start_ms in starts:
                pipe.hgetall(self._rollup_key(resolution, start_ms))
            hashes = cast(list[dict[bytes, bytes]], await pipe.execute())
        cells = []
        for start_ms, fields in zip(starts, hashes, strict=True):
            for field, value in fields.items():
                key, _, metric = field.decode().rpartition(ROLLUP_SEPARATOR)
                cells.append((start_ms, key, metric, int(value)))
        return cells
