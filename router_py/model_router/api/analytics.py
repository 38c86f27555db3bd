"""The spec's analytics, per model and per workspace, read from the outcome
rollups every worker and replica adds to (docs/operations.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from .. import types as t
from ..catalog import iso
from ..engine.spend import PERIOD_NAMES, workspaces_spent
from ..http import ApiError, Request, Response, Route, json_response
from ..telemetry.figures import NANOS_PER_USD, Cell, Dims, Tally, tally
from ..validation import parse_time

MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
RANGE_MS: dict[t.TimeRange, int] = {
    "1h": HOUR_MS,
    "24h": DAY_MS,
    "7d": 7 * DAY_MS,
    "30d": 30 * DAY_MS,
}
INTERVAL_MS: dict[t.Interval, int] = {
    "1m": MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "1h": HOUR_MS,
    "6h": 6 * HOUR_MS,
    "1d": DAY_MS,
}


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, "validation_error", message, {"in": "query", "field": param})


def _default_interval(span_ms: int) -> t.Interval:
    if span_ms <= 2 * HOUR_MS:
        return "1m"
    return "1h" if span_ms <= 8 * DAY_MS else "1d"


class Window:
    """The buckets an analytics query reads: [from, to) aligned to its interval."""

    def __init__(self, q: t.AnalyticsQuery, minutes_keep_ms: int, now_ms: int):
        if q.time_range is not None and (q.from_ is not None or q.to is not None):
            raise _bad("timeRange", "give timeRange or from/to, not both")
        to_ms = parse_time(q.to, "to") if q.to is not None else now_ms
        if q.from_ is not None:
            from_ms = parse_time(q.from_, "from")
        else:
            from_ms = to_ms - RANGE_MS[q.time_range or "24h"]
        if from_ms >= to_ms:
            raise _bad("from", "from must be before to")
        self.interval: t.Interval = q.interval or _default_interval(to_ms - from_ms)
        self.interval_ms = INTERVAL_MS[self.interval]
        self.resolution = "m" if self.interval_ms < HOUR_MS else "h"
        if self.resolution == "m" and from_ms < now_ms - minutes_keep_ms:
            raise _bad(
                "interval",
                f"minute buckets are kept {minutes_keep_ms // HOUR_MS} h: "
                "use an interval of 1h or more for this range",
            )
        self.from_ms = from_ms - from_ms % self.interval_ms
        self.to_ms = to_ms
        self.time_range = q.time_range if q.from_ is None else None

    def describe(self) -> t.AnalyticsRange:
        return t.AnalyticsRange(
            from_=iso(self.from_ms),
            to=iso(self.to_ms),
            time_range=self.time_range,
            resolution="minute" if self.resolution == "m" else "hour",
            interval=self.interval,
            interval_seconds=self.interval_ms // 1000,
        )

    def point(self, start_ms: int) -> int:
        return start_ms - start_ms % self.interval_ms

    async def cells(self, req: Request) -> list[Cell]:
        return await req.service.store.read_rollups(self.resolution, self.from_ms, self.to_ms)


def _window(req: Request) -> Window:
    keep_ms = req.service.settings.rollup_minutes_keep_hours * HOUR_MS
    return Window(req.query, keep_ms, int(time.time() * 1000))


def _matches(dims: Dims, q: t.AnalyticsQuery, workspace_id: str | None) -> bool:
    return (
        (q.model_id is None or dims["model"] == q.model_id)
        and (workspace_id is None or dims["workspace"] == workspace_id)
        and (q.agent_type is None or dims["agent_type"] == q.agent_type)
        and (q.experiment_id is None or dims["rollout"] == q.experiment_id)
        and (q.variant is None or dims["variant"] == q.variant)
    )


def _by_variant(
    cells: list[Cell], q: t.AnalyticsQuery, keep: Callable[[Dims], bool]
) -> dict[str, t.OutcomeFigures] | None:
    """An experiment's (or canary's) traffic by variant, when one is asked for."""
    if q.experiment_id is None:
        return None
    by = tally(cells, lambda _, d: d["variant"] if keep(d) else None)
    return {v: arm.figures() for v, arm in sorted(by.items())}


def _series(tallies: dict[tuple[str, int], Tally], of: str = "") -> list[t.SeriesPoint]:
    """The points of one group, oldest first."""
    points = sorted((start, v) for (group, start), v in tallies.items() if group == of)
    return [
        t.SeriesPoint(start=iso(start), **msgspec.structs.asdict(tally.figures()))
        for start, tally in points
    ]


def _scoped_workspace(req: Request) -> str | None:
    """The workspace asked for; a scoped key's own, which it may not leave."""
    workspace_id: str | None = req.query.workspace_id
    principal = req.principal
    if principal is not None and principal.workspace_id is not None:
        if workspace_id not in (None, principal.workspace_id):
            raise ApiError(
                403,
                "forbidden",
                f"this key is scoped to workspace {principal.workspace_id!r}",
                {"workspaceId": workspace_id},
            )
        workspace_id = principal.workspace_id
    return workspace_id


