"""The route table: every endpoint of the service, gathered from its module."""

from __future__ import annotations

from ..http import Route
from . import agents, config, health, keys, models, openapi, routing, rules

ROUTES: list[Route] = [
    *health.ROUTES,
    *models.ROUTES,
    *rules.ROUTES,
    *routing.ROUTES,
    *agents.ROUTES,
    *config.ROUTES,
    *keys.ROUTES,
    *openapi.ROUTES,
]
