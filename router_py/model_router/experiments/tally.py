"""Outcome accumulators of canaries and experiments, shared by every worker
and replica through the store.

Why not the analytics rollups: those are keyed in the Rust core by model,
endpoint, workspace, agent type, rule and outcome, per minute; a test needs
per arm (experiment or canary, variant) counts, sums and sums of squares over
its own window (a canary step starts at any ms). So each arm has its own
cells in the store's rollup table under the "w" (window) resolution, bucket
= the window's start: requests, successes, the sum and sum of squares of
latency (successes), cost and feedback, and the latency sketch bins (the
same DDSketch mapping as the analytics rollups, so p95 is read by the same
code). Each worker adds up its requests' cells in memory, after the response
(off the request path), and merges them into the store once a second; the
store adds, so any number of workers and replicas sum to exact totals.

Sums are integers (the store adds integers): latency in µs, cost in
nano-dollars, feedback in thousandths. Squares are in coarser units, so that
an arm's total stays far inside the store's signed 64-bit integers (9.2e18)
for any plausible traffic: latency in (0.1 ms)² (a 60 s answer adds 3.6e11:
25 million of them per window), cost in (10 µUSD)² = 1e-10 USD² (a $3
request adds 9e10: 100 million of them), feedback in thousandths² / 1000
(a score is at most 1,000 in size, adding at most 1e9). Each square is
rounded to its unit, an error of at most half a unit per sample that
averages out: variances are exact to a small fraction of a unit.

Experiments that randomise users (`assignment: "user"`) are analysed per
user (stats.delta_method), which needs each user's own totals: their sums
of squares and products are not sums of per-request figures. So each user's
totals are cells too, under the "u" resolution (bucket = the window's start,
key = the arm, metric = "{user}:{field}", the user a 48-bit hash: no user id
is stored), merged in the same batch as the arm's cells (one atomic store
write: the two always agree), kept as long, and summed, squared and
multiplied at read time in Python's exact integers.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import types as t
from .._core import sketch_quantiles
from ..store import Store
from ..store.base import RollupCell
from ..store.merges import MergeQueue
from .stats import Summary, UnitSummary

if TYPE_CHECKING:
    from .routing import Arm

log = logging.getLogger("model_router.experiments")

WINDOW = "w"
REQUESTS, SUCCESSES = "n", "ok"
LATENCY_SUM, LATENCY_SQUARES = "ls", "lq"
COST_SUM, COST_SQUARES = "cs", "cq"
FEEDBACK_N, FEEDBACK_SUM, FEEDBACK_SQUARES = "fn", "fs", "fq"
LATENCY_BIN = "b"  # a latency sketch bin: "b{index}"
LATENCY_SQUARE_US2 = 10_000  # (0.1 ms)² in µs²
COST_SQUARE_NANO2 = 10**8  # (10 µUSD)² in nano-USD²
FEEDBACK_SQUARE_UNIT = 1000  # in thousandths²
KEEP_MS = {WINDOW: 90 * 86_400_000, "u": 90 * 86_400_000}
# An experiment's request -> variant (index + 1), for feedback: kept this
# long, and only for experiments that use feedback.
ASSIGNMENT_TTL_MS = 7 * 86_400_000
MAX_PENDING_CELLS = 100_000
MAX_PENDING_ASSIGNMENTS = 100_000

# Per user (assignment "user"): each user's totals in the arm, under the
# USERS resolution: requests, successes, latency of successes (µs), cost
# (nano-USD), feedback scores and their sum (thousandths).
USERS = "u"
U_REQUESTS, U_SUCCESSES, U_LATENCY, U_COST, U_FEEDBACK_N, U_FEEDBACK = "r", "s", "L", "C", "f", "F"
# Each metric as a ratio of a user's totals: (denominator, numerator).
UNIT_PAIRS: dict[str, tuple[str, str]] = {
    "successRate": (U_REQUESTS, U_SUCCESSES),
    "latency": (U_SUCCESSES, U_LATENCY),
    "cost": (U_REQUESTS, U_COST),
    "feedback": (U_FEEDBACK_N, U_FEEDBACK),
}
# A numerator's unit in the metric's own (ms, USD, score).
IN_METRIC = {U_LATENCY: 1e-3, U_COST: 1e-9, U_FEEDBACK: 1e-3}
OUTCOME_FIELDS = (U_REQUESTS, U_SUCCESSES, U_LATENCY, U_COST)
FEEDBACK_FIELDS = (U_FEEDBACK_N, U_FEEDBACK)

# The analytics rollups' sketch (core_rs/src/rollup.rs): relative accuracy 1%.
_SKETCH_ALPHA = 0.01
_LN_GAMMA = math.log((1 + _SKETCH_ALPHA) / (1 - _SKETCH_ALPHA))
_MIN_MS = 0.001


def sketch_index(ms: float) -> int:
    return math.ceil(math.log(max(ms, _MIN_MS)) / _LN_GAMMA)


def sketch_value(index: int) -> float:
    gamma = math.exp(_LN_GAMMA)
    return 2 * gamma**index / (gamma + 1)


def arm_key(rollout_id: str, variant: str) -> str:
    return f"{rollout_id}\x1f{variant}"


def assignment_counter(
    experiment_id: str, window_ms: int, workspace_id: str | None, request_id: str
) -> str:
    """Keyed by the request's workspace too: feedback is taken only as it; and
    by the window, so a new experiment under a deleted one's id starts afresh.
    Its value: the variant's index + 1, plus the user's unit number << 8 when
    users are randomised (so feedback is credited to the user too)."""
    return f"experiment-assignment:{experiment_id}:{window_ms}:{workspace_id or ''}\x1f{request_id}"


def unit_number(rollout_id: str, unit: str) -> int:
    """A user's (or request's) number in an experiment: 48 bits of a hash, so
    that the store holds no user id and an assignment counter can carry it."""
    digest = hashlib.blake2b(f"{rollout_id}\x1f{unit}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


def unit_fields(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """The per-user totals an experiment on these metrics keeps (requests
    always: they count the users)."""
    fields = {U_REQUESTS, *(f for m in metrics for f in UNIT_PAIRS[m])}
    return tuple(f for f in (*OUTCOME_FIELDS, *FEEDBACK_FIELDS) if f in fields)


def user_cells(
    rollout_id: str, variant: str, window_ms: int, unit: int, deltas: dict[str, int]
) -> dict[RollupCell, int]:
    cell = (USERS, window_ms, arm_key(rollout_id, variant))
    return {(*cell, f"{unit:x}:{f}"): d for f, d in deltas.items() if d}


@dataclass
class ArmTally:
    """One arm's figures over one window."""

    requests: int = 0
    successes: int = 0
    latency: Summary = Summary(0, 0.0, 0.0)  # ms, successes only
    cost: Summary = Summary(0, 0.0, 0.0)  # USD per request
    feedback: Summary = Summary(0, 0.0, 0.0)
    bins: Counter[int] = field(default_factory=Counter)
    # Users randomised: each user's totals (user -> field -> total).
    by_user: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.requests - self.successes

    def p95(self) -> float | None:
        return sketch_quantiles(list(self.bins.items()), [0.95])[0]

    def slower_than(self, ms: float) -> int:
        """Successes whose latency is over `ms` (to the sketch's 1%)."""
        return sum(n for index, n in self.bins.items() if sketch_value(index) > ms)

    def figures(self) -> t.ArmFigures:
        p95 = self.p95()
        return t.ArmFigures(
            requests=self.requests,
            error_rate=self.errors / self.requests if self.requests else None,
            p95_ms=None if p95 is None else round(p95, 3),
            cost_per_request=self.cost.mean,
        )

    def metric(self, name: t.Metric) -> Summary:
        if name == "successRate":
            return Summary.of_successes(self.requests, self.successes)
        return {"latency": self.latency, "cost": self.cost, "feedback": self.feedback}[name]

    @property
    def users(self) -> int:
        return sum(1 for totals in self.by_user.values() if totals[U_REQUESTS])

    def per_user(self, name: t.Metric) -> UnitSummary:
        """The metric as a ratio of users' totals, for the delta method: sums,
        squares and products in exact integers, then in the metric's unit."""
        n, y = UNIT_PAIRS[name]
        scale = IN_METRIC.get(y, 1.0)
        ns = [totals[n] for totals in self.by_user.values() if totals[U_REQUESTS]]
        ys = [totals[y] for totals in self.by_user.values() if totals[U_REQUESTS]]
        return UnitSummary(
            units=len(ns),
            n=sum(ns),
            y=sum(ys) * scale,
            nn=sum(a * a for a in ns),
            yy=sum(b * b for b in ys) * scale * scale,
            ny=sum(a * b for a, b in zip(ns, ys, strict=True)) * scale,
        )


