"""The routed calls the door serves itself (docs/data-plane.md, step 3),
seen from the app: the plan it serves them from, installed after every
config check, and the accounting of what it served, taken in batches.

The door serves an OpenAI chat completion, whole, with an API key, when
every model a chat call may be routed to speaks OpenAI's format (over
`http://` or `https://`; core_rs/src/routed.rs says what else it leaves to
the app). It accounts the calls whose strings need no masking itself
(`Door.take`: their log lines, records and metric samples, as the app's
accounting makes them), and the app accounts the others here
(`RequestObserver.account`): the same metrics, log line and record either
way. A call it admitted and could
not answer comes to the app with its verdict (`DOOR_VERDICT_HEADER`), from
which the app renders the error (`failed_at_door`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec

from . import _core
from . import types as t
from .engine.exchanges import Format
from .engine.executor import CallFailed, Executor
from .engine.providers import ADAPTERS, api_key
from .engine.upstream import _locate
from .engine.write_counter import counter_path
from .http import new_id
from .ratelimit import Verdict
from .telemetry.logging import STDERR, Timestamps

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("model_router.door")

VERDICT_HEADER: str = _core.DOOR_VERDICT_HEADER
# The model types a chat call may be routed to (Operation.CHAT's).
CHAT_MODEL_TYPES = frozenset({"chat", "multimodal"})
ROUTE = "/v1/chat/completions"
# The door's calls are accounted at most this often: under load one wake of
# the loop accounts many (their records, log lines and metrics go out on
# beats of their own anyway).
BATCH_S = 0.002


class DoorRefusal(msgspec.Struct, rename="camel"):
    """A provider's answer that is the caller's error (a 4xx that does not
    fail over): its status and body, in hex."""

    status: int
    body: str


class DoorTries(msgspec.Struct, rename="camel"):
    """What the door's attempts at a call came to."""

    attempts: list[t.AttemptReport]
    upstream_ms: float
    retry_after_ms: list[int]
    deadline_passed: bool
    client_error: DoorRefusal | None = None


class DoorVerdict(msgspec.Struct, rename="camel"):
    """The door admitted the call: how long it had it, the key's rate limit
    it spent (limit, remaining, seconds to the window's end), and what it
    tried (None: nothing; the app routes it)."""

    elapsed_ms: float
    rate_limit: tuple[int, int, int] | None = None
    tries: DoorTries | None = None

    def limits(self) -> list[tuple[str, str]]:
        """The X-RateLimit-* headers of the admission the door spent."""
        if self.rate_limit is None:
            return []
        limit, remaining, reset_s = self.rate_limit
        return Verdict(True, limit, remaining, reset_s).headers()


_decode_verdict = msgspec.json.Decoder(DoorVerdict).decode
_ModelPlan = tuple[str, str, list[str], list["_core._PlanEndpoint"]]


def read_verdict(value: str) -> DoorVerdict | None:
    """The verdict in the door's header; None, logged, if it is not one (the
    app then serves the call as any other)."""
    try:
        return _decode_verdict(value)
    except msgspec.DecodeError as exc:
        log.error("the door's verdict is unreadable: %s", exc)
        return None


def failed_at_door(executor: Executor, tries: DoorTries) -> CallFailed:
    """The error for a call whose attempts the door made (and recorded in
    the engine): as if this worker had made them."""
    refusal = tries.client_error
    if refusal is not None:
        return executor.client_error(refusal.status, tries.attempts, bytes.fromhex(refusal.body))
    return executor.failed(tries.attempts, tries.retry_after_ms, tries.deadline_passed)