async def models(req: Request) -> Response:
    q: t.AnalyticsQuery = req.query
    window = _window(req)
    workspace_id = _scoped_workspace(req)

    def keep(dims: Dims) -> bool:
        return _matches(dims, q, workspace_id)

    cells = await window.cells(req)
    series = tally(cells, lambda s, d: (d["model"], window.point(s)) if keep(d) else None)
    totals = tally(cells, lambda _, d: d["model"] if keep(d) else None)
    body = t.ModelsAnalytics(
        range=window.describe(),
        models=[
            t.ModelAnalytics(model_id=m, totals=totals[m].figures(), series=_series(series, m))
            for m in sorted(totals)
        ],
        by_variant=_by_variant(cells, q, keep),
    )
    return json_response(body)


def _resets_at(now: datetime) -> dict[str, datetime]:
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    next_month = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    return {
        "d": day + timedelta(days=1),
        "w": day + timedelta(days=7 - day.weekday()),
        "m": next_month,
    }


async def _budgets(req: Request, workspace_ids: list[str]) -> dict[str, list[t.BudgetUse]]:
    """Each workspace's spend against each budget, read in one round trip."""
    now = datetime.now(UTC)
    spent = await workspaces_spent(req.service.store, workspace_ids, now)
    resets = _resets_at(now)
    return {w: _budget_uses(req, w, spent[w], resets) for w in workspace_ids}


def _budget_uses(
    req: Request, workspace_id: str, spent: dict[str, int], resets: dict[str, datetime]
) -> list[t.BudgetUse]:
    config = req.service.live.workspaces.get(workspace_id)
    limits = config.budget_limits if config is not None else None
    uses = []
    for period, label in PERIOD_NAMES.items():
        limit = getattr(limits, label, None) if limits is not None else None
        spent_usd = spent[period] / NANOS_PER_USD
        uses.append(
            t.BudgetUse(
                period=label,  # type: ignore[arg-type]
                spent_usd=spent_usd,
                limit_usd=limit,
                remaining_usd=None if limit is None else max(0.0, limit - spent_usd),
                resets_at=iso(int(resets[period].timestamp() * 1000)),
            )
        )
    return uses


async def workspaces(req: Request) -> Response:
    """Every workspace with traffic in the range or a config, each with its
    totals and its spend against each budget; and all the traffic the caller
    may see by agent type (one read of the rollups for a whole dashboard)."""
    q: t.AnalyticsQuery = req.query
    window = _window(req)
    only = _scoped_workspace(req)

    def keep(dims: Dims) -> bool:
        return _matches(dims, q, only)

    cells = await window.cells(req)
    totals = tally(cells, lambda _, d: (d["workspace"] or None) if keep(d) else None)
    by_agent = tally(cells, lambda _, d: d["agent_type"] if keep(d) else None)
    known = set(totals) | set(req.service.live.workspaces)
    ids = sorted(known if only is None else known & {only})
    budgets = await _budgets(req, ids)
    body = t.WorkspacesAnalytics(
        range=window.describe(),
        workspaces=[
            t.WorkspaceSpend(
                workspace_id=w,
                totals=totals.get(w, Tally()).figures(),
                budgets=budgets[w],
            )
            for w in ids
        ],
        by_agent_type={a: v.figures() for a, v in sorted(by_agent.items())},
    )
    return json_response(body)


async def workspace(req: Request) -> Response:
    q: t.AnalyticsQuery = req.query
    workspace_id = req.path_params["workspaceId"]
    window = _window(req)

    def keep(dims: Dims) -> bool:
        return _matches(dims, q, workspace_id)

    cells = await window.cells(req)
    series = tally(cells, lambda s, d: ("", window.point(s)) if keep(d) else None)
    by_model = tally(cells, lambda _, d: d["model"] if keep(d) else None)
    by_agent = tally(cells, lambda _, d: d["agent_type"] if keep(d) else None)
    total = tally(cells, lambda _, d: "" if keep(d) else None)
    body = t.WorkspaceAnalytics(
        workspace_id=workspace_id,
        range=window.describe(),
        budgets=(await _budgets(req, [workspace_id]))[workspace_id],
        totals=total.get("", Tally()).figures(),
        by_model={m: v.figures() for m, v in sorted(by_model.items())},
        by_agent_type={a: v.figures() for a, v in sorted(by_agent.items())},
        series=_series(series),
        by_variant=_by_variant(cells, q, keep),
    )
    return json_response(body)


ROUTES = [
    Route(
        "GET",
        "/api/analytics/models",
        models,
        "Per model: totals and a time series of requests, success, errors, latency, "
        "tokens, cost and failovers (?timeRange=1h|24h|7d|30d or from/to, modelId, "
        "workspaceId, agentType, experimentId, variant, interval); with experimentId, "
        "byVariant",
        "analytics",
        "read",
        query=t.AnalyticsQuery,
        response=t.ModelsAnalytics,
    ),
    Route(
        "GET",
        "/api/analytics/workspaces",
        workspaces,
        "Every workspace with traffic in the range or a config: totals and spend against "
        "each budget; all the traffic by agent type (a workspace-scoped key: its own)",
        "analytics",
        "read",
        query=t.AnalyticsQuery,
        response=t.WorkspacesAnalytics,
    ),
    Route(
        "GET",
        "/api/analytics/workspaces/{workspaceId}",
        workspace,
        "A workspace: spend against each budget, breakdowns by model and agent type "
        "(and by variant, with experimentId), and the time series",
        "analytics",
        "read",
        query=t.AnalyticsQuery,
        response=t.WorkspaceAnalytics,
    ),
]
