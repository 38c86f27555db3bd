"""The route table: every endpoint of the service, gathered from its module."""

from __future__ import annotations

from ..http import Route
from . import agents, calls, config, health, keys, models, monitoring, openapi, routing, rules

ROUTES: list[Route] = [
    *health.ROUTES,
    *models.ROUTES,
    *rules.ROUTES,
    *routing.ROUTES,
    *calls.ROUTES,
    *monitoring.ROUTES,
    *agents.ROUTES,
    *config.ROUTES,
    *keys.ROUTES,
    *openapi.ROUTES,
]
