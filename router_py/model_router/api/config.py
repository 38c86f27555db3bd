"""Config export and import over HTTP (the CLI shares the same functions)."""

from __future__ import annotations

from .. import types as t
from ..config_io import export_config, import_config
from ..http import Request, Response, Route, json_response


async def export(req: Request) -> Response:
    return json_response(await export_config(req.service.catalog))


async def import_(req: Request) -> Response:
    q: t.ImportQuery = req.query
    body: t.ConfigImport = req.body
    result = await import_config(req.service.catalog, body.config, q.mode, q.dry_run)
    return json_response(result)


ROUTES = [
    Route(
        "GET",
        "/api/config/export",
        export,
        "Export every model, endpoint, rule, preference and workspace config (no secrets)",
        "config",
        "configure",
        response=t.ConfigExport,
    ),
    Route(
        "POST",
        "/api/config/import",
        import_,
        "Import a config, all or nothing (?mode=merge|replace, ?dryRun=true)",
        "config",
        "configure",
        body=t.ConfigImport,
        query=t.ImportQuery,
        response=t.ImportResult,
    ),
]
