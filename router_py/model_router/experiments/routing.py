"""Which canary or experiment a request takes part in, and the model that
then answers it: on the request path, so kept to dict lookups and one hash.

Each worker compiles the active canaries and experiments into `Rollouts`
when it loads the config (they are config documents: a write anywhere
reloads every worker). With none active the live config holds None, and the
request path pays one attribute test.

A request belongs to the first rollout whose scope matches, looked up by the
rule that routed it, then its agent type, then its workspace; of a canary
and an experiment on the same scope (a promoted canary, or an experiment
ended on its winner, keeps routing until another takes its scope), the one
created last. A request that names its model is in none.
- Experiment: the variant is drawn from the weights by a hash of the
  experiment id and the request id (or the user id, with `assignment:
  user`: sticky), and its model is tried first. An ended experiment with a
  winner and autoEnd sends every request in scope to the winner.
- Canary: a request routing sent to the baseline model goes to the canary
  model when a hash of the canary id and the request id falls under
  percent / 100; the others are its baseline arm.
The arm's model is tried first; the decision's other candidates follow as
fallbacks (so a failing canary still gets an answer from the baseline, and
counts as the canary's failure, as does a canary routing cannot use at all:
breakers open, say).

The scopes' lookup, the hash and the draw are the core's
(`core_rs/src/rollouts.rs`), which the door will use too; this module
compiles the rollouts for it and keeps what each arm means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from .. import types as t
from .._core import ARM_CANARY, ARM_WINNER, Decision
from .._core import Rollouts as CoreRollouts
from .tally import unit_fields

Candidates = list[tuple[str, list[str]]]

CANARY_ARM, BASELINE_ARM = "canary", "baseline"


class Kind(IntEnum):
    CANARY = 0
    EXPERIMENT = 1


@dataclass(frozen=True, slots=True)
class Arm:
    """A request's part in a rollout."""

    kind: Kind
    rollout_id: str
    variant: str  # an experiment's variant index, or "canary" / "baseline"
    model_id: str  # the model the arm is about
    window_ms: int  # where its outcome is counted
    counted: bool = True  # False once a rollout is decided (traffic only routed)
    # An experiment judged on feedback: its request -> variant is kept for it.
    feedback: bool = False
    # Users randomised: the per-user totals kept for the analysis (tally.py).
    unit_fields: tuple[str, ...] = ()

    @property
    def experiment(self) -> bool:
        return self.kind is Kind.EXPERIMENT

    @property
    def label(self) -> str:
        """The variant as headers and logs show it: a model id, or canary/baseline."""
        return self.model_id if self.kind is Kind.EXPERIMENT else self.variant


class _Experiment:
    """An experiment as the request path sees it: its arms made once."""

    def __init__(self, e: t.Experiment):
        self.id = e.id
        self.by_user = e.assignment == "user"
        total = sum(v.weight for v in e.variants) or 1.0
        running, edges = 0.0, []
        for v in e.variants:
            running += v.weight
            edges.append(running / total)
        self.cumulative = tuple(edges)  # the weights' running sums, over their total
        metrics = (e.primary_metric, *e.guardrail_metrics)
        fields = unit_fields(metrics) if self.by_user else ()
        self.arms = tuple(
            Arm(
                Kind.EXPERIMENT,
                e.id,
                str(i),
                v.model_id,
                e.window_start_ms,
                feedback="feedback" in metrics,
                unit_fields=fields,
            )
            for i, v in enumerate(e.variants)
        )
        # Ended with a winner (autoEnd): everything goes there, uncounted.
        self.winner = (
            Arm(Kind.EXPERIMENT, e.id, "", e.winner, e.window_start_ms, counted=False)
            if e.state == "ended" and e.auto_end and e.winner is not None
            else None
        )

    def core(self) -> tuple[None, tuple[bool, list[float], bool]]:
        return None, (self.by_user, list(self.cumulative), self.winner is not None)

    def arm(self, picked: int) -> Arm:
        if picked == ARM_WINNER:
            assert self.winner is not None
            return self.winner
        return self.arms[picked]


class _Canary:
    def __init__(self, c: t.Canary):
        self.id = c.id
        self.baseline_model_id = c.baseline_model_id
        self.share = c.percent / 100
        counted = c.state != "promoted"  # judged while running or paused
        self.canary = Arm(Kind.CANARY, c.id, CANARY_ARM, c.model_id, c.window_start_ms, counted)
        self.baseline = Arm(
            Kind.CANARY, c.id, BASELINE_ARM, c.baseline_model_id, c.window_start_ms, counted
        )

    def core(self) -> tuple[tuple[str, float], None]:
        return (self.baseline_model_id, self.share), None

    def arm(self, picked: int) -> Arm:
        return self.canary if picked == ARM_CANARY else self.baseline


Compiled = _Experiment | _Canary


def _scope_key(scope: t.RolloutScope) -> tuple[int, str]:
    """The core's scope (0: rule, 1: agent type, 2: workspace) and its value."""
    if scope.rule_id is not None:
        return 0, scope.rule_id
    if scope.agent_type is not None:
        return 1, scope.agent_type
    assert scope.workspace_id is not None
    return 2, scope.workspace_id


class Rollouts:
    def __init__(self, canaries: list[t.Canary], experiments: list[t.Experiment]):
        active: list[tuple[str, t.RolloutScope, Compiled]] = [
            (c.created_at, c.scope, _Canary(c))
            for c in canaries
            if c.state != "rolledBack" and c.percent > 0
        ]
        active += [
            (e.created_at, e.scope, _Experiment(e))
            for e in experiments
            if e.state == "running" or (e.auto_end and e.winner is not None)
        ]
        # Oldest first: the newest on a scope wins, canary or experiment alike.
        active.sort(key=lambda a: a[0])
        self.compiled = [compiled for _, _, compiled in active]
        self.core = CoreRollouts([(*_scope_key(scope), c.id, *c.core()) for _, scope, c in active])

    @classmethod
    def of(cls, canaries: list[t.Canary], experiments: list[t.Experiment]) -> Rollouts | None:
        rollouts = cls(canaries, experiments)
        return rollouts if rollouts.compiled else None

    def arm(
        self,
        rule_id: str | None,
        agent_type: str,
        workspace_id: str | None,
        first_model: str | None,
        request_id: str,
        user_id: str | None,
    ) -> Arm | None:
        """The request's arm, or None (not in any rollout). `first_model`:
        the model routing put first."""
        found = self.core.assign(
            rule_id, agent_type, workspace_id, first_model, request_id, user_id
        )
        if found is None:
            return None
        index, picked = found
        return self.compiled[index].arm(picked)

    def assign(
        self,
        decision: Decision,
        request_id: str,
        agent_type: str,
        workspace_id: str | None,
        user_id: str | None,
        decide_model: Callable[[str], tuple[str, list[str]] | None],
    ) -> tuple[Arm, Candidates] | None:
        """The request's arm and the candidates to try, or None (not in any).
        `decide_model` gives a model's candidate entry (model, endpoints) when
        routing did not rank it."""
        candidates = decision.candidates
        first_model = candidates[0][0] if candidates else None
        arm = self.arm(decision.rule_id, agent_type, workspace_id, first_model, request_id, user_id)
        if arm is None:
            return None
        if arm.variant == BASELINE_ARM:
            return arm, candidates
        first = next((c for c in candidates if c[0] == arm.model_id), None)
        if first is None:
            first = decide_model(arm.model_id)
            if first is None:  # the arm's model cannot take it now: its failure
                return arm, candidates
        return arm, [first, *(c for c in candidates if c[0] != arm.model_id)]
