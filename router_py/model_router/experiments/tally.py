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
user (stats.delta_method), which needs, per arm, the number of users and
the sums over users of the squares and products of each user's own totals
(Σn², Σy², Σny). Those are not sums of per-request figures, so each user's
totals are store counters too (`experiment-unit:...`, only the fields the
experiment's metrics need, kept as long as the arm's cells): a flush adds a
user's deltas to them atomically (Store.add_counters, all of one user's
fields in one call) and gets the new totals back, and what the user's square
and products moved by, new² - old², is added to the arm's cells. However the
increments of many workers interleave, these differences add up to exactly
Σ new², with each user's square rounded once (its unit below).
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
KEEP_MS = {WINDOW: 90 * 86_400_000}
# An experiment's request -> variant (index + 1), for feedback: kept this
# long, and only for experiments that use feedback.
ASSIGNMENT_TTL_MS = 7 * 86_400_000
MAX_PENDING_CELLS = 100_000
MAX_PENDING_ASSIGNMENTS = 100_000
MAX_PENDING_UNITS = 100_000

# Per user (assignment "user"): a unit's totals, stored as counters named
# f"{unit_counter(...)}:{field}": requests, successes, latency of successes
# (µs), cost (nano-USD), feedback scores and their sum (thousandths).
UNITS = "u"  # the arm's number of users
U_REQUESTS, U_SUCCESSES, U_LATENCY, U_COST, U_FEEDBACK_N, U_FEEDBACK = "r", "s", "L", "C", "f", "F"
# Each metric as a ratio of a user's totals: (denominator, numerator).
UNIT_PAIRS: dict[str, tuple[str, str]] = {
    "successRate": (U_REQUESTS, U_SUCCESSES),
    "latency": (U_SUCCESSES, U_LATENCY),
    "cost": (U_REQUESTS, U_COST),
    "feedback": (U_FEEDBACK_N, U_FEEDBACK),
}
# The unit a user's total is squared in, in the counter's own units: ms for
# latency, 10 µUSD for cost, so that Σ over users stays inside 64 bits for
# any plausible experiment (a user's 1,000 requests of 1 s: 1e12 ms²).
UNIT_SCALE = {U_LATENCY: 1000, U_COST: 10_000}
# That unit in the metric's own (ms, USD, score).
UNIT_IN_METRIC = {U_LATENCY: 1.0, U_COST: 1e-5, U_FEEDBACK: 1e-3}
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


def assignment_counter(experiment_id: str, workspace_id: str | None, request_id: str) -> str:
    """Keyed by the request's workspace too: feedback is taken only as it.
    Its value: the variant's index + 1, plus the user's unit number << 8 when
    users are randomised (so feedback is credited to the user too)."""
    return f"experiment-assignment:{experiment_id}:{workspace_id or ''}\x1f{request_id}"


