"""Canary rollouts and A/B experiments (docs/experiments.md): start, read,
steer by hand, send feedback. The controller (experiments/controller.py)
moves them on its own; every change is a document write, so every worker
routes under it within a config reload."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .. import types as t
from ..catalog import CANARIES, EXPERIMENTS, LABELS, MODELS, RULES, Kind, iso
from ..experiments.controller import (
    canary_figures,
    judge_experiment,
    log_change,
    log_started,
    moved,
)
from ..experiments.tally import (
    ASSIGNMENT_TTL_MS,
    KEEP_MS,
    U_FEEDBACK,
    U_FEEDBACK_N,
    assignment_counter,
    feedback_cells,
    read_arms,
    user_cells,
)
from ..http import ApiError, Handler, Request, Response, Route, json_response, not_found
from ..store import Delete, ExpectAbsent, ExpectBody, PreconditionFailed
from ..telemetry.pii import hex_id
from ..validation import Problem, raise_problems
from .calls import workspace
from .writes import apply, update

TAG = "experiments"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _scope_problems(scope: t.RolloutScope, rule_ids: set[str]) -> list[Problem]:
    named = [v for v in (scope.rule_id, scope.agent_type, scope.workspace_id) if v is not None]
    if len(named) != 1:
        return [Problem("scope", "name exactly one of ruleId, agentType and workspaceId")]
    if scope.rule_id is not None and scope.rule_id not in rule_ids:
        return [Problem("scope.ruleId", f"unknown rule {scope.rule_id!r}")]
    return []


def _model_problems(named: list[tuple[str, str]], model_ids: set[str]) -> list[Problem]:
    problems = [Problem(f, f"unknown model {m!r}") for f, m in named if m not in model_ids]
    seen: set[str] = set()
    for field, model in named:
        if model in seen:
            problems.append(Problem(field, f"model {model!r} twice"))
        seen.add(model)
    return problems


async def _ids(req: Request, kind: str) -> set[str]:
    return set((await req.service.store.get_all(kind)).keys())


async def _scope_taken(req: Request, scope: t.RolloutScope) -> None:
    """One canary or experiment under way per scope: a request is in at most
    one. A promoted canary or an experiment ended on its winner gives way."""
    docs: list[t.Canary | t.Experiment] = [
        *await req.service.catalog.all(CANARIES),
        *await req.service.catalog.all(EXPERIMENTS),
    ]
    for doc in docs:
        if doc.state in ("running", "paused") and doc.scope == scope:
            label = "canary" if isinstance(doc, t.Canary) else "experiment"
            raise ApiError(
                409,
                "conflict",
                f"{label} {doc.id!r} already runs on this scope",
                {f"{label}Id": doc.id},
            )


# --- canaries -------------------------------------------------------------------


async def create_canary(req: Request) -> Response:
    body: t.CanaryCreate = req.body
    problems = _scope_problems(body.scope, await _ids(req, RULES.name))
    problems += _model_problems(
        [("modelId", body.model_id), ("baselineModelId", body.baseline_model_id)],
        await _ids(req, MODELS.name),
    )
    if any(b <= a for a, b in zip(body.steps, body.steps[1:], strict=False)):
        problems.append(Problem("steps", "steps must increase"))
    raise_problems(problems)
    await _scope_taken(req, body.scope)
    now = _now_ms()
    canary = t.Canary(
        id=body.id or f"canary-{hex_id(6)}",
        model_id=body.model_id,
        baseline_model_id=body.baseline_model_id,
        scope=body.scope,
        steps=body.steps,
        step_duration=body.step_duration,
        min_requests_per_step=body.min_requests_per_step,
        guardrails=body.guardrails,
        step_index=0,
        percent=body.steps[0],
        state="running",
        step_started_at=iso(now),
        window_start_ms=now,
        created_at=iso(now),
        updated_at=iso(now),
    )
    await apply(req, [ExpectAbsent(CANARIES.name, canary.id), CANARIES.put(canary.id, canary)])
    log_started(canary)
    return json_response(await _with_figures(req, canary), 201)


async def _with_figures(req: Request, c: t.Canary) -> t.Canary:
    arms = await read_arms(req.service.store, c.id, c.window_start_ms)
    return msgspec.structs.replace(c, current=canary_figures(arms))


async def list_canaries(req: Request) -> Response:
    canaries = sorted(await req.service.catalog.all(CANARIES), key=lambda c: c.created_at)
    data = [await _with_figures(req, c) for c in canaries]
    return json_response(t.Page(data=data, total=len(data)))


async def get_canary(req: Request) -> Response:
    canary_id = req.path_params["canaryId"]
    canary = await req.service.catalog.get(CANARIES, canary_id)
    if canary is None:
        raise not_found("canary", canary_id)
    return json_response(await _with_figures(req, canary))


def _not_now(action: str, state: str) -> ApiError:
    return ApiError(409, "conflict", f"cannot {action} a canary that is {state}", {"state": state})


def _canary_action(
    action: str, allowed: tuple[str, ...], state: t.CanaryState, new_window: bool = False
) -> Handler:
    async def act(req: Request) -> Response:
        canary_id = req.path_params["canaryId"]
        now = _now_ms()

        def change(c: t.Canary) -> t.Canary:
            if c.state not in allowed:
                raise _not_now(action, c.state)
            return moved(c, state, f"{action} by the API", now, new_window=new_window)

        result = await update(req, CANARIES, [canary_id], change)
        if isinstance(result, str):
            raise not_found("canary", canary_id)
        log_change(result[0])
        return json_response(await _with_figures(req, result[0]))

    act.__name__ = f"{action}_canary"  # the OpenAPI operation id
    return act


async def _delete_finished(
    req: Request, kind: Kind[Any], id: str, finished: tuple[str, ...], how: str
) -> Response:
    """Delete a canary or experiment that no longer changes anything but may
    still route (a promoted canary, an experiment ended on its winner): its
    scope's traffic then routes as if it had never run. Its figures expire
    with their window."""
    label = LABELS[kind.name]
    raw = await req.service.store.get(kind.name, id)
    if raw is None:
        raise not_found(label, id)
    state = kind.decode(raw).state
    if state not in finished:
        raise ApiError(409, "conflict", f"the {label} is {state}: {how} first", {"state": state})
    try:
        await req.service.catalog.apply([ExpectBody(kind.name, id, raw), Delete(kind.name, id)])
    except PreconditionFailed:
        raise ApiError(409, "conflict", f"the {label} changed meanwhile: try again") from None
    return json_response(t.Deleted(id=id))


async def delete_canary(req: Request) -> Response:
    canary_id = req.path_params["canaryId"]
    finished = ("promoted", "rolledBack")
    return await _delete_finished(req, CANARIES, canary_id, finished, "promote or roll it back")


# --- experiments ------------------------------------------------------------------


async def create_experiment(req: Request) -> Response:
    body: t.ExperimentCreate = req.body
    problems = _scope_problems(body.scope, await _ids(req, RULES.name))
    problems += _model_problems(
        [(f"variants[{i}].modelId", v.model_id) for i, v in enumerate(body.variants)],
        await _ids(req, MODELS.name),
    )
    # A variant without traffic never gets the samples a decision waits for.
    problems += [
        Problem(f"variants[{i}].weight", "a variant's weight must be above 0")
        for i, v in enumerate(body.variants)
        if v.weight <= 0
    ]
    if body.primary_metric == "successRate" and not 0.001 <= body.min_detectable_effect < 1:
        problems.append(
            Problem("minDetectableEffect", "a success rate effect is from 0.001 to below 1")
        )
    raise_problems(problems)
    await _scope_taken(req, body.scope)
    now = _now_ms()
    fields = msgspec.structs.asdict(body)
    experiment = t.Experiment(
        **{
            **fields,
            "id": body.id or f"experiment-{hex_id(6)}",
            "state": "running",
            "decision": "running",
            "window_start_ms": now,
            "created_at": iso(now),
            "updated_at": iso(now),
        }
    )
    await apply(
        req,
        [
            ExpectAbsent(EXPERIMENTS.name, experiment.id),
            EXPERIMENTS.put(experiment.id, experiment),
        ],
    )
    log_started(experiment)
    return json_response(await _with_results(req, experiment), 201)


async def _with_results(req: Request, e: t.Experiment) -> t.Experiment:
    arms = await read_arms(req.service.store, e.id, e.window_start_ms)
    return msgspec.structs.replace(e, results=judge_experiment(e, arms).results)


async def list_experiments(req: Request) -> Response:
    experiments = sorted(await req.service.catalog.all(EXPERIMENTS), key=lambda e: e.created_at)
    data = [await _with_results(req, e) for e in experiments]
    return json_response(t.Page(data=data, total=len(data)))


async def _experiment(req: Request) -> t.Experiment:
    experiment_id = req.path_params["experimentId"]
    experiment = await req.service.catalog.get(EXPERIMENTS, experiment_id)
    if experiment is None:
        raise not_found("experiment", experiment_id)
    return experiment


async def get_experiment(req: Request) -> Response:
    return json_response(await _with_results(req, await _experiment(req)))


async def end_experiment(req: Request) -> Response:
    experiment_id = req.path_params["experimentId"]
    now = _now_ms()

    def change(e: t.Experiment) -> t.Experiment:
        if e.state == "ended":
            raise ApiError(409, "conflict", "the experiment has ended", {"state": e.state})
        return msgspec.structs.replace(
            e, state="ended", ended_at=iso(now), updated_at=iso(now), reason="ended by the API"
        )

    result = await update(req, EXPERIMENTS, [experiment_id], change)
    if isinstance(result, str):
        raise not_found("experiment", experiment_id)
    log_change(result[0])
    return json_response(await _with_results(req, result[0]))


async def delete_experiment(req: Request) -> Response:
    experiment_id = req.path_params["experimentId"]
    return await _delete_finished(req, EXPERIMENTS, experiment_id, ("ended",), "end it")


async def feedback(req: Request) -> Response:
    """A quality score for one request of the experiment, once: the variant is
    the one the request was assigned (kept in the store for a week)."""
    body: t.FeedbackCreate = req.body
    experiment = await _experiment(req)
    if "feedback" not in (experiment.primary_metric, *experiment.guardrail_metrics):
        raise ApiError(
            409,
            "conflict",
            f"experiment {experiment.id!r} does not use feedback (neither its primaryMetric "
            "nor a guardrailMetric): its requests' variants are not kept",
            {"experimentId": experiment.id},
        )
    store = req.service.store
    window_ms = experiment.window_start_ms
    assigned = assignment_counter(
        experiment.id, window_ms, workspace(req, body.workspace_id), body.request_id
    )
    given = f"experiment-feedback:{assigned}"
    held = (await store.read_counters([assigned]))[assigned]
    index, unit = (held & 0xFF) - 1, held >> 8  # tally.TallySync.record
    if not 0 <= index < len(experiment.variants):
        raise ApiError(
            404,
            "not_found",
            f"no request {body.request_id!r} in experiment {experiment.id!r} (yet: requests "
            "are counted within a second of their answer)",
            {"requestId": body.request_id},
        )
    if (await store.add_counters({given: 1}, ASSIGNMENT_TTL_MS))[given] > 1:
        raise ApiError(
            409,
            "conflict",
            f"request {body.request_id!r} already has feedback",
            {"requestId": body.request_id},
        )
    variant = str(index)
    cells = feedback_cells(experiment.id, variant, window_ms, body.score)
    if experiment.assignment == "user":
        scored = {U_FEEDBACK_N: 1, U_FEEDBACK: round(body.score * 1000)}
        cells |= user_cells(experiment.id, variant, window_ms, unit, scored)
    try:
        # Under the request's own id: a retry after a lost answer counts once.
        await store.merge_rollups(cells, KEEP_MS, batch=given)
    except BaseException:
        # Not counted (or not known to be): take the mark back, so that a
        # retry is not a 409; the batch id keeps it from counting twice.
        await store.add_counters({given: -1}, ASSIGNMENT_TTL_MS)
        raise
    return json_response(
        t.FeedbackRecorded(
            experiment_id=experiment.id,
            request_id=body.request_id,
            variant=experiment.variants[index].model_id,
        ),
        201,
    )


def canary_summaries(canaries: list[t.Canary]) -> list[t.CanarySummary]:
    """The health overview's canaries: where each stands and its last move."""
    return [
        t.CanarySummary(
            id=c.id,
            model_id=c.model_id,
            baseline_model_id=c.baseline_model_id,
            state=c.state,
            percent=c.percent,
            last_transition=c.history[-1] if c.history else None,
        )
        for c in sorted(canaries, key=lambda c: c.created_at)
    ]


