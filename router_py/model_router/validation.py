"""Checks that span more than one field or document: what a Struct alone
cannot say. Each returns problems (field, message) so that an import can
report all of them at once; the API raises the first as a 400."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from . import types as t
from .http import ApiError


@dataclass(frozen=True)
class Problem:
    field: str
    message: str


def rule_problems(
    target_models: list[t.TargetModel],
    traffic_split: t.TrafficSplit | None,
    condition: t.RuleCondition,
    model_ids: Collection[str],
    prefix: str = "",
) -> list[Problem]:
    problems = [
        Problem(f"{prefix}targetModels[{i}].modelId", f"unknown model {target.model_id!r}")
        for i, target in enumerate(target_models)
        if target.model_id not in model_ids
    ]
    seen: set[str] = set()
    for i, target in enumerate(target_models):
        if target.model_id in seen:
            problems.append(
                Problem(f"{prefix}targetModels[{i}].modelId", f"model {target.model_id!r} twice")
            )
        seen.add(target.model_id)
    split = None if traffic_split is None else traffic_split.primary + traffic_split.canary
    if split is not None and abs(split - 100) > 1e-9:
        problems.append(
            Problem(f"{prefix}trafficSplit", f"primary + canary must be 100, not {split:g}")
        )
    problems += _split_problems(target_models, traffic_split, prefix)
    length = condition.content_length
    if length is not None and None not in (length.min, length.max):
        assert length.min is not None and length.max is not None
        if length.min > length.max:
            problems.append(Problem(f"{prefix}condition.contentLength", "min must not exceed max"))
    return problems


def _split_problems(
    targets: list[t.TargetModel], split: t.TrafficSplit | None, prefix: str
) -> list[Problem]:
    """A traffic split that could not apply is refused, never ignored: it
    needs a primary and a canary side (by role, or the first target by
    fallbackOrder against the rest), and canary roles need a split."""
    canaries = sum(target.role == "canary" for target in targets)
    if split is None:
        if canaries:
            return [
                Problem(f"{prefix}trafficSplit", "targets with role canary need a trafficSplit")
            ]
        return []
    if len(targets) < 2:
        return [Problem(f"{prefix}trafficSplit", "a traffic split needs two targets at least")]
    if canaries == len(targets):
        return [Problem(f"{prefix}targetModels", "a traffic split needs a primary target as well")]
    return []


def reference_problems(ids: Iterable[str], model_ids: Collection[str], field: str) -> list[Problem]:
    return [
        Problem(f"{field}[{i}]", f"unknown model {id!r}")
        for i, id in enumerate(ids)
        if id not in model_ids
    ]


def preference_problems(
    prefs: t.AgentPreferencesBody | t.AgentPreferences, model_ids: Collection[str], prefix: str = ""
) -> list[Problem]:
    return reference_problems(
        prefs.preferred_models, model_ids, f"{prefix}preferredModels"
    ) + reference_problems(prefs.fallback_models, model_ids, f"{prefix}fallbackModels")


def raise_problems(problems: list[Problem]) -> None:
    if problems:
        first = problems[0]
        raise ApiError(
            400,
            "validation_error",
            f"invalid body: {first.message} - at `$.{first.field}`",
            {
                "in": "body",
                "field": first.field,
                "problems": [{"field": p.field, "message": p.message} for p in problems],
            },
        )


def path_id(value: str, field: str) -> str:
    """A path segment that names something to create must be a valid id."""
    try:
        return msgspec.convert(value, t.Id)
    except msgspec.ValidationError as exc:
        raise ApiError(
            400,
            "validation_error",
            f"invalid path: {field} {exc}",
            {"in": "path", "field": field},
        ) from None


# The instants a timestamp can be written as (catalog.iso): years 1 to 9999 in UTC.
EARLIEST_MS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
LATEST_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC).timestamp() * 1000)


def parse_time(value: str, field: str, where: str = "query") -> int:
    """An ISO 8601 time from a client, in ms since the epoch (no offset: UTC);
    a 400 naming the field when it is not one, or lies outside the years 1 to
    9999 once moved to UTC (9999-12-31T23:59:59-01:00 does)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is not None:
        ms = int(moment.replace(tzinfo=moment.tzinfo or UTC).timestamp() * 1000)
        if EARLIEST_MS <= ms <= LATEST_MS:
            return ms
    raise ApiError(
        400,
        "validation_error",
        f"{field}: {value!r} is not an ISO 8601 time between the years 1 and 9999 UTC"
        " (e.g. 2026-01-31T12:00:00Z)",
        {"in": where, "field": field},
    )
