"""Judging canaries and experiments, and the controller that acts on it.

The judgements are pure functions of a canary or experiment and its arms'
figures (`judge_canary`, `judge_experiment`); the controller runs them on a
beat and stores what they decide. One worker of the whole deployment does it:
the holder of the store's `rollout-controller` lease (the lease the health
prober is elected by), renewed each beat and free again three beats after its
holder stops. Every change is a compare-and-set of the document (a manual
pause or rollback landing meanwhile wins), logged, and kept in the canary's
history.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import msgspec

from .. import types as t
from ..catalog import CANARIES, EXPERIMENTS, Catalog, iso
from ..store import ExpectBody, Lease, PreconditionFailed, Put, StoreUnavailable
from . import stats
from .routing import BASELINE_ARM, CANARY_ARM
from .tally import ArmTally, read_arms

log = logging.getLogger("model_router.experiments")

# A canary is rolled back when a guardrail is breached at this confidence
# (always-valid: however often it is read).
GUARDRAIL_ALPHA = 0.01
# The baseline's p95 means little below this many successes.
MIN_BASELINE_LATENCIES = 20
CONTROL_MS = 1000
# Past this many samples a variant "needs" (a tiny minDetectableEffect), none
# is given: no experiment gets there, and JSON clients lose integers > 2^53.
MAX_SAMPLES_NEEDED = 10**12
LEASE = "rollout-controller"

HIGHER_IS_BETTER: dict[str, bool] = {
    "successRate": True,
    "latency": False,
    "cost": False,
    "feedback": True,
}


# --- canaries -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    to: t.CanaryState
    reason: str
    figures: t.CanaryFigures
    guardrail: str | None = None  # the one that failed, on a rollback


def canary_figures(arms: dict[str, ArmTally]) -> t.CanaryFigures:
    return t.CanaryFigures(
        canary=arms.get(CANARY_ARM, ArmTally()).figures(),
        baseline=arms.get(BASELINE_ARM, ArmTally()).figures(),
    )


def judge_canary(c: t.Canary, arms: dict[str, ArmTally], now_ms: int) -> Verdict | None:
    """Roll back on a confident breach of any guardrail; advance (or promote,
    at the last step or 100%) once the step has its duration and traffic and
    every guardrail holds on the figures; else wait."""
    can, base = arms.get(CANARY_ARM, ArmTally()), arms.get(BASELINE_ARM, ArmTally())
    g = c.guardrails
    figures = canary_figures(arms)
    excess, breach = stats.error_rate_breach(
        can.requests,
        can.errors,
        base.requests,
        base.errors,
        g.max_error_rate_increase,
        GUARDRAIL_ALPHA,
    )
    if breach:
        return Verdict(
            "rolledBack",
            f"maxErrorRateIncrease breached: canary error rate "
            f"{can.errors}/{can.requests} = {can.errors / can.requests:.2%}, baseline "
            f"{base.errors}/{base.requests} = {base.errors / base.requests:.2%}, "
            f"allowed increase {g.max_error_rate_increase:.2%}",
            figures,
            "maxErrorRateIncrease",
        )
    base_p95, can_p95 = base.p95(), can.p95()
    latency_holds = True
    if base_p95 is not None and base.successes >= MIN_BASELINE_LATENCIES:
        threshold = g.max_p95_latency_ratio * base_p95
        share, breach = stats.slow_share_breach(
            can.successes, can.slower_than(threshold), GUARDRAIL_ALPHA
        )
        if breach:
            return Verdict(
                "rolledBack",
                f"maxP95LatencyRatio breached: {share:.1%} of canary answers took over "
                f"{threshold:.1f} ms ({g.max_p95_latency_ratio}x the baseline p95 of "
                f"{base_p95:.1f} ms; canary p95 {can_p95:.1f} ms)",
                figures,
                "maxP95LatencyRatio",
            )
        latency_holds = can_p95 is None or can_p95 <= threshold
    if stats.cost_ratio_breach(can.cost, base.cost, g.max_cost_ratio, GUARDRAIL_ALPHA):
        return Verdict(
            "rolledBack",
            f"maxCostRatio breached: canary ${can.cost.mean:.6f} per request, baseline "
            f"${base.cost.mean:.6f}, allowed ratio {g.max_cost_ratio}",
            figures,
            "maxCostRatio",
        )
    cost_holds = not base.cost.mean or (can.cost.mean or 0.0) <= g.max_cost_ratio * base.cost.mean
    if (
        now_ms - c.window_start_ms < c.step_duration * 1000
        or can.requests < c.min_requests_per_step
        or base.requests < c.min_requests_per_step
        or excess > 0
        or not latency_holds
        or not cost_holds
    ):
        return None
    last = c.step_index + 1 >= len(c.steps) or c.steps[c.step_index + 1] >= 100
    reason = (
        f"step {c.step_index + 1} of {len(c.steps)} passed: {can.requests} canary and "
        f"{base.requests} baseline requests, every guardrail held"
    )
    return Verdict("promoted" if last else "running", reason, figures)


def moved(
    c: t.Canary,
    state: t.CanaryState,
    reason: str,
    now_ms: int,
    figures: t.CanaryFigures | None = None,
    next_step: bool = False,
    new_window: bool = False,
) -> t.Canary:
    """The canary after a transition, with it in its history."""
    step_index = c.step_index + 1 if next_step else c.step_index
    percent = {"promoted": 100.0, "rolledBack": 0.0}.get(state, c.steps[step_index])
    at = iso(now_ms)
    new_window = new_window or next_step
    entry = t.CanaryTransition(
        at=at,
        from_=t.CanaryPosition(state=c.state, percent=c.percent),
        to=t.CanaryPosition(state=state, percent=percent),
        reason=reason,
        figures=figures,
    )
    return msgspec.structs.replace(
        c,
        state=state,
        percent=percent,
        step_index=step_index,
        step_started_at=at if new_window else c.step_started_at,
        window_start_ms=now_ms if new_window else c.window_start_ms,
        updated_at=at,
        history=[*c.history, entry],
        current=None,
    )


def apply_verdict(c: t.Canary, verdict: Verdict, now_ms: int) -> t.Canary:
    return moved(
        c,
        verdict.to,
        verdict.reason,
        now_ms,
        verdict.figures,
        next_step=verdict.to == "running",
    )


# --- experiments ---------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    results: t.ExperimentResults
    decision: str
    winner: str | None
    reason: str | None


def _compare(
    metric: t.Metric, a: ArmTally, b: ArmTally, alpha: float, mde: float, by_user: bool
) -> stats.Comparison:
    if by_user:
        return stats.delta_method(a.per_user(metric), b.per_user(metric), alpha, mde)
    if metric == "successRate":
        c = stats.two_proportions(a.requests, a.successes, b.requests, b.successes, alpha, mde)
        if min(a.requests, b.requests) < stats.MIN_SEQUENTIAL_N:
            return c
        # The interval around the estimate uses its unpooled variance.
        pa, pb = a.successes / a.requests, b.successes / b.requests
        v = pa * (1 - pa) / a.requests + pb * (1 - pb) / b.requests
        return dataclasses.replace(
            c, always_valid_ci=stats.msprt_interval(c.difference, v, mde * mde, alpha)
        )
    return stats.welch(a.metric(metric), b.metric(metric), alpha, mde)


def _guardrail_effect(metric: t.Metric, control: ArmTally) -> float:
    """The mixing scale of a guardrail metric's test: 5 points of success
    rate, else a tenth of the control's mean."""
    if metric == "successRate":
        return 0.05
    mean = control.metric(metric).mean
    return abs(mean) / 10 if mean else 1.0


