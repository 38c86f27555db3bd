"""The route table: every endpoint of the service, gathered from its module."""

from __future__ import annotations

from ..http import Route
from . import (
    agents,
    analytics,
    anthropic_api,
    audit,
    calls,
    config,
    experiments,
    health,
    keys,
    models,
    monitoring,
    openai_api,
    openapi,
    routing,
    rules,
    ui,
)

ROUTES: list[Route] = [
    *health.ROUTES,
    *models.ROUTES,
    *rules.ROUTES,
    *routing.ROUTES,
    *calls.ROUTES,
    *openai_api.ROUTES,
    *anthropic_api.ROUTES,
    *monitoring.ROUTES,
    *analytics.ROUTES,
    *agents.ROUTES,
    *experiments.ROUTES,
    *config.ROUTES,
    *keys.ROUTES,
    *audit.ROUTES,
    *openapi.ROUTES,
    *ui.ROUTES,
]