class DoorCalls:
    """The door's routed calls in one worker: `install` after every config
    check, `start` to account what it serves, `finish` once it is drained."""

    def __init__(self, door: _core.Door, service: Service, clients: _core.Clients):
        self.door = door
        self.service = service
        self.clients = clients
        self._timestamps = Timestamps()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: asyncio.TimerHandle | None = None
        self._failure: str | None = None  # why the last install failed, logged once
        self._finished = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.door.fileno(), self._woken)
        self.service.live.on_checked.append(self.install)
        self.install()

    def _woken(self) -> None:
        """The door queued a call: account it, and those that follow within
        BATCH_S, in one turn of the loop."""
        assert self._loop is not None
        self._loop.remove_reader(self.door.fileno())
        self._batch = self._loop.call_later(BATCH_S, self._batched)

    def _batched(self) -> None:
        assert self._loop is not None
        self._batch = None
        try:
            self.account()
        finally:
            self._loop.add_reader(self.door.fileno(), self._woken)

    def finish(self) -> None:
        """The door has stopped: account its last calls (no lease is topped
        up any more: the store is closing)."""
        self._finished = True
        self.door.withdraw()
        if self._loop is not None:
            self._loop.remove_reader(self.door.fileno())
        if self._batch is not None:
            self._batch.cancel()
        self.account()

    def install(self) -> None:
        """The door's plan from the live config, or none (the app serves
        every call) while any model a chat call may reach is not the door's
        to call, or the plan cannot be made."""
        try:
            models = None if self._finished else self._models()
            if models is None:
                self.door.withdraw()
            else:
                self._install(models)
            self._failure = None
        except Exception as exc:  # a config the door cannot read (a bad URL, key file)
            self.door.withdraw()
            failure = f"{type(exc).__name__}: {exc}"
            if failure != self._failure:
                log.error("the door serves no routed call until the config is fixed: %s", failure)
            self._failure = failure

    def _models(self) -> list[_ModelPlan] | None:
        live, executor = self.service.live, self.service.executor
        if live.version < 0 or live.reset is not None:
            return None
        models: list[_ModelPlan] = []
        for model in live.models.values():
            if model.model_type not in CHAT_MODEL_TYPES:
                continue
            adapter = ADAPTERS[model.provider]
            if adapter.format is not Format.OPENAI:
                return None
            endpoints: list[_core._PlanEndpoint] = []
            for endpoint in model.endpoints:
                (scheme, host, port), target, authority = _locate(endpoint.url)
                if scheme not in ("http", "https"):
                    return None
                key = (
                    adapter.key_header,
                    adapter.key_prefix,
                    api_key(endpoint) if not endpoint.api_key_file else None,
                    endpoint.api_key_file,  # read by the door, as `api_key` reads it
                )
                timeouts = executor.timeouts.of(endpoint)
                waits = (
                    timeouts.connect_ms,
                    timeouts.first_byte_ms,
                    timeouts.attempt_ms,
                    timeouts.first_token_ms,
                    timeouts.stream_idle_ms,
                )
                where = (scheme == "https", host, port, target, authority)
                endpoints.append((endpoint.id, where, key, waits))
            models.append((model.id, model.version, list(model.drop_params), endpoints))
        return models

    def _install(self, models: list[_ModelPlan]) -> None:
        service = self.service
        live, settings = service.live, service.settings
        held = [
            workspace
            for workspace in live.workspaces
            if service.budgets.applies(workspace) or service.workspace_limits.applies(workspace)
        ]
        self.door.install(
            live.key_table,
            live.engine,
            self.clients,
            service.limiter.leases,
            counter_path(settings.port),
            live.writes_seen,
            live.model_names,
            sorted(live.agent_types),
            models,
            held,
            live.rollouts is not None,
            settings.rate_limit_max,
            settings.rate_limit_window_ms,
            settings.max_attempts,
            settings.request_timeout_ms,
            settings.max_upstream_body_bytes,
            settings.upstream_pool,
            settings.client_address_header,
        )

    def account(self) -> None:
        """Account the calls the door finished, and top up the leases it half spent."""
        service = self.service
        observer = service.observer
        calls, top_ups, (lines, records, counts, observed) = self.door.take(
            observer.door_buckets(), observer.writes_lines(), observer.logs_replies()
        )
        for key_id, window, limit, now_ms in top_ups if not self._finished else ():
            service.limiter.refill((key_id, window), limit, now_ms)
        STDERR.extend(lines)
        try:
            observer.accounted_by_door(records, counts, observed)
        except Exception:  # a bug here must not lose the calls left to Python
            log.exception("the calls the door accounted could not be taken in")
        for call in calls:
            try:
                self._account(call)
            except Exception:  # one call's bug must not lose the rest of the batch
                log.exception("a call the door served could not be accounted")

    def _account(self, call: _core._DoorCall) -> None:
        summary, attempts = summary_of(call, self._timestamps)
        self.service.observer.served_by_door(summary, attempts, call[3])


def summary_of(
    call: _core._DoorCall, timestamps: Timestamps
) -> tuple[t.RecentRequest, list[t.AttemptReport]]:
    """The record of a call the door served, as the app's path makes one
    of a call it serves, and the call's attempts."""
    names, figures, tried, _ = call
    request_id, workspace_id, agent_type, user_id, model_id, endpoint_id = names
    status, outcome, latency_ms, upstream_ms, prompt, completion, cost, estimated = figures[:8]
    ended, stream = figures[8:]
    attempts = [t.AttemptReport(*attempt) for attempt in tried]
    # The record names no provider's message: the same reports when none has one.
    details = attempts
    if any(a.error is not None for a in attempts):
        details = [msgspec.structs.replace(a, error=None) for a in attempts]
    summary = t.RecentRequest(
        id=new_id(),
        request_id=request_id,
        timestamp=timestamps(ended / 1000),
        route=ROUTE,
        workspace_id=workspace_id,
        agent_type=agent_type,
        model_id=model_id,
        endpoint_id=endpoint_id,
        status=status,
        outcome=outcome,
        latency_ms=latency_ms,
        upstream_ms=upstream_ms,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=cost / 1e9,
        estimated=estimated,
        attempts=len(attempts),
        stream=stream,
        user_id=user_id,
        attempt_details=details,
    )
    return summary, attempts