def unit_number(rollout_id: str, unit: str) -> int:
    """A user's (or request's) number in an experiment: 48 bits of a hash, so
    that store keys hold no user id and an assignment counter can carry it."""
    digest = hashlib.blake2b(f"{rollout_id}\x1f{unit}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


def unit_counter(rollout_id: str, window_ms: int, variant: str, unit: int) -> str:
    return f"experiment-unit:{rollout_id}:{window_ms}:{variant}:{unit:x}"


def unit_fields(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """The per-user totals an experiment on these metrics keeps (requests
    always: they count the users)."""
    fields = {U_REQUESTS, *(f for m in metrics for f in UNIT_PAIRS[m])}
    return tuple(f for f in (*OUTCOME_FIELDS, *FEEDBACK_FIELDS) if f in fields)


def _squared(field: str, total: int) -> int:
    scale = UNIT_SCALE.get(field, 1)
    return (total * total + scale * scale // 2) // (scale * scale)


def _product(n: int, field: str, total: int) -> int:
    scale = UNIT_SCALE.get(field, 1)
    return (n * total + scale // 2) // scale


def unit_moves(
    cell: tuple[str, int, str], totals: dict[str, int], deltas: dict[str, int]
) -> Counter[RollupCell]:
    """What one user's update moved the arm's user-level cells by: the count
    of users (a first request), each updated total's square, and each pair's
    product — new value minus old, from the totals after the update."""
    moves: Counter[RollupCell] = Counter()
    old = {f: totals[f] - deltas[f] for f in deltas}
    if U_REQUESTS in deltas and old[U_REQUESTS] == 0 and totals[U_REQUESTS] > 0:
        moves[(*cell, UNITS)] = 1
    for f in deltas:
        moves[(*cell, f"{UNITS}{f}{f}")] = _squared(f, totals[f]) - _squared(f, old[f])
    for n, y in UNIT_PAIRS.values():
        if n in deltas and y in deltas:
            moves[(*cell, f"{UNITS}{n}{y}")] = _product(totals[n], y, totals[y]) - _product(
                old[n], y, old[y]
            )
    return moves


UnitDeltas = dict[str, tuple[tuple[str, int, str], dict[str, int]]]


async def add_unit_totals(store: Store, units: UnitDeltas) -> Counter[RollupCell]:
    """Add each user's deltas to their stored totals (one atomic call) and
    return what the arms' user-level cells move by."""
    names = {f"{unit}:{f}": d for unit, (_, deltas) in units.items() for f, d in deltas.items()}
    totals = await store.add_counters(names, KEEP_MS[WINDOW])
    moves: Counter[RollupCell] = Counter()
    for unit, (cell, deltas) in units.items():
        moves.update(unit_moves(cell, {f: totals[f"{unit}:{f}"] for f in deltas}, deltas))
    return moves


@dataclass
class ArmTally:
    """One arm's figures over one window."""

    requests: int = 0
    successes: int = 0
    latency: Summary = Summary(0, 0.0, 0.0)  # ms, successes only
    cost: Summary = Summary(0, 0.0, 0.0)  # USD per request
    feedback: Summary = Summary(0, 0.0, 0.0)
    bins: Counter[int] = field(default_factory=Counter)
    # Users randomised: the arm's user-level cells (UNITS, squares, products).
    units: Counter[str] = field(default_factory=Counter)

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
        return self.units[UNITS]

    def per_user(self, name: t.Metric) -> UnitSummary:
        """The metric as a ratio of users' totals, for the delta method."""
        n, y = UNIT_PAIRS[name]
        scale = UNIT_IN_METRIC.get(y, 1.0)
        return UnitSummary(
            units=self.users,
            n=self.metric(name).n,
            y=self.metric(name).total,
            nn=self.units[f"{UNITS}{n}{n}"],
            yy=self.units[f"{UNITS}{y}{y}"] * scale * scale,
            ny=self.units[f"{UNITS}{n}{y}"] * scale,
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
        units=Counter({k: v for k, v in m.items() if k.startswith(UNITS)}),
    )


async def read_arms(store: Store, rollout_id: str, window_ms: int) -> dict[str, ArmTally]:
    """Every arm of a rollout over the window that starts at window_ms."""
    by_arm: dict[str, Counter[str]] = {}
    prefix = rollout_id + "\x1f"
    for _, key, metric, value in await store.read_rollups(WINDOW, window_ms, window_ms + 1):
        if key.startswith(prefix):
            by_arm.setdefault(key[len(prefix) :], Counter())[metric] += value
    return {variant: _tally(metrics) for variant, metrics in by_arm.items()}


def outcome_cells(arm: Arm, done: t.RecentRequest) -> Counter[RollupCell]:
    """The cells one finished request adds to its arm: a success is an answer
    from the arm's own model (a failover away from it is the arm's failure)."""
    cell = (WINDOW, arm.window_ms, arm_key(arm.rollout_id, arm.variant))
    cells: Counter[RollupCell] = Counter()
    cells[(*cell, REQUESTS)] = 1
    cost = round(done.cost * 1e9)
    cells[(*cell, COST_SUM)] = cost
    cells[(*cell, COST_SQUARES)] = round(cost * cost / COST_SQUARE_NANO2)
    if done.status == 200 and done.outcome == "success" and done.model_id == arm.model_id:
        us = round(done.upstream_ms * 1000)
        cells[(*cell, SUCCESSES)] = 1
        cells[(*cell, LATENCY_SUM)] = us
        cells[(*cell, LATENCY_SQUARES)] = round(us * us / LATENCY_SQUARE_US2)
        cells[(*cell, f"{LATENCY_BIN}{sketch_index(done.upstream_ms)}")] = 1
    return cells


def outcome_unit_deltas(arm: Arm, done: t.RecentRequest) -> dict[str, int]:
    """What one finished request adds to its user's totals (the fields the
    experiment keeps), by the rule outcome_cells counts it by."""
    success = done.status == 200 and done.outcome == "success" and done.model_id == arm.model_id
    every = {
        U_REQUESTS: 1,
        U_SUCCESSES: int(success),
        U_LATENCY: round(done.upstream_ms * 1000) if success else 0,
        U_COST: round(done.cost * 1e9),
    }
    return {f: every[f] for f in arm.unit_fields if f in every}


def feedback_unit(
    rollout_id: str, variant: str, window_ms: int, unit: int, score: float
) -> UnitDeltas:
    """One score's deltas to its user's totals (users randomised)."""
    cell = (WINDOW, window_ms, arm_key(rollout_id, variant))
    name = unit_counter(rollout_id, window_ms, variant, unit)
    return {name: (cell, {U_FEEDBACK_N: 1, U_FEEDBACK: round(score * 1000)})}


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
        self.pending: Counter[RollupCell] = Counter()
        self.assignments: dict[str, int] = {}
        self.units: UnitDeltas = {}

    def record(self, arm: Arm, done: t.RecentRequest) -> None:
        if not arm.counted:
            return
        self.pending.update(outcome_cells(arm, done))
        unit = 0
        if arm.unit_fields:
            # The unit routing drew the variant by: the user, else the request.
            unit = unit_number(arm.rollout_id, done.user_id or done.request_id)
            name = unit_counter(arm.rollout_id, arm.window_ms, arm.variant, unit)
            cell = (WINDOW, arm.window_ms, arm_key(arm.rollout_id, arm.variant))
            deltas = self.units.setdefault(name, (cell, {}))[1]
            for f, d in outcome_unit_deltas(arm, done).items():
                deltas[f] = deltas.get(f, 0) + d
        if arm.feedback:
            # A request id is the client's: the first request to use it keeps
            # it (here and in the store), a repeat credits nothing.
            name = assignment_counter(arm.rollout_id, done.workspace_id, done.request_id)
            self.assignments.setdefault(name, (unit << 8) + int(arm.variant) + 1)

    async def _add_units(self) -> None:
        units, self.units = self.units, {}
        try:
            self.pending.update(await add_unit_totals(self.store, units))
        except BaseException:
            for name, (cell, deltas) in self.units.items():  # recorded meanwhile
                kept = units.setdefault(name, (cell, {}))[1]
                for f, d in deltas.items():
                    kept[f] = kept.get(f, 0) + d
            self.units = units
            if len(units) > MAX_PENDING_UNITS:
                log.error("experiment users: store unreachable, %d dropped", len(units))
                self.units = {}
            raise

    async def flush(self) -> None:
        if self.units:
            await self._add_units()
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
        if not self.pending:
            return
        cells, self.pending = self.pending, Counter()
        try:
            await self.store.merge_rollups(cells, KEEP_MS)
        except BaseException:
            cells.update(self.pending)
            self.pending = cells
            if len(cells) > MAX_PENDING_CELLS:
                log.error("experiment outcomes: store unreachable, %d cells dropped", len(cells))
                self.pending = Counter()
            raise