def _tally(metrics: Counter[str]) -> ArmTally:
    m = metrics
    return ArmTally(
        requests=m[REQUESTS],
        successes=m[SUCCESSES],
        latency=Summary(
            m[SUCCESSES], m[LATENCY_SUM] / 1e3, m[LATENCY_SQUARES] * LATENCY_SQUARE_US2 / 1e6
        ),
        cost=Summary(m[REQUESTS], m[COST_SUM] / 1e9, m[COST_SQUARES] * COST_SQUARE_NANO2 / 1e18),
        feedback=Summary(
            m[FEEDBACK_N], m[FEEDBACK_SUM] / 1e3, m[FEEDBACK_SQUARES] * FEEDBACK_SQUARE_UNIT / 1e6
        ),
        bins=Counter({int(k[1:]): v for k, v in m.items() if k.startswith(LATENCY_BIN)}),
    )


async def read_arms(store: Store, rollout_id: str, window_ms: int) -> dict[str, ArmTally]:
    """Every arm of a rollout over the window that starts at window_ms, with
    its users' totals when users are randomised."""
    prefix = rollout_id + "\x1f"
    by_arm: dict[str, Counter[str]] = {}
    for _, key, metric, value in await store.read_rollups(WINDOW, window_ms, window_ms + 1):
        if key.startswith(prefix):
            by_arm.setdefault(key[len(prefix) :], Counter())[metric] += value
    arms = {variant: _tally(metrics) for variant, metrics in by_arm.items()}
    for _, key, metric, value in await store.read_rollups(USERS, window_ms, window_ms + 1):
        if key.startswith(prefix) and (arm := arms.get(key[len(prefix) :])) is not None:
            user, _, f = metric.partition(":")
            arm.by_user.setdefault(user, Counter())[f] += value
    return arms


