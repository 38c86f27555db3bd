"""What happens after each routed request: one JSON log line, the Prometheus
samples, and an entry in the shared list of recent requests.

None of it is done on the request path: it runs just after the response has
been handed to the server (`call_soon`). The log line is built then and
written with others within WRITE_BEAT_S (telemetry/logging.py); recent
requests are gathered and go to the store every RECORDS_FLUSH_MS, so a worker
killed outright loses at most that much of them; metric samples go out once a
second, with the engine's rule match counts and health scores copied into
their gauges on the same beat. While the store is away the records wait,
the newest `keep` of them (all the store would keep). A clean stop flushes
everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence

import msgspec

from .. import types as t
from .._core import Engine
from ..experiments.routing import Arm
from ..experiments.tally import TallySync
from ..store import Store
from . import metrics
from .logging import STDERR, Timestamps, json_line

log = logging.getLogger("model_router.requests")
_LEVELS = {
    level: logging.getLevelName(level).lower()
    for level in (logging.INFO, logging.WARNING, logging.ERROR)
}

REJECTED_LINES_PER_S = 10

# How often recent requests go to the store: the most a `kill -9` loses.
RECORDS_FLUSH_MS = 100


class RequestObserver:
    def __init__(self, store: Store, engine: Engine, keep: int):
        self.store = store
        self.engine = engine
        self.keep = keep
        self._pending: deque[bytes] = deque(maxlen=keep)
        self.arms = TallySync(store)  # canary and experiment outcomes
        self._metrics = metrics.MetricBatch()
        self._rejected_second, self._rejected_lines, self._rejected_dropped = 0, 0, 0
        self._timestamps = Timestamps()

    def observe(
        self,
        summary: t.RecentRequest,
        attempts: list[t.AttemptReport] = (),  # type: ignore[assignment]
        prompt: str | None = None,
        reply: str | None = None,
        arm: Arm | None = None,
    ) -> None:
        """Account a finished request, just after its response is handed over."""
        asyncio.get_running_loop().call_soon(self.account, summary, attempts, prompt, reply, arm)

    def account(
        self,
        summary: t.RecentRequest,
        attempts: list[t.AttemptReport],
        prompt: str | None,
        reply: str | None,
        arm: Arm | None,
    ) -> None:
        if arm is not None:
            self.arms.record(arm, summary)
        model = summary.model_id or "none"
        m = self._metrics
        for a in attempts:
            m.inc(metrics.ATTEMPTS, (a.model_id, a.endpoint_id, a.outcome))
        m.inc(metrics.REQUESTS, (model, str(summary.status)))
        m.observe(metrics.REQUEST_DURATION, (summary.route,), summary.latency_ms / 1000)
        m.observe(metrics.OVERHEAD, (), max(0.0, summary.latency_ms - summary.upstream_ms) / 1000)
        if summary.model_id:
            m.observe(metrics.UPSTREAM_DURATION, (model,), summary.upstream_ms / 1000)
            m.inc(metrics.TOKENS, (model, "prompt"), summary.prompt_tokens)
            m.inc(metrics.TOKENS, (model, "completion"), summary.completion_tokens)
            m.inc(metrics.COST, (model,), summary.cost)
        self._pending.append(msgspec.json.encode(summary))
        if self.writes_lines():
            self._log_line(summary, prompt, reply, arm)

    def door_buckets(self) -> tuple[list[float], ...] | None:
        """The buckets with which the door accounts the calls whose strings
        need no masking itself (`Door.take`); None at DEBUG, where a line
        shows the reply and Python accounts every call."""
        return None if self.logs_replies() else metrics.DOOR_BUCKETS

    def writes_lines(self) -> bool:
        """Whether routed requests get a line (LOG_LEVEL info or debug)."""
        return log.isEnabledFor(logging.INFO)

    def logs_replies(self) -> bool:
        """Whether a request's line shows its reply (at DEBUG)."""
        return log.isEnabledFor(logging.DEBUG)

    def served_by_door(
        self, summary: t.RecentRequest, attempts: list[t.AttemptReport], reply: str | None
    ) -> None:
        """Account a call the front door served (door_calls.py) that it left to Python."""
        self._metrics.inc(metrics.DOOR_CALLS, (str(summary.status),))
        self.account(summary, attempts, None, reply, None)

    def accounted_by_door(
        self,
        records: list[bytes],
        counts: Sequence[Mapping[tuple[str, ...], float]],
        observed: Sequence[Mapping[tuple[str, ...], list[float]]],
    ) -> None:
        """Take in what the door accounted itself of the calls it served:
        their records and metric samples (their lines it has written)."""
        self._metrics.merge(counts, observed)  # first: it may refuse the lot
        self._pending.extend(records)

    def _log_line(
        self, summary: t.RecentRequest, prompt: str | None, reply: str | None, arm: Arm | None
    ) -> None:
        """The request's JSON line, as `log` would write it, without `logging`'s
        record, handler and write per line: built here and buffered (see
        telemetry/logging.py)."""
        fields = {
            "requestId": summary.request_id,
            "route": summary.route,
            "workspaceId": summary.workspace_id,
            "agentType": summary.agent_type,
            "userId": summary.user_id,
            "modelId": summary.model_id,
            "endpointId": summary.endpoint_id,
            "status": summary.status,
            "latency": round(summary.latency_ms, 3),
            "upstreamMs": round(summary.upstream_ms, 3),
            "tokens": summary.prompt_tokens + summary.completion_tokens,
            "cost": summary.cost,
            "attempts": summary.attempts,
        }
        if arm is not None:
            fields["experimentId"] = summary.experiment_id
            fields["canaryId"] = summary.canary_id
            fields["variant"] = summary.variant
        if self.logs_replies():
            fields |= {"prompt": prompt, "response": reply}
        if summary.status == 200:
            level, message = logging.INFO, "Request routed successfully"
        elif summary.outcome == "cancelled":  # a whole answer's caller left (499)
            level, message = logging.INFO, "Request cancelled: the caller left"
        else:  # the caller's fault is a warning, the router's or a provider's an error
            level = logging.WARNING if summary.status < 500 else logging.ERROR
            message = "Request failed"
        stamp = self._timestamps(time.time())
        STDERR.add(json_line(stamp, _LEVELS[level], log.name, message, fields) + b"\n")

    def flush_log(self) -> None:
        """Write the request lines still buffered (a forked worker's exit runs
        no atexit hook)."""
        STDERR.write()

    def rejected(self, method: str, path: str, status: int, kind: str, request_id: str) -> None:
        """A request the router refused itself (401, 403, 404, 413, 429...):
        counted, and a warning line, at most REJECTED_LINES_PER_S a second
        (a flood of bad requests must not flood the log)."""
        self._metrics.inc(metrics.REJECTED, (str(status), kind))
        second = int(time.monotonic())
        if second != self._rejected_second:
            if self._rejected_dropped:
                log.warning("%d more rejected requests not logged", self._rejected_dropped)
            self._rejected_second, self._rejected_lines, self._rejected_dropped = second, 0, 0
        if self._rejected_lines >= REJECTED_LINES_PER_S:
            self._rejected_dropped += 1
            return
        self._rejected_lines += 1
        extra = {"requestId": request_id, "method": method, "path": path[:200], "status": status}
        log.warning("Request rejected: %s", kind, extra=extra)

    async def flush_metrics(self) -> None:
        self._metrics.flush()
        for rule_id, name, count in self.engine.rule_matches():
            metrics.RULE_MATCHES.labels(rule_id, name).set(count)
        for model, score in self.engine.health_scores():
            metrics.HEALTH_SCORE.labels(model).set(score)
        for model, endpoint, state in self.engine.breaker_states():
            metrics.BREAKER_STATE.labels(model, endpoint).set(metrics.BREAKER_STATES[state])

    async def flush_records(self) -> None:
        if not self._pending:
            return
        items, self._pending = list(self._pending), deque(maxlen=self.keep)
        try:
            await self.store.push_recent(items, self.keep)
        except BaseException:
            # Try again next time, keeping the newest `keep` (deque drops the oldest).
            self._pending = deque([*items, *self._pending], maxlen=self.keep)
            raise
