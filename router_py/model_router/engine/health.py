"""Active health monitoring: every endpoint with a `healthCheckUrl` is probed
on an interval, once per deployment, and every worker takes what the probes
conclude out of rotation (or puts it back).

One worker in the whole deployment probes: the holder of a lease in the store
(renewed each second, free again three seconds after its holder stops; taken
by no one while no endpoint has a health URL). Probes have their own
connection pool, so traffic holding the provider's connections does not fail
them. It
GETs each health URL with the provider's key every interval (minus up to 20%
jitter, so probes of many endpoints spread out), each probe bounded by its own
timeout. K failures in a row make an endpoint unhealthy, J successes in a row
healthy again; a probe that disagrees with the verdict is confirmed by the
next ones a quarter second apart, so a verdict changes within about one
interval of the endpoint changing. The prober writes each result, with the
URL it probed, to the store's shared state, where the next holder picks the
counts up, and deletes the results of endpoints it no longer probes.

Every worker reads that state on the breaker beat and holds the breaker of
each unhealthy endpoint open (the engine then skips it, as it skips any open
breaker), renewing the hold while the verdict stands and closing the breaker
when it clears. A worker that cannot read the store stops renewing: the hold
runs out and the breaker's own half-open probes take over.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import msgspec

from .. import types as t
from ..catalog import iso
from ..settings import Settings
from ..store import Lease, Store, StoreUnavailable
from .breakers import health_check_request
from .live import LiveConfig
from .secrets import Redactor
from .upstream import Deadlines, UpstreamClient, UpstreamRequest

log = logging.getLogger("model_router.health")

STATE_KIND = "probes"
LEASE = "health-prober"
LEASE_TTL_MS = 3000
LEASE_BEAT_MS = 1000
# How often the prober looks for probes that are due.
TICK_MS = 50
JITTER = 0.2
CONFIRM_MS = 250
# The shortest hold of an unhealthy endpoint's breaker (renewed at half).
MIN_HOLD_MS = 2000
# Connections per origin for probes: one probe per endpoint is in flight at
# most, so this only bounds many endpoints on one origin.
PROBE_POOL = 16


def judge(
    before: t.ProbeVerdict | None,
    result: t.ProbeResult,
    failures_to_down: int,
    successes_to_up: int,
) -> t.ProbeVerdict:
    """The verdict after one more result: K failures in a row take an
    endpoint out, J successes in a row bring it back."""
    failures = 0 if result.ok else (before.consecutive_failures if before else 0) + 1
    successes = (before.consecutive_successes if before else 0) + 1 if result.ok else 0
    status = before.status if before else "healthy"  # presumed healthy until K failures
    if status == "healthy" and failures >= failures_to_down:
        status = "unhealthy"
    elif status == "unhealthy" and successes >= successes_to_up:
        status = "healthy"
    since = result.at if before is None or status != before.status else before.since
    return t.ProbeVerdict(
        status=status,
        consecutive_failures=failures,
        consecutive_successes=successes,
        since=since,
    )


class HealthMonitor:
    def __init__(self, live: LiveConfig, store: Store, settings: Settings, redactor: Redactor):
        self.live = live
        self.store = store
        self.redactor = redactor  # a probe's error is shown to any reader of the overview
        # Probes have a pool of their own: sharing the traffic's, a probe of a
        # busy endpoint would wait for a slot, time out and count as a failure.
        self.client = UpstreamClient(PROBE_POOL, settings.max_upstream_body_bytes)
        self.interval_ms = settings.health_probe_interval_ms
        self.timeout_ms = settings.health_probe_timeout_ms
        self.connect_ms = min(settings.connect_timeout_ms, self.timeout_ms)
        self.failures_to_down = settings.health_failures_to_down
        self.successes_to_up = settings.health_successes_to_up
        self.hold_ms = max(self.interval_ms, MIN_HOLD_MS)
        self.lease = Lease(store, LEASE, LEASE_TTL_MS)
        # Every worker: the last shared result of each endpoint (for the overview).
        self.results: dict[str, t.ActiveHealth] = {}
        self._held: set[str] = set()  # endpoints whose breaker we hold open
        # The prober only: when each endpoint is due (loop clock), and the probes under way.
        self.leading = False
        self._due: dict[str, float] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    # --- every worker ----------------------------------------------------------

    async def sync(self) -> None:
        """Adopt the shared results: hold unhealthy endpoints out of rotation."""
        probed = self._probed_urls()
        if not self._held and not probed:
            self.results = {}
            return  # nothing probed: spare the store the read
        raw = await self.store.get_state(STATE_KIND)
        shared = {id: msgspec.json.decode(b, type=t.ActiveHealth) for id, b in raw.items()}
        # A verdict on an endpoint no longer probed, or on another URL than its
        # own now (deleted and created again), is not its verdict: the prober drops it.
        stale = {id for id, r in shared.items() if probed.get(id) != r.url}
        if self.leading and stale:
            await self.store.delete_state(STATE_KIND, stale)
        # The newer of the store's result and ours: the prober's own may not
        # have landed when the store was read, and its counts go on from it.
        results = {}
        for id, url in probed.items():
            known = [r for r in (shared.get(id), self.results.get(id)) if r and r.url == url]
            if known:
                results[id] = max(known, key=lambda r: r.last_probe.at)
        self.results = results
        now_ms = time.time() * 1000
        engine = self.live.engine
        down = {
            endpoint_id
            for endpoint_id, result in self.results.items()
            if result.verdict.status == "unhealthy"
        }
        for endpoint_id in down:
            state = engine.breaker_state(endpoint_id)
            if state is None:
                continue
            name, open_until = state
            if name != "open" or open_until is None or open_until - now_ms < self.hold_ms / 2:
                engine.adopt_breaker_transition(endpoint_id, int(now_ms + self.hold_ms))
        for endpoint_id in self._held - down:
            engine.adopt_breaker_transition(endpoint_id, None)
        self._held = down

    def _probed_urls(self) -> dict[str, str]:
        """The health URL of each endpoint that has one."""
        return {
            id: e.health_check_url
            for id, e in self.live.endpoints.items()
            if e.health_check_url is not None
        }

    # --- the elected prober ----------------------------------------------------

    async def lead(self) -> None:
        """Take or renew the prober's lease (a beat); probe while we hold it.
        With no endpoint to probe, nobody holds it (and the store is spared the write)."""
        if not self._probed_urls():
            if self.leading:
                await self._stand_down()
            return
        try:
            leading = await self.lease.hold()
        except Exception:
            self._step_down()  # another replica may take over when our lease lapses
            raise
        if leading and not self.leading:
            log.info("this worker runs the active health probes")
        elif self.leading and not leading:
            log.warning("another worker took over the active health probes")
            self._step_down()
        self.leading = leading

    def _step_down(self) -> None:
        self.leading = False
        self._due.clear()
        for task in self._running.values():
            task.cancel()
        self._running.clear()

    async def probe_due(self) -> None:
        """Start the probes that are due (a beat; nothing unless we lead)."""
        if not self.leading:
            return
        now = asyncio.get_running_loop().time()
        probed = self._probed_urls()
        for endpoint_id in self._due.keys() - probed.keys():
            del self._due[endpoint_id]  # removed, or its healthCheckUrl was
        for endpoint_id in probed:
            due = self._due.setdefault(endpoint_id, now + self._next_s())
            if due <= now and endpoint_id not in self._running:
                self._running[endpoint_id] = asyncio.create_task(self._probe_once(endpoint_id))

    def _next_s(self) -> float:
        return self.interval_ms * random.uniform(1 - JITTER, 1) / 1000

    async def _probe_once(self, endpoint_id: str) -> None:
        try:
            await self.probe(endpoint_id)
        except Exception:
            log.exception("active probe of %s failed", endpoint_id)
        finally:
            self._running.pop(endpoint_id, None)

    async def probe(self, endpoint_id: str) -> None:
        endpoint = self.live.endpoints.get(endpoint_id)
        model = self.live.models.get(endpoint.model_id) if endpoint else None
        if endpoint is None or model is None or endpoint.health_check_url is None:
            return
        url = endpoint.health_check_url
        result = await self._send(health_check_request(model, endpoint, url))
        previous = self.results.get(endpoint_id)
        if previous is not None and previous.url != url:
            previous = None  # a verdict on the URL it had before
        verdict = judge(
            previous.verdict if previous else None,
            result,
            self.failures_to_down,
            self.successes_to_up,
        )
        agrees = (verdict.status == "healthy") == result.ok
        loop = asyncio.get_running_loop()
        self._due[endpoint_id] = loop.time() + (self._next_s() if agrees else CONFIRM_MS / 1000)
        shared = t.ActiveHealth(verdict=verdict, last_probe=result, url=url)
        self.results[endpoint_id] = shared
        if verdict.status != (previous.verdict.status if previous else "healthy"):
            self._report(endpoint.model_id, endpoint_id, verdict, result)
        try:
            await self.store.put_state(STATE_KIND, {endpoint_id: msgspec.json.encode(shared)})
        except StoreUnavailable as exc:
            log.warning("probe result of %s not shared: %s", endpoint_id, exc)

    async def _send(self, request: UpstreamRequest) -> t.ProbeResult:
        at, started = iso(int(time.time() * 1000)), time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            deadlines = Deadlines.within(self.timeout_ms / 1000, self.connect_ms / 1000)
            status = (await self.client.send(request, deadlines)).status
        except Exception as exc:  # refused, unreachable, timed out
            error = self.redactor.redact(f"{type(exc).__name__}: {exc}")[:300]
        ok = status is not None and 200 <= status < 400
        if status is not None and not ok:
            error = f"status {status}"
        latency = round((time.perf_counter() - started) * 1000, 3)
        return t.ProbeResult(at=at, ok=ok, status_code=status, error=error, latency_ms=latency)

    @staticmethod
    def _report(
        model_id: str, endpoint_id: str, verdict: t.ProbeVerdict, result: t.ProbeResult
    ) -> None:
        extra = {"modelId": model_id, "endpointId": endpoint_id, "latency": result.latency_ms}
        if verdict.status == "unhealthy":
            log.warning(
                "endpoint unhealthy: %d probes failed in a row (%s); out of rotation",
                verdict.consecutive_failures,
                result.error,
                extra=extra,
            )
        else:
            log.info("endpoint healthy again: back in rotation", extra=extra)

    async def _stand_down(self) -> None:
        """Nothing left to probe: drop every verdict and free the lease."""
        self._step_down()
        await self.store.delete_state(STATE_KIND, await self.store.get_state(STATE_KIND))
        self.results = {}
        await self.lease.release()

    async def stop(self) -> None:
        leading = self.leading
        self._step_down()
        await self.client.close()
        if leading:
            await self.lease.release()