def _samples_needed(e: t.Experiment, control: ArmTally, alpha: float) -> int | None:
    """Samples (effective users, when users are randomised) per variant
    after which "no difference" is called."""
    if e.assignment == "user":
        per_user = control.per_user(e.primary_metric)
        if per_user.units < 2 or per_user.variance <= 0:
            return None
        n = stats.sequential_sample_size_means(
            per_user.unit_variance, e.min_detectable_effect, alpha
        )
    elif e.primary_metric == "successRate":
        rate = control.successes / control.requests if control.requests else 0.5
        n = stats.sequential_sample_size(rate, e.min_detectable_effect, alpha)
    else:
        summary = control.metric(e.primary_metric)
        if summary.n < 2:
            return None
        n = stats.sequential_sample_size_means(summary.variance, e.min_detectable_effect, alpha)
    if n > MAX_SAMPLES_NEEDED:
        return None  # an effect this small against this variance: never
    # Never below the floor under which the always-valid test cannot speak.
    return max(n, e.min_samples_per_variant, stats.MIN_SEQUENTIAL_N)


def judge_experiment(e: t.Experiment, arms: dict[str, ArmTally]) -> Judgement:
    """Results, and the decision they support: every comparison is a variant
    against the first (the control), at alpha over their number (Bonferroni),
    on the always-valid p-value, so it holds whenever it is read."""
    tallies = [arms.get(str(i), ArmTally()) for i in range(len(e.variants))]
    control, others = tallies[0], tallies[1:]
    alpha = e.alpha / len(others)
    metric = e.primary_metric
    # Users randomised: a user's requests are not independent draws, so the
    # samples are users and each metric a ratio of their totals.
    by_user = e.assignment == "user"
    mde = e.min_detectable_effect
    comparisons = [_compare(metric, control, o, alpha, mde, by_user) for o in others]
    proportion = metric == "successRate"
    variants = []
    against_control = [None, *(c.always_valid_ci for c in comparisons)]
    for v, tally, avci in zip(e.variants, tallies, against_control, strict=True):
        s = tally.metric(metric)
        if by_user:
            ci = stats.ratio_interval(tally.per_user(metric), e.alpha, proportion)
        else:
            ci = stats.mean_interval(s, e.alpha, proportion)
        variants.append(
            t.VariantResult(
                model_id=v.model_id,
                n=tally.requests,
                users=tally.users if by_user else None,
                effective_users=(
                    round(tally.per_user(metric).effective_units, 1) if by_user else None
                ),
                mean=s.mean,
                ci=list(ci) if ci else None,
                difference_ci=list(avci) if avci else None,
            )
        )
    srm_p, mismatch = stats.sample_ratio_mismatch(
        [x.users if by_user else x.requests for x in tallies], [v.weight for v in e.variants]
    )
    needed = _samples_needed(e, control, alpha)
    results = t.ExperimentResults(
        test=comparisons[0].test,
        p_value=min(c.p_value for c in comparisons),
        always_valid_p_value=min(c.always_valid_p_value for c in comparisons),
        variants=variants,
        srm=t.SrmResult(p_value=srm_p, mismatch=mismatch),
        samples_needed_per_variant=needed,
    )
    for guard in e.guardrail_metrics:
        effect = _guardrail_effect(guard, control)
        for v, o in zip(e.variants[1:], others, strict=True):
            c = _compare(guard, control, o, alpha, effect, by_user)
            degraded = c.difference < 0 if HIGHER_IS_BETTER[guard] else c.difference > 0
            if degraded and c.always_valid_p_value <= alpha:
                reason = (
                    f"guardrail {guard}: {v.model_id} worse than {e.variants[0].model_id} by "
                    f"{abs(c.difference):.6g} (always-valid p = {c.always_valid_p_value:.4g})"
                )
                return Judgement(results, "stopped: guardrail", None, reason)
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    # Samples of the metric itself: latency has one per success, feedback one
    # per score, not one per request; with users randomised, effective users
    # (a user with most of the requests counts as few).
    samples = [
        int(x.per_user(metric).effective_units) if by_user else x.metric(metric).n for x in tallies
    ]
    enough = all(n >= e.min_samples_per_variant for n in samples)
    better = [
        i + 1
        for i, c in enumerate(comparisons)
        if c.always_valid_p_value <= alpha and sign * c.difference > 0
    ]
    worse = [
        i + 1
        for i, c in enumerate(comparisons)
        if c.always_valid_p_value <= alpha and sign * c.difference < 0
    ]
    if enough and (better or len(worse) == len(others)):
        if better:
            best = max(better, key=lambda i: sign * comparisons[i - 1].difference)
        else:
            best = 0
        winner = e.variants[best].model_id
        reason = f"{metric}: always-valid p = {results.always_valid_p_value:.4g} <= {alpha:.4g}"
        return Judgement(results, f"winner: {winner}", winner, reason)
    if enough and needed is not None and all(n >= needed for n in samples):
        reason = f"{needed} samples per variant and no difference in {metric} at alpha {alpha}"
        return Judgement(results, "no difference", None, reason)
    return Judgement(results, "running", None, None)


