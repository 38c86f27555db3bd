"""Config export and import, shared by the admin API and the CLI.

Export holds every model, endpoint, rule, agent preference and workspace
config, and no secret (keys are not config). Import validates the whole
document against the state it would produce, then writes it in one atomic
store operation: all or nothing. ``merge`` upserts what the document holds;
``replace`` makes the stored config exactly the document. An applied import
starts a new config epoch: it is how an operator hands a reset store back to
the routers, which adopt an imported epoch and no other new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from . import types as t
from .catalog import (
    AGENTS,
    CONFIG_KINDS,
    ENDPOINTS,
    HEALTH,
    MODELS,
    RULES,
    WORKSPACES,
    Catalog,
    Kind,
    utcnow,
)
from .store import Clear, Delete, Op, Put, SetEpoch, new_epoch
from .validation import Problem, preference_problems, raise_problems, rule_problems

Mode = Literal["merge", "replace"]

# The document's section for each kind, as named on the wire.
SECTIONS = {
    MODELS.name: "models",
    ENDPOINTS.name: "endpoints",
    RULES.name: "routingRules",
    AGENTS.name: "agentPreferences",
    WORKSPACES.name: "workspaceConfigs",
}
_TIMESTAMPS = ("createdAt", "updatedAt")


async def export_config(catalog: Catalog) -> t.ConfigExport:
    version = await catalog.store.version()
    models = sorted(await catalog.all(MODELS), key=lambda m: m.id)
    endpoints = sorted(await catalog.all(ENDPOINTS), key=lambda e: e.id)
    rules = sorted(await catalog.all(RULES), key=lambda r: r.id)
    agents = {a.agent_type: _body_of(a, t.AgentPreferencesBody) for a in await catalog.all(AGENTS)}
    workspaces = {
        w.workspace_id: _body_of(w, t.WorkspaceConfigBody) for w in await catalog.all(WORKSPACES)
    }
    return t.ConfigExport(
        config=t.ConfigDocument(
            models=models,
            endpoints=endpoints,
            routing_rules=rules,
            agent_preferences=dict(sorted(agents.items())),
            workspace_configs=dict(sorted(workspaces.items())),
        ),
        config_version=version,
        exported_at=utcnow(),
    )


def _body_of(doc: msgspec.Struct, body_type: type[Any]) -> Any:
    """The settable part of a stored document (without its key and timestamp)."""
    fields = msgspec.structs.asdict(doc)
    return body_type(**{f: fields[f] for f in body_type.__struct_fields__})


@dataclass
class _Section:
    kind: Kind[Any]
    desired: dict[str, msgspec.Struct]


def _sections(doc: t.ConfigDocument, now: str) -> list[_Section]:
    def stamp(struct: Any, **fields: Any) -> Any:
        return msgspec.structs.replace(struct, **fields)

    return [
        _Section(
            MODELS,
            {
                m.id: stamp(m, created_at=m.created_at or now, updated_at=m.updated_at or now)
                for m in doc.models
            },
        ),
        _Section(
            ENDPOINTS, {e.id: stamp(e, created_at=e.created_at or now) for e in doc.endpoints}
        ),
        _Section(
            RULES,
            {
                r.id: stamp(r, created_at=r.created_at or now, updated_at=r.updated_at or now)
                for r in doc.routing_rules
            },
        ),
        _Section(
            AGENTS,
            {
                agent: t.AgentPreferences(
                    agent_type=agent, updated_at=now, **msgspec.structs.asdict(prefs)
                )
                for agent, prefs in doc.agent_preferences.items()
            },
        ),
        _Section(
            WORKSPACES,
            {
                ws: t.WorkspaceConfig(
                    workspace_id=ws, updated_at=now, **msgspec.structs.asdict(cfg)
                )
                for ws, cfg in doc.workspace_configs.items()
            },
        ),
    ]


def _duplicates(section: str, ids: list[str]) -> list[Problem]:
    seen: set[str] = set()
    problems = []
    for i, id in enumerate(ids):
        if id in seen:
            problems.append(Problem(f"config.{section}[{i}].id", f"id {id!r} appears twice"))
        seen.add(id)
    return problems


def _content(raw: bytes) -> dict[str, Any]:
    """A stored document without its timestamps: what an import compares."""
    doc = msgspec.json.decode(raw)
    for key in _TIMESTAMPS:
        doc.pop(key, None)
    return doc


async def import_config(
    catalog: Catalog, doc: t.ConfigDocument, mode: Mode, dry_run: bool
) -> t.ImportResult:
    now = utcnow()
    problems = _duplicates("models", [m.id for m in doc.models])
    problems += _duplicates("endpoints", [e.id for e in doc.endpoints])
    problems += _duplicates("routingRules", [r.id for r in doc.routing_rules])
    current = {kind.name: await catalog.store.get_all(kind.name) for kind in CONFIG_KINDS}
    sections = _sections(doc, now)

    model_ids = {m.id for m in doc.models}
    if mode == "merge":  # merging never removes a model, so stored references stay valid
        model_ids |= set(current[MODELS.name])
    for i, endpoint in enumerate(doc.endpoints):
        if endpoint.model_id not in model_ids:
            problems.append(
                Problem(f"config.endpoints[{i}].modelId", f"unknown model {endpoint.model_id!r}")
            )
    for i, rule in enumerate(doc.routing_rules):
        problems += rule_problems(
            rule.target_models,
            rule.traffic_split,
            rule.condition,
            model_ids,
            f"config.routingRules[{i}].",
        )
    for agent, prefs in doc.agent_preferences.items():
        problems += preference_problems(prefs, model_ids, f"config.agentPreferences.{agent}.")
    raise_problems(problems)

    ops: list[Op] = []
    changes: dict[str, t.KindChanges] = {}
    for section in sections:
        kind, stored = section.kind, current[section.kind.name]
        report = changes[SECTIONS[kind.name]] = t.KindChanges()
        if mode == "replace":
            ops.append(Clear(kind.name, before=stored))
            report.deleted = sorted(set(stored) - set(section.desired))
        for id, struct in sorted(section.desired.items()):
            body = kind.encode(struct)
            old = stored.get(id)
            if old is not None and _content(old) == _content(body):
                report.unchanged += 1
                if mode == "merge":
                    continue
                body = old  # replace rewrites it; keep its timestamps
            elif old is None:
                report.created.append(id)
            else:
                report.updated.append(id)
            ops.append(Put(kind.name, id, body))
    if mode == "replace":
        ops += [Delete(HEALTH.name, id) for id in changes["models"].deleted]
    applied = not dry_run and bool(ops)
    if applied:
        version = await catalog.apply([*ops, SetEpoch(new_epoch("imported"))])
    else:
        version = await catalog.store.version()
    return t.ImportResult(
        dry_run=dry_run, mode=mode, applied=applied, config_version=version, changes=changes
    )