CANARY = "/api/canaries/{canaryId}"
EXPERIMENT = "/api/experiments/{experimentId}"
ROUTES = [
    Route(
        "POST",
        "/api/canaries",
        create_canary,
        "Start a canary rollout: a model takes a growing share of its baseline's traffic",
        TAG,
        "configure",
        body=t.CanaryCreate,
        response=t.Canary,
        status=201,
    ),
    Route("GET", "/api/canaries", list_canaries, "List canaries", TAG, "read", response=t.Page),
    Route(
        "GET", CANARY, get_canary, "A canary, with its figures now", TAG, "read", response=t.Canary
    ),
    Route(
        "POST",
        f"{CANARY}/pause",
        _canary_action("pause", ("running",), "paused"),
        "Hold a canary at its share; the controller stops judging it",
        TAG,
        "configure",
        response=t.Canary,
    ),
    Route(
        "POST",
        f"{CANARY}/resume",
        _canary_action("resume", ("paused",), "running", new_window=True),
        "Judge a paused canary again, over a new window",
        TAG,
        "configure",
        response=t.Canary,
    ),
    Route(
        "POST",
        f"{CANARY}/promote",
        _canary_action("promote", ("running", "paused"), "promoted"),
        "Send all the baseline's traffic in scope to the canary now",
        TAG,
        "configure",
        response=t.Canary,
    ),
    Route(
        "POST",
        f"{CANARY}/rollback",
        _canary_action("rollback", ("running", "paused", "promoted"), "rolledBack"),
        "Send no more traffic to the canary",
        TAG,
        "configure",
        response=t.Canary,
    ),
    Route(
        "DELETE",
        CANARY,
        delete_canary,
        "Delete a promoted or rolled-back canary: its scope routes as if it had never run",
        TAG,
        "configure",
        response=t.Deleted,
        errors=(409,),
    ),
    Route(
        "POST",
        "/api/experiments",
        create_experiment,
        "Start an A/B experiment between models",
        TAG,
        "configure",
        body=t.ExperimentCreate,
        response=t.Experiment,
        status=201,
    ),
    Route(
        "GET",
        "/api/experiments",
        list_experiments,
        "List experiments",
        TAG,
        "read",
        response=t.Page,
    ),
    Route(
        "GET",
        EXPERIMENT,
        get_experiment,
        "An experiment, with its results and decision",
        TAG,
        "read",
        response=t.Experiment,
    ),
    Route(
        "DELETE",
        EXPERIMENT,
        delete_experiment,
        "Delete an ended experiment: its scope routes as if it had never run",
        TAG,
        "configure",
        response=t.Deleted,
        errors=(409,),
    ),
    Route(
        "POST",
        f"{EXPERIMENT}/feedback",
        feedback,
        "A quality score for one request of the experiment",
        TAG,
        "route",
        body=t.FeedbackCreate,
        response=t.FeedbackRecorded,
        status=201,
    ),
    Route(
        "POST",
        f"{EXPERIMENT}/end",
        end_experiment,
        "End an experiment: its traffic routes as if it had never been",
        TAG,
        "configure",
        response=t.Experiment,
    ),
]
