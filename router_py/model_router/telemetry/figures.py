"""Reading the rollups: the store's cells, summed into the figures analytics
and the health overview answer with (counts exact, percentiles from the
merged sketches, within 1%)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import msgspec

from .. import types as t
from .._core import sketch_quantiles
from ..store import Store
from .rollups import COUNTERS, DIMENSIONS, KEY_SEPARATOR, LATENCY_BIN, TTFT_BIN

NANOS_PER_USD = 1_000_000_000
# An attempt whose caller left: no verdict on its endpoint's health.
NO_VERDICT = "cancelled"
QUANTILES = [0.5, 0.95, 0.99]

K = TypeVar("K", bound=Hashable)
Dims = dict[str, str]
Cell = tuple[int, str, str, int]  # bucket start ms, key, metric, value


def _percentiles(bins: Counter[int]) -> t.Percentiles:
    p50, p95, p99 = sketch_quantiles(list(bins.items()), QUANTILES)
    return t.Percentiles(
        p50=None if p50 is None else round(p50, 3),
        p95=None if p95 is None else round(p95, 3),
        p99=None if p99 is None else round(p99, 3),
    )


@dataclass
class Tally:
    """The sum of some rollup cells."""

    counters: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # attempts by outcome
    latency: Counter[int] = field(default_factory=Counter)
    ttft: Counter[int] = field(default_factory=Counter)

    def add(self, outcome: str, metric: str, value: int) -> None:
        if metric in COUNTERS:
            self.counters[metric] += value
            if metric == "attempts":
                self.outcomes[outcome] += value
        elif metric.startswith(LATENCY_BIN):
            self.latency[int(metric[1:])] += value
        elif metric.startswith(TTFT_BIN):
            self.ttft[int(metric[1:])] += value

    def observed(self, window_seconds: int) -> t.Observed:
        attempts = self.counters["attempts"]
        judged = attempts - self.outcomes[NO_VERDICT]
        rate = self.outcomes["success"] / judged if judged else None
        status = observed_status(rate)
        return t.Observed(
            status=status,
            reasons=[] if rate is None or status == "healthy" else [f"success rate {rate:.1%}"],
            window_seconds=window_seconds,
            attempts=attempts,
            success_rate=rate,
            latency_ms=_percentiles(self.latency),
            requests_per_minute=round(self.counters["requests"] * 60 / window_seconds, 3),
        )

    def figures(self) -> t.OutcomeFigures:
        c = self.counters
        attempts, successes = c["attempts"], self.outcomes["success"]
        tokens = c["tokens_in"] + c["tokens_out"]
        cost = c["cost_nanos"]
        return t.OutcomeFigures(
            requests=c["requests"],
            attempts=attempts,
            successes=successes,
            success_rate=successes / attempts if attempts else None,
            errors={k: n for k, n in sorted(self.outcomes.items()) if k != "success" and n},
            latency_ms=_percentiles(self.latency),
            ttft_ms=_percentiles(self.ttft),
            tokens_in=c["tokens_in"],
            tokens_out=c["tokens_out"],
            cost_usd=cost / NANOS_PER_USD,
            cost_nanos=cost,
            cost_per_1k_tokens_usd=cost / NANOS_PER_USD / tokens * 1000 if tokens else None,
            failovers_in=c["failovers_in"],
            failovers_out=c["failovers_out"],
        )


def observed_status(success_rate: float | None) -> t.ObservedStatus:
    """No traffic says nothing; 95% and 50% success are the lines between."""
    if success_rate is None:
        return "unknown"
    if success_rate >= 0.95:
        return "healthy"
    return "degraded" if success_rate >= 0.5 else "unhealthy"


def dimensions(key: str) -> Dims:
    """A stored key's dimensions by name. A key written before the last
    dimensions were added reads them as ""; one written with more than this
    version knows (a newer replica's) is summed over the ones it lacks."""
    parts = key.split(KEY_SEPARATOR)
    parts += [""] * (len(DIMENSIONS) - len(parts))
    return dict(zip(DIMENSIONS, parts, strict=False))


def tally(
    cells: Iterable[Cell],
    group: Callable[[int, Dims], K | None],
) -> dict[K, Tally]:
    """Sum cells by `group(bucket start, dimensions)`; None leaves a cell out."""
    tallies: dict[K, Tally] = {}
    dims_of: dict[str, Dims] = {}
    for start, key, metric, value in cells:
        dims = dims_of.get(key)
        if dims is None:
            dims = dims_of[key] = dimensions(key)
        group_key = group(start, dims)
        if group_key is None:
            continue
        bucket = tallies.get(group_key)
        if bucket is None:
            bucket = tallies[group_key] = Tally()
        bucket.add(dims["outcome"], metric, value)
    return tallies


# The health overview's "now": the current minute and the four before it.
RECENT_MINUTES = 5
MINUTE_MS = 60_000


async def recent(store: Store, now_ms: int) -> tuple[list[Cell], int]:
    """The minute cells of the last few minutes, and the seconds they span."""
    from_ms = now_ms - now_ms % MINUTE_MS - (RECENT_MINUTES - 1) * MINUTE_MS
    return await store.read_rollups("m", from_ms, now_ms + 1), (now_ms - from_ms) // 1000 or 1


# Worst first: a combined status is the worst of its signals.
_SEVERITY: dict[t.ObservedStatus, int] = {"unhealthy": 0, "degraded": 1, "healthy": 2, "unknown": 3}


def _worst(a: t.ObservedStatus, b: t.ObservedStatus) -> t.ObservedStatus:
    if "unknown" in (a, b):  # no traffic says nothing: the other signal decides
        return b if a == "unknown" else a
    return min(a, b, key=_SEVERITY.__getitem__)


def endpoint_observed(
    outcomes: t.Observed, breaker: t.BreakerView | None, probes: t.ProbeVerdict | None
) -> t.Observed:
    """Passive health (outcomes, breaker) and active probes, as one status:
    the worst of them. The engine skips what this calls unhealthy (an open
    breaker, or one the probes hold open)."""
    status, reasons = outcomes.status, list(outcomes.reasons)
    if probes is not None:
        status = _worst(status, probes.status)
        if probes.status == "unhealthy":
            reasons.append(f"active probes failing since {probes.since}")
    if breaker is not None and breaker.state != "closed":
        status = _worst(status, "unhealthy" if breaker.state == "open" else "degraded")
        reasons.append(f"breaker {breaker.state.replace('_', '-')}")
    return msgspec.structs.replace(outcomes, status=status, reasons=reasons)


def model_observed(outcomes: t.Observed, endpoints: list[t.EndpointOverview]) -> t.Observed:
    """A model's outcomes, lowered by its endpoints: unhealthy when none can
    take traffic, degraded when some cannot."""
    down = [e.endpoint_id for e in endpoints if e.observed.status == "unhealthy"]
    status, reasons = outcomes.status, list(outcomes.reasons)
    if down and len(down) == len(endpoints):
        status = "unhealthy"
        reasons.append("every endpoint unhealthy")
    elif down:
        status = _worst(status, "degraded")
        reasons.append(f"endpoints unhealthy: {', '.join(down)}")
    elif endpoints and all(e.observed.status == "healthy" for e in endpoints):
        status = _worst(status, "healthy")  # no traffic: the probes' word
    return msgspec.structs.replace(outcomes, status=status, reasons=reasons)


def override_applies(health: t.ModelHealth, now_ms: int) -> bool:
    return health.expires_at is None or epoch_ms(health.expires_at) > now_ms


def epoch_ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp() * 1000)


def reported(health: t.ModelHealth | None, now_ms: int) -> t.Reported | None:
    if health is None:
        return None
    return t.Reported(
        status=health.status,
        last_checked=health.last_checked,
        expires_at=health.expires_at,
        expired=not override_applies(health, now_ms),
    )