def answered_by(arm: Arm, done: t.RecentRequest) -> bool:
    """A success of the arm: an answer from its own model (a failover away
    from it is the arm's failure)."""
    return done.status == 200 and done.outcome == "success" and done.model_id == arm.model_id


def outcome_cells(arm: Arm, done: t.RecentRequest) -> Counter[RollupCell]:
    """The cells one finished request adds to its arm."""
    cell = (WINDOW, arm.window_ms, arm_key(arm.rollout_id, arm.variant))
    cells: Counter[RollupCell] = Counter()
    cells[(*cell, REQUESTS)] = 1
    cost = round(done.cost * 1e9)
    cells[(*cell, COST_SUM)] = cost
    cells[(*cell, COST_SQUARES)] = round(cost * cost / COST_SQUARE_NANO2)
    if answered_by(arm, done):
        us = round(done.upstream_ms * 1000)
        cells[(*cell, SUCCESSES)] = 1
        cells[(*cell, LATENCY_SUM)] = us
        cells[(*cell, LATENCY_SQUARES)] = round(us * us / LATENCY_SQUARE_US2)
        cells[(*cell, f"{LATENCY_BIN}{sketch_index(done.upstream_ms)}")] = 1
    return cells


def outcome_user_deltas(arm: Arm, done: t.RecentRequest) -> dict[str, int]:
    """What one finished request adds to its user's totals (the fields the
    experiment keeps), by the rule outcome_cells counts it by."""
    success = answered_by(arm, done)
    every = {
        U_REQUESTS: 1,
        U_SUCCESSES: int(success),
        U_LATENCY: round(done.upstream_ms * 1000) if success else 0,
        U_COST: round(done.cost * 1e9),
    }
    return {f: every[f] for f in arm.unit_fields if f in every}


def feedback_cells(rollout_id: str, variant: str, window_ms: int, score: float) -> dict:
    cell = (WINDOW, window_ms, arm_key(rollout_id, variant))
    thousandths = round(score * 1000)
    return {
        (*cell, FEEDBACK_N): 1,
        (*cell, FEEDBACK_SUM): thousandths,
        (*cell, FEEDBACK_SQUARES): round(thousandths * thousandths / FEEDBACK_SQUARE_UNIT),
    }


class TallySync:
    """One worker's arm outcomes since its last flush, and the flush."""

    def __init__(self, store: Store):
        self.store = store
        self.queue = MergeQueue(store, KEEP_MS, MAX_PENDING_CELLS, "experiment outcomes")
        self.assignments: dict[str, int] = {}

    def record(self, arm: Arm, done: t.RecentRequest) -> None:
        if not arm.counted:
            return
        self.queue.add(outcome_cells(arm, done))
        unit = 0
        if arm.unit_fields:
            # The unit routing drew the variant by: the user, else the request.
            unit = unit_number(arm.rollout_id, done.user_id or done.request_id)
            deltas = outcome_user_deltas(arm, done)
            self.queue.add(user_cells(arm.rollout_id, arm.variant, arm.window_ms, unit, deltas))
        if arm.feedback:
            # A request id is the client's: the first request to use it keeps
            # it (here and in the store), a repeat credits nothing.
            name = assignment_counter(
                arm.rollout_id, arm.window_ms, done.workspace_id, done.request_id
            )
            self.assignments.setdefault(name, (unit << 8) + int(arm.variant) + 1)

    async def flush(self) -> None:
        if self.assignments:
            assignments, self.assignments = self.assignments, {}
            try:
                await self.store.claim_counters(assignments, ASSIGNMENT_TTL_MS)
            except BaseException:
                self.assignments = assignments | self.assignments
                if len(self.assignments) > MAX_PENDING_ASSIGNMENTS:
                    log.error(
                        "experiment assignments: store unreachable, %d dropped "
                        "(feedback on those requests will be refused)",
                        len(self.assignments),
                    )
                    self.assignments = {}
                raise
        await self.queue.flush()