# --- the controller ------------------------------------------------------------


class Controller:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.store = catalog.store
        self.lease = Lease(self.store, LEASE, 3 * CONTROL_MS)
        self.leading = False

    async def tick(self) -> None:
        self.leading = False  # until the store says so
        self.leading = await self.lease.hold()
        if not self.leading:
            return
        now_ms = int(time.time() * 1000)
        for kind, judge in ((CANARIES.name, self.canary), (EXPERIMENTS.name, self.experiment)):
            for id, raw in (await self.store.get_all(kind)).items():
                try:
                    await judge(id, raw, now_ms)
                except StoreUnavailable:
                    raise
                except Exception:  # one bad document must not stop the others
                    log.exception("%s %s: not judged", kind, id, extra={"rolloutId": id})

    async def canary(self, id: str, raw: bytes, now_ms: int) -> None:
        canary = CANARIES.decode(raw)
        if canary.state != "running":
            return
        arms = await read_arms(self.store, id, canary.window_start_ms)
        verdict = judge_canary(canary, arms, now_ms)
        if verdict is not None:
            await self.replace(CANARIES.name, id, raw, apply_verdict(canary, verdict, now_ms))

    async def experiment(self, id: str, raw: bytes, now_ms: int) -> None:
        experiment = EXPERIMENTS.decode(raw)
        if experiment.state != "running" or experiment.decision != "running":
            return
        judgement = judge_experiment(
            experiment, await read_arms(self.store, id, experiment.window_start_ms)
        )
        if judgement.decision != "running":
            await self.replace(EXPERIMENTS.name, id, raw, decided(experiment, judgement, now_ms))

    async def stop(self) -> None:
        if self.leading:
            self.leading = False
            await self.lease.release()

    async def replace(self, kind: str, id: str, raw: bytes, new: t.Canary | t.Experiment) -> bool:
        """Write `new` if the document still holds `raw`; log the change."""
        try:
            await self.catalog.apply(
                [ExpectBody(kind, id, raw), Put(kind, id, msgspec.json.encode(new))]
            )
        except PreconditionFailed:
            return False
        log_change(new)
        return True


