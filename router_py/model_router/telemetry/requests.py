"""What happens after each routed request: one JSON log line, the Prometheus
samples, and an entry in the shared list of recent requests.

Nothing here waits on the network: recent requests are buffered and pushed to
the store once a second, with the engine's rule match counts and health scores
copied into their gauges on the same beat.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import msgspec

from .. import types as t
from .._core import Engine
from ..store import Store
from . import metrics

log = logging.getLogger("model_router.requests")


class RequestObserver:
    def __init__(self, store: Store, engine: Engine, keep: int, interval_ms: int = 1000):
        self.store = store
        self.engine = engine
        self.keep = keep
        self.interval_ms = interval_ms
        self._pending: deque[bytes] = deque(maxlen=keep)

    def observe(
        self,
        summary: t.RecentRequest,
        attempts: list[t.AttemptReport] = (),  # type: ignore[assignment]
        prompt: str | None = None,
        reply: str | None = None,
    ) -> None:
        model = summary.model_id or "none"
        for a in attempts:
            metrics.ATTEMPTS.labels(a.model_id, a.endpoint_id, a.outcome).inc()
        metrics.REQUESTS.labels(model, str(summary.status)).inc()
        metrics.REQUEST_DURATION.labels(summary.route).observe(summary.latency_ms / 1000)
        metrics.OVERHEAD.observe(max(0.0, summary.latency_ms - summary.upstream_ms) / 1000)
        if summary.model_id:
            metrics.UPSTREAM_DURATION.labels(model).observe(summary.upstream_ms / 1000)
            metrics.TOKENS.labels(model, "prompt").inc(summary.prompt_tokens)
            metrics.TOKENS.labels(model, "completion").inc(summary.completion_tokens)
            metrics.COST.labels(model).inc(summary.cost)
        self._pending.append(msgspec.json.encode(summary))
        if log.isEnabledFor(logging.INFO):
            extra = {
                "requestId": summary.request_id,
                "route": summary.route,
                "workspaceId": summary.workspace_id,
                "agentType": summary.agent_type,
                "modelId": summary.model_id,
                "endpointId": summary.endpoint_id,
                "status": summary.status,
                "latency": round(summary.latency_ms, 3),
                "upstreamMs": round(summary.upstream_ms, 3),
                "tokens": summary.prompt_tokens + summary.completion_tokens,
                "cost": summary.cost,
                "attempts": summary.attempts,
            }
            if log.isEnabledFor(logging.DEBUG):
                extra |= {"prompt": prompt, "response": reply}
            message = "Request routed successfully" if summary.status == 200 else "Request failed"
            log.info(message, extra=extra)

    async def flush(self) -> None:
        for rule_id, name, count in self.engine.rule_matches():
            metrics.RULE_MATCHES.labels(rule_id, name).set(count)
        for model, score in self.engine.health_scores():
            metrics.HEALTH_SCORE.labels(model).set(score)
        if not self._pending:
            return
        items, self._pending = list(self._pending), deque(maxlen=self.keep)
        try:
            await self.store.push_recent(items, self.keep)
        except BaseException:
            self._pending.extendleft(reversed(items))  # try again next time
            raise

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_ms / 1000)
            try:
                await self.flush()
            except Exception:
                log.exception("recent-request flush failed; will retry")
