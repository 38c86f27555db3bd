"""Prometheus metrics, correct under several Granian workers.

`model-router serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory
before the workers start; each worker then writes its samples there and
/metrics (served by any worker) merges them all. Without the variable (one
process, as in tests of the app object) the default registry is used.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

REQUESTS = Counter(
    "model_router_requests", "Routed requests by model and HTTP status", ["model", "status"]
)
REQUEST_DURATION = Histogram(
    "model_router_request_duration_seconds",
    "Time to answer a routed request",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "model_router_upstream_duration_seconds",
    "Time spent waiting on model providers",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "model_router_overhead_seconds",
    "The router's own time per request: total minus upstream",
    buckets=OVERHEAD_BUCKETS,
)
REJECTED = Counter(
    "model_router_rejected",
    "Requests the router itself refused, by status and error type",
    ["status", "type"],
)
DOOR_CALLS = Counter(
    "model_router_door_calls",
    "Routed calls the front door served itself (MODEL_ROUTER_DOOR=on), by HTTP status",
    ["status"],
)
ATTEMPTS = Counter(
    "model_router_upstream_attempts",
    "Upstream attempts by model, endpoint and outcome",
    ["model", "endpoint", "outcome"],
)
TOKENS = Counter(
    "model_router_tokens", "Tokens by model and kind (prompt, completion)", ["model", "kind"]
)
COST = Counter("model_router_cost_usd", "Spend in USD by model", ["model"])
HEALTH_SCORE = Gauge(
    "model_router_model_health_score",
    "Health x success rate x latency factor, 0..1",
    ["model"],
    multiprocess_mode="mostrecent",
)
BREAKER_STATE = Gauge(
    "model_router_breaker_state",
    "Each endpoint's circuit breaker: 0 closed, 1 half-open, 2 open",
    ["model", "endpoint"],
    multiprocess_mode="mostrecent",
)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
RULE_MATCHES = Gauge(
    "model_router_routing_rule_matches",
    "Decisions each routing rule has matched",
    ["rule", "name"],
    multiprocess_mode="sum",
)
STORE_RESET = Gauge(
    "model_router_store_reset",
    "1 while the store holds a reset config (version backwards, or an epoch no import "
    "wrote) and the router keeps serving its last config; 0 otherwise",
    multiprocess_mode="mostrecent",
)


# What the door samples of the calls it accounts itself (core_rs/src/metric_tally.rs:
# the same metrics, in this order, with these buckets).
DOOR_COUNTERS = (ATTEMPTS, REQUESTS, DOOR_CALLS, TOKENS, COST)
DOOR_HISTOGRAMS = (REQUEST_DURATION, OVERHEAD, UPSTREAM_DURATION)
DOOR_BUCKETS = tuple(list(h._upper_bounds) for h in DOOR_HISTOGRAMS)


# Read at scrape time from the fleet's shared figures (api/health.py), so they
# are the same whichever worker answers and vanish with what they describe.
OBSERVED_STATUS = {"healthy": 0, "degraded": 1, "unhealthy": 2, "unknown": 3}


def endpoint_observed(rows: Iterable[tuple[str, str, str]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "model_router_endpoint_observed_status",
        "Each endpoint's observed health (traffic, breaker and active probes combined): "
        "0 healthy, 1 degraded, 2 unhealthy, 3 unknown",
        labels=["model", "endpoint"],
    )
    for model, endpoint, status in rows:
        family.add_metric([model, endpoint], OBSERVED_STATUS[status])
    return family


def workspace_spend(rows: Iterable[tuple[str, str, float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "model_router_workspace_spend_usd",
        "Spend of each configured workspace in the current budget period (daily, "
        "weekly, monthly), fleet-wide",
        labels=["workspace", "period"],
    )
    for workspace, period, usd in rows:
        family.add_metric([workspace, period], usd)
    return family


class _Families:
    """A collector of families computed before the scrape."""

    def __init__(self, families: Sequence[Metric]):
        self.families = families

    def collect(self) -> Sequence[Metric]:
        return self.families


def render(fleet: Sequence[Metric] = ()) -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest()
    if fleet:
        extra = CollectorRegistry(auto_describe=False)
        extra.register(_Families(fleet))  # type: ignore[arg-type]
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


class MetricBatch:
    """Samples gathered on the request path and written to the Prometheus
    metrics once per flush: a multiprocess sample write costs microseconds,
    an entry here a dict update."""

    def __init__(self) -> None:
        self._counts: dict[tuple[Counter, tuple[str, ...]], float] = {}
        self._observed: dict[tuple[Histogram, tuple[str, ...]], list[float]] = {}

    def inc(self, counter: Counter, labels: tuple[str, ...], amount: float = 1.0) -> None:
        key = (counter, labels)
        self._counts[key] = self._counts.get(key, 0.0) + amount

    def observe(self, histogram: Histogram, labels: tuple[str, ...], value: float) -> None:
        key = (histogram, labels)
        slots = self._observed.get(key)
        if slots is None:
            # One count per bucket (not cumulative, as Histogram keeps them), then the sum.
            slots = self._observed[key] = [0.0] * (len(histogram._upper_bounds) + 1)
        slots[bisect_left(histogram._upper_bounds, value)] += 1
        slots[-1] += value

    def merge(
        self,
        counts: Sequence[Mapping[tuple[str, ...], float]],
        observed: Sequence[Mapping[tuple[str, ...], list[float]]],
    ) -> None:
        """Add the door's tally (`Door.take`): `DOOR_COUNTERS`' amounts and
        `DOOR_HISTOGRAMS`' slots, per label values; all of it, or nothing
        (ValueError) when its shape is not theirs."""
        if (len(counts), len(observed)) != (len(DOOR_COUNTERS), len(DOOR_HISTOGRAMS)):
            raise ValueError(f"a door tally of {len(counts)} counters, {len(observed)} histograms")
        for counter, amounts in zip(DOOR_COUNTERS, counts, strict=True):
            for labels, amount in amounts.items():
                self.inc(counter, labels, amount)
        for histogram, by_labels in zip(DOOR_HISTOGRAMS, observed, strict=True):
            for labels, slots in by_labels.items():
                mine = self._observed.setdefault((histogram, labels), [0.0] * len(slots))
                for i, n in enumerate(slots):
                    mine[i] += n

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for (counter, labels), amount in counts.items():
            (counter.labels(*labels) if labels else counter).inc(amount)
        for (histogram, labels), slots in observed.items():
            child = histogram.labels(*labels) if labels else histogram
            for bucket, n in zip(child._buckets, slots, strict=False):
                if n:
                    bucket.inc(n)
            child._sum.inc(slots[-1])