def decided(e: t.Experiment, j: Judgement, now_ms: int) -> t.Experiment:
    ends = e.auto_end or j.decision == "stopped: guardrail"
    at = iso(now_ms)
    return msgspec.structs.replace(
        e,
        decision=j.decision,
        winner=j.winner,
        reason=j.reason,
        state="ended" if ends else e.state,
        ended_at=at if ends else e.ended_at,
        updated_at=at,
        results=None,
    )


def log_started(doc: t.Canary | t.Experiment) -> None:
    if isinstance(doc, t.Canary):
        what = f"canary of {doc.model_id} on {doc.baseline_model_id}'s traffic at {doc.percent:g}%"
    else:
        what = f"experiment {doc.name!r} between {', '.join(v.model_id for v in doc.variants)}"
    log.info("%s started: %s", doc.id, what, extra={"rolloutId": doc.id})


def log_change(doc: t.Canary | t.Experiment) -> None:
    if isinstance(doc, t.Canary):
        last = doc.history[-1]
        level = logging.WARNING if doc.state == "rolledBack" else logging.INFO
        log.log(
            level,
            "canary %s: %s %g%% -> %s %g%%: %s",
            doc.id,
            last.from_.state,
            last.from_.percent,
            last.to.state,
            last.to.percent,
            last.reason,
            extra={"canaryId": doc.id, "modelId": doc.model_id},
        )
    else:
        log.info(
            "experiment %s: %s (%s), %s",
            doc.id,
            doc.decision,
            doc.reason,
            doc.state,
            extra={"experimentId": doc.id},
        )
