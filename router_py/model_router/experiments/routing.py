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
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from .. import types as t
from .._core import Decision
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


def unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from the parts, the same on every worker."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


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

    def arm(self, request_id: str, user_id: str | None) -> Arm:
        if self.winner is not None:
            return self.winner
        u = unit_hash(self.id, user_id if self.by_user and user_id else request_id)
        for arm, edge in zip(self.arms, self.cumulative, strict=True):
            if u < edge:
                return arm
        return self.arms[-1]


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

    def arm(self, request_id: str) -> Arm:
        if self.share >= 1 or unit_hash(self.id, request_id) < self.share:
            return self.canary
        return self.baseline


Compiled = _Experiment | _Canary


def _scope_key(scope: t.RolloutScope) -> tuple[int, str]:
    if scope.rule_id is not None:
        return 0, scope.rule_id
    if scope.agent_type is not None:
        return 1, scope.agent_type
    assert scope.workspace_id is not None
    return 2, scope.workspace_id


class Rollouts:
    def __init__(self, canaries: list[t.Canary], experiments: list[t.Experiment]):
        # Index 0: by rule id, 1: by agent type, 2: by workspace id.
        self.scopes: tuple[dict[str, Compiled], ...] = ({}, {}, {})
        # The newest on a scope wins, canary or experiment alike.
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
        for _, scope, compiled in sorted(active, key=lambda a: a[0]):
            which, value = _scope_key(scope)
            self.scopes[which][value] = compiled

    @classmethod
    def of(cls, canaries: list[t.Canary], experiments: list[t.Experiment]) -> Rollouts | None:
        rollouts = cls(canaries, experiments)
        return rollouts if any(rollouts.scopes) else None

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
        by_rule, by_agent, by_workspace = self.scopes
        found = (
            (decision.rule_id is not None and by_rule.get(decision.rule_id))
            or by_agent.get(agent_type)
            or (workspace_id is not None and by_workspace.get(workspace_id))
        )
        if not found:
            return None
        candidates = decision.candidates
        if isinstance(found, _Canary):
            if not candidates or candidates[0][0] != found.baseline_model_id:
                return None
            arm = found.arm(request_id)
            if arm is found.baseline:
                return arm, candidates
        else:
            arm = found.arm(request_id, user_id)
        first = next((c for c in candidates if c[0] == arm.model_id), None)
        if first is None:
            first = decide_model(arm.model_id)
            if first is None:  # the arm's model cannot take it now: its failure
                return arm, candidates
        return arm, [first, *(c for c in candidates if c[0] != arm.model_id)]
