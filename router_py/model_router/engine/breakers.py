"""Circuit breakers shared by every worker and replica, and the router's own
probes of half-open endpoints.

A worker whose breaker opens or closes writes the transition to the store's
shared state; every worker reads that state on a short beat and adopts what
the others decided, so a hung provider that one worker found out is skipped
by all of them within a beat instead of being found out again by each.

A half-open endpoint is never tested with a caller's request (the engine
runs with active probes): the router sends its own probe — a GET of the
endpoint's `healthCheckUrl`, else the smallest request of its model's
operation — and the outcome closes or re-opens the breaker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import msgspec

from .. import types as t
from .._core import FAILOVER_OUTCOMES, answer_outcome
from ..store import Store
from .exchanges import Operation
from .executor import Timeouts
from .live import LiveConfig
from .providers import ADAPTERS
from .upstream import Deadlines, UpstreamClient, UpstreamRequest

log = logging.getLogger("model_router.breakers")

STATE_KIND = "breakers"


class SharedTransition(msgspec.Struct, rename="camel"):
    open_until: int | None  # ms since the epoch; None: closed
    at: float  # when it happened, ms since the epoch
    by: str  # the worker that made it


class BreakerSync:
    def __init__(self, live: LiveConfig, store: Store):
        self.live = live
        self.store = store
        self.me = f"{os.getpid()}-{id(self):x}"
        self._unsent: dict[str, bytes] = {}  # kept until the store takes them
        self._seen: dict[str, float] = {}  # endpoint id -> time of the last adopted entry

    async def sync(self) -> None:
        now_ms = time.time() * 1000
        for endpoint_id, open_until in self.live.engine.take_breaker_transitions():
            entry = SharedTransition(open_until, now_ms, self.me)
            self._unsent[endpoint_id] = msgspec.json.encode(entry)
            self._seen[endpoint_id] = now_ms
        if self._unsent:
            await self.store.put_state(STATE_KIND, self._unsent)
            self._unsent = {}
        for endpoint_id, raw in (await self.store.get_state(STATE_KIND)).items():
            entry = msgspec.json.decode(raw, type=SharedTransition)
            if entry.by == self.me or entry.at <= self._seen.get(endpoint_id, 0.0):
                continue
            self._seen[endpoint_id] = entry.at
            if entry.open_until is not None and entry.open_until <= now_ms:
                continue  # an open that has run out tells nothing
            self.live.engine.adopt_breaker_transition(endpoint_id, entry.open_until)


def probe_body(model: t.SnapshotModel) -> tuple[Operation, dict[str, Any]]:
    """The smallest request of the model's operation."""
    if model.model_type == "embedding":
        return Operation.EMBEDDINGS, {"input": "ping"}
    if model.model_type == "completion":
        return Operation.COMPLETIONS, {"prompt": "ping", "max_tokens": 1}
    return Operation.CHAT, {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


def health_check_request(model: t.SnapshotModel, endpoint: t.Endpoint, url: str) -> UpstreamRequest:
    """A GET of the endpoint's health URL, with the provider's key."""
    return UpstreamRequest(url, ADAPTERS[model.provider].headers(endpoint, {}), b"", "GET")


class Prober:
    def __init__(self, live: LiveConfig, client: UpstreamClient, timeouts: Timeouts):
        self.live = live
        self.client = client
        self.timeouts = timeouts
        self._running: set[asyncio.Task[None]] = set()

    async def probe_due(self) -> None:
        for model_id, endpoint_id in self.live.engine.due_probes():
            task = asyncio.create_task(self.probe(model_id, endpoint_id))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _request(self, model: t.SnapshotModel, endpoint: t.Endpoint) -> UpstreamRequest:
        if endpoint.health_check_url:
            return health_check_request(model, endpoint, endpoint.health_check_url)
        operation, body = probe_body(model)
        raw = msgspec.json.encode(body)
        return ADAPTERS[model.provider].prepare(operation, model, endpoint, raw, body, {})[1]

    async def probe(self, model_id: str, endpoint_id: str) -> None:
        model, endpoint = self.live.models.get(model_id), self.live.endpoints.get(endpoint_id)
        if model is None or endpoint is None:
            return  # gone from the config meanwhile
        started_ms, started = int(time.time() * 1000), time.perf_counter()
        timeouts = self.timeouts.of(endpoint)
        error = None
        try:
            deadlines = Deadlines.within(
                timeouts.attempt_ms / 1000,
                timeouts.connect_ms / 1000,
                timeouts.first_byte_ms / 1000,
            )
            response = await self.client.send(self._request(model, endpoint), deadlines)
            # Any answer but overload or a refused key: the endpoint is back.
            if answer_outcome(response.status) in FAILOVER_OUTCOMES:
                error = f"status {response.status}"
        except Exception as exc:  # refused, unreachable, timed out: not back
            error = f"{type(exc).__name__}: {exc}"
        latency = (time.perf_counter() - started) * 1000
        self.live.engine.record(
            model_id, endpoint_id, error is None, latency, started_ms=started_ms
        )
        extra = {"modelId": model_id, "endpointId": endpoint_id, "latency": round(latency, 3)}
        if error is None:
            log.info("probe succeeded: breaker closed", extra=extra)
        else:
            log.warning("probe failed (%s): breaker stays open", error, extra=extra)

    async def stop(self) -> None:
        for task in list(self._running):
            task.cancel()
