"""Executing a decision: call the first candidate, fail over down the list.

Attempts go through each candidate model's endpoints in the engine's order,
then on to the next model, up to `max_attempts`, within the request's deadline.
A connect error, a timeout, a 5xx, a 408/409/429, a 401/403 (the provider
rejected *our* key) or an answer we cannot read — anything at all going
wrong while reading or translating it — fails over; any other 4xx is the
caller's and goes back without failover. Every attempt is recorded in the
engine (breaker, stats, cost). A stream fails over only until its first byte
is sent to the client. A candidate that cannot take the request (a parameter
its provider lacks, an operation it does not serve) is skipped without being
charged; when no candidate could, the caller gets a 400 naming the parameter.
Which statuses fail over, and a provider's Retry-After, are the core's
(`core_rs/src/failover.rs`), as the door will read them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .. import types as t
from .._core import FAILOVER_OUTCOMES, HEALTHY_OUTCOMES, Decision, answer_outcome
from .._core import retry_after_ms as _retry_after_ms
from ..experiments.routing import Arm, Candidates
from ..ratelimit import retry_after
from .budgets import BudgetLeases, BudgetRefused, Hold, prompt_tokens_at_most
from .exchanges import Answer, Exchange, Operation, StreamReader
from .inputs import ERROR_STATUS, error_details
from .live import LiveConfig
from .providers import ADAPTERS
from .sse import EventReader
from .translate import Refused, Tokens
from .upstream import Deadlines, UpstreamClient, UpstreamRequest, UpstreamStream
from .workspace_limits import NeverFits, TokenHold, WorkspaceLimited, WorkspaceLimits

log = logging.getLogger("model_router.executor")

NO_HOLD = Hold("", 0)  # nothing reserved: no budget, or the store is away


@dataclass(frozen=True)
class Holds:
    """What a call reserved before it started: budget money, minute tokens."""

    budget: Hold = NO_HOLD
    tokens: TokenHold | None = None


# A call let through: its decision and what it holds, until `complete` settles them.
Admitted = tuple[Decision, Holds]


@dataclass
class Call:
    """One request to route: the front door's body, as sent, plus the
    routing inputs."""

    request_id: str
    agent_type: str
    workspace_id: str | None
    user_id: str | None
    request_type: str
    operation: Operation
    raw: bytes  # the body as sent
    body: dict[str, Any]  # the body as read
    content_length: int
    deadline: float  # time.monotonic()
    model: str | None = None
    capabilities: list[str] | None = None
    metadata: dict[str, Any] | None = None
    forwarded: Mapping[str, str] = field(default_factory=dict)  # caller headers for providers
    arm: Arm | None = None  # its part in a canary or experiment
    candidates: Candidates | None = None  # the arm's order, when it has one


@dataclass
class Usage:
    tokens: Tokens = field(default_factory=Tokens)
    cost_nanos: int = 0
    estimated: bool = False

    @property
    def prompt_tokens(self) -> int:
        return self.tokens.prompt or 0

    @property
    def completion_tokens(self) -> int:
        return self.tokens.completion or 0


@dataclass
class Result:
    model_id: str
    endpoint_id: str
    attempts: list[t.AttemptReport]
    usage: Usage
    upstream_ms: float
    rule_id: str | None
    answer: Answer | None = None


class CallCancelled(asyncio.CancelledError):
    """A whole call cancelled (its caller left, the server stopping): still a
    cancellation to every layer above, and what its attempts came to, the
    one cut short recorded as `cancelled` with the usage it was sent with."""

    def __init__(self, tries: _Tries):
        super().__init__()
        self.attempts = tries.attempts
        self.usage = tries.cut_short
        self.upstream_ms = tries.upstream_ms


class CallFailed(Exception):
    """No answer for the caller: the status, why, and what was tried."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        attempts: list[t.AttemptReport] | None = None,
        details: dict[str, Any] | None = None,
        upstream_body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.attempts = attempts or []
        self.details = details
        self.upstream_body = upstream_body
        self.headers = headers or []
        self.param = param
        self.code = code


def retry_after_ms(headers: dict[str, str]) -> int | None:
    value = headers.get("retry-after")
    return _retry_after_ms(value, int(time.time() * 1000)) if value else None


def retry_after_header(ms: int) -> tuple[str, str]:
    return ("retry-after", retry_after(ms / 1000))


def estimate_tokens(chars: int) -> int:
    return max(1, (chars + 3) // 4) if chars else 0


@dataclass
class _Attempt:
    model_id: str
    endpoint: t.Endpoint
    started: float = field(default_factory=time.perf_counter)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    ttft_ms: float | None = None  # a stream's time to its first content

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


@dataclass
class _Tries:
    """What the attempts of one request came to, for the answer when all fail."""

    attempts: list[t.AttemptReport] = field(default_factory=list)
    refused: Refused | None = None  # why the first skipped candidate could not take it
    upstream_ms: float = 0.0
    retry_after: list[int] = field(default_factory=list)
    rule_id: str | None = None  # the rule that chose the candidates, for the rollups
    cut_short: Usage | None = None  # what an attempt cancelled mid-way was sent with


@dataclass(frozen=True)
class Timeouts:
    """How long each wait of an attempt may last (ms): an endpoint's own
    setting wins, and every one is capped by the request's deadline."""

    connect_ms: int = 5_000
    first_byte_ms: int = 30_000  # until the answer's head
    attempt_ms: int = 30_000  # a whole answer (not streamed)
    first_token_ms: int = 30_000  # a stream, until its first content
    stream_idle_ms: int = 30_000  # a stream, between two chunks

    def of(self, endpoint: t.Endpoint) -> Timeouts:
        return Timeouts(
            endpoint.connect_timeout_ms or self.connect_ms,
            endpoint.first_byte_timeout_ms or self.first_byte_ms,
            endpoint.timeout_ms or self.attempt_ms,
            endpoint.first_token_timeout_ms or self.first_token_ms,
            endpoint.stream_idle_timeout_ms or self.stream_idle_ms,
        )


def _malformed(exc: Exception) -> str:
    return f"unreadable answer ({type(exc).__name__}: {exc})"[:300]


class Executor:
    def __init__(
        self,
        live: LiveConfig,
        client: UpstreamClient,
        max_attempts: int,
        timeouts: Timeouts,
        budgets: BudgetLeases,
        workspace_limits: WorkspaceLimits,
    ):
        self.live = live
        self.client = client
        self.max_attempts = max_attempts
        self.timeouts = timeouts
        self.budgets = budgets
        self.workspace_limits = workspace_limits

    def _ask_engine(self, call: Call, model: str | None, limit: int) -> Decision:
        return self.live.engine.decide(
            call.agent_type,
            workspace_id=call.workspace_id,
            user_id=call.user_id,
            request_type=call.request_type,
            content_length=call.content_length,
            capabilities=call.capabilities,
            model=model,
            metadata=call.metadata,
            limit=limit,
        )

    def decide(self, call: Call) -> Decision:
        decision = self._ask_engine(call, call.model, self.max_attempts)
        if decision.error is not None:
            kind, message = decision.error
            headers = []
            if kind == "breakers_open":
                reopens = self._soonest_reopen_ms()
                headers = [retry_after_header(reopens)] if reopens is not None else []
            raise CallFailed(
                ERROR_STATUS[kind], kind, message, details=error_details(decision), headers=headers
            )
        if self.live.rollouts is not None and call.model is None:
            assigned = self.live.rollouts.assign(
                decision,
                call.request_id,
                call.agent_type,
                call.workspace_id,
                call.user_id,
                lambda model_id: self._candidate(call, model_id),
            )
            if assigned is not None:
                call.arm, call.candidates = assigned
        return decision

    def _candidate(self, call: Call, model_id: str) -> tuple[str, list[str]] | None:
        """A model routing did not rank, with its endpoints in the engine's
        order, if it can take the call now."""
        decision = self._ask_engine(call, model_id, 1)
        return None if decision.error is not None else decision.candidates[0]

    def _soonest_reopen_ms(self) -> int | None:
        """How long until the first open breaker lets a request through."""
        now_ms = time.time() * 1000
        waits = []
        for endpoint_id in self.live.endpoints:
            state = self.live.engine.breaker_state(endpoint_id)
            if state is not None and state[0] == "open" and state[1] is not None:
                waits.append(max(0, int(state[1] - now_ms)))
        return min(waits) if waits else None

    def _plan(
        self, call: Call, decision: Decision, tries: _Tries
    ) -> Iterator[tuple[_Attempt, Exchange, UpstreamRequest, Timeouts]]:
        """Each attempt to make, prepared: at most max_attempts, and none once
        the request's deadline has passed (an endpoint never tried is not
        charged with a failure). Candidates that cannot take the request are
        skipped."""
        tried = 0
        for model_id, endpoint_ids in call.candidates or decision.candidates:
            model = self.live.models[model_id]
            adapter = ADAPTERS[model.provider]
            for endpoint_id in endpoint_ids:
                remaining = call.deadline - time.monotonic()
                if tried == self.max_attempts or remaining <= 0:
                    return
                endpoint = self.live.endpoints[endpoint_id]
                try:
                    exchange, request = adapter.prepare(
                        call.operation, model, endpoint, call.raw, call.body, call.forwarded
                    )
                except Refused as refused:
                    tries.refused = tries.refused or refused
                    break  # the model's other endpoints would refuse it too
                tried += 1
                yield _Attempt(model_id, endpoint), exchange, request, self.timeouts.of(endpoint)

    def _record(
        self,
        call: Call,
        attempt: _Attempt,
        tries: _Tries,
        outcome: str,
        status: int | None,
        error: str | None = None,
        usage: Usage | None = None,
        retry_after: int | None = None,
        judged: bool = True,
    ) -> None:
        """Account an attempt; `judged` False: it says nothing of its
        endpoint (cut short before the answer), so its breaker and latency
        stats are left alone."""
        latency = attempt.elapsed_ms()
        # The endpoint did its job when the caller erred, or left a stream it had begun.
        healthy = outcome in HEALTHY_OUTCOMES if judged else None
        tokens = usage.tokens if usage else Tokens()
        failed = tries.attempts[-1] if tries.attempts else None  # this one is a failover
        arm = call.arm
        # Positional: PyO3 matches keyword names one by one, a third of the call.
        cost = self.live.engine.record(
            attempt.model_id,
            attempt.endpoint.id,
            healthy,
            latency,
            tokens.prompt or 0,
            tokens.completion or 0,
            call.workspace_id,
            retry_after,
            tokens.cache_read,
            tokens.cache_write,
            attempt.started_ms,
            outcome,
            call.agent_type,
            tries.rule_id,
            None if failed is None else (failed.model_id, failed.endpoint_id, failed.outcome),
            attempt.ttft_ms,
            None if arm is None else arm.rollout_id,
            None if arm is None else arm.label,
        )
        if usage is not None:
            usage.cost_nanos = cost or 0
        if retry_after is not None:
            tries.retry_after.append(retry_after)
        tries.upstream_ms += latency
        tries.attempts.append(
            t.AttemptReport(
                model_id=attempt.model_id,
                endpoint_id=attempt.endpoint.id,
                outcome=outcome,
                status=status,
                latency_ms=round(latency, 3),
                error=error,
                retry_after_ms=retry_after,
            )
        )

    def _rejected(
        self,
        call: Call,
        attempt: _Attempt,
        tries: _Tries,
        status: int,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        """Account a non-200 answer: fail over, or raise CallFailed carrying
        the provider's answer back to the caller."""
        outcome = answer_outcome(status)
        if outcome in FAILOVER_OUTCOMES:
            error = body[:200].decode("utf-8", "replace")
            self._record(
                call, attempt, tries, outcome, status, error, retry_after=retry_after_ms(headers)
            )
            return
        self._record(call, attempt, tries, "client_error", status)
        raise self.client_error(status, tries.attempts, body)

    @staticmethod
    def client_error(status: int, attempts: list[t.AttemptReport], body: bytes) -> CallFailed:
        """The provider refused the caller's request: its answer goes back."""
        return CallFailed(
            status,
            "upstream_client_error",
            f"the model's provider rejected the request ({status})",
            attempts,
            upstream_body=body,
        )

    def _usage(self, call: Call, tokens: Tokens, text_chars: int) -> Usage:
        if tokens.prompt is not None and tokens.completion is not None:
            return Usage(tokens)
        estimate = Tokens(
            tokens.prompt if tokens.prompt is not None else estimate_tokens(call.content_length),
            tokens.completion if tokens.completion is not None else estimate_tokens(text_chars),
            tokens.cache_read,
            tokens.cache_write,
        )
        return Usage(estimate, estimated=True)

    def _failed(self, call: Call, tries: _Tries) -> CallFailed:
        if not tries.attempts and tries.refused is not None:
            refused = tries.refused
            return CallFailed(
                400,
                "invalid_request_error",
                refused.message,
                param=refused.param,
                code=refused.code,
            )
        passed = time.monotonic() >= call.deadline
        return self.failed(tries.attempts, tries.retry_after, passed)

    @staticmethod
    def failed(
        attempts: list[t.AttemptReport], retry_after: list[int], deadline_passed: bool
    ) -> CallFailed:
        """No attempt answered (or none could be made): why, for the caller."""
        if attempts and all(a.outcome == "rate_limited" for a in attempts):
            wait = min(retry_after) if retry_after else None
            return CallFailed(
                429,
                "rate_limited",
                "every eligible endpoint is rate limited by its provider",
                attempts,
                headers=[retry_after_header(wait)] if wait is not None else [],
            )
        if attempts and deadline_passed:
            return CallFailed(504, "deadline_exceeded", "the request's deadline passed", attempts)
        return CallFailed(
            502,
            "upstream_unavailable",
            f"every attempt failed ({len(attempts)} tried)" if attempts else "nothing to try",
            attempts,
        )

    async def _hold(self, call: Call, decision: Decision) -> Holds:
        """Count the call against its workspace's per-minute limits, then
        reserve its worst-case cost against the workspace's budget."""
        workspace = call.workspace_id
        if workspace is None:
            return Holds()
        models = [model_id for model_id, _ in call.candidates or decision.candidates]
        tokens = None
        if self.workspace_limits.applies(workspace):
            prompt = prompt_tokens_at_most(call.content_length)
            estimate = self.workspace_limits.estimate(models, prompt, call.body)
            try:
                tokens = await self.workspace_limits.admit(workspace, prompt, estimate)
            except NeverFits as never:
                raise CallFailed(
                    400,
                    "invalid_request_error",
                    str(never),
                    details=never.details,
                    param="max_tokens",
                    code="exceeds_workspace_tokens_per_minute",
                ) from None
            except WorkspaceLimited as limited:
                raise CallFailed(
                    429,
                    "workspace_rate_limited",
                    str(limited),
                    details=limited.details,
                    headers=[("retry-after", limited.retry_after)],
                ) from None
        if not self.budgets.applies(workspace):
            return Holds(tokens=tokens)
        worst = self.budgets.worst_case(models, call.content_length, call.body)
        try:
            return Holds(await self.budgets.hold(workspace, worst), tokens)
        except BudgetRefused as refused:
            self.workspace_limits.settle(tokens, 0)
            message = f"{refused} (${worst / 1e9:.6f}): lower max_tokens or raise the budget"
            raise CallFailed(402, "budget_exceeded", message, details=refused.details) from None
        except Exception as exc:  # the store is away: the engine's local check stands
            log.warning("budget reservation skipped: %s", exc)
            return Holds(tokens=tokens)

    def _settle(self, holds: Holds, usage: Usage | None) -> None:
        """The call is over: its budget pays what it cost, its minute counts
        the tokens it used."""
        self.budgets.settle(holds.budget, usage.cost_nanos if usage else 0)
        used = usage.prompt_tokens + usage.completion_tokens if usage else 0
        self.workspace_limits.settle(holds.tokens, used)

    async def admit(self, call: Call) -> Admitted:
        """Route the call and hold it against its workspace's limits. Its
        canary or experiment arm is attached only once the call is admitted:
        a 402 or 429 of the router's own is no outcome of the arm's model."""
        decision = self.decide(call)
        arm, call.arm = call.arm, None
        hold = await self._hold(call, decision)
        call.arm = arm
        return decision, hold

    async def complete(self, call: Call, admitted: Admitted) -> Result:
        """The admitted call's attempts, in turn, until one answers; its holds
        settled. Cancelled (its caller left), it raises CallCancelled with
        what its attempts came to."""
        decision, hold = admitted
        tries = _Tries(rule_id=decision.rule_id)
        try:
            result = await self._complete(call, decision, tries)
        except asyncio.CancelledError:
            self._settle(hold, tries.cut_short)
            raise CallCancelled(tries) from None
        except BaseException:
            self._settle(hold, None)
            raise
        self._settle(hold, result.usage)
        return result

    async def _complete(self, call: Call, decision: Decision, tries: _Tries) -> Result:
        for attempt, exchange, request, timeouts in self._plan(call, decision, tries):
            remaining = call.deadline - time.monotonic()
            deadlines = Deadlines.within(
                min(timeouts.attempt_ms / 1000, remaining),
                timeouts.connect_ms / 1000,
                timeouts.first_byte_ms / 1000,
            )
            try:
                response = await self.client.send(request, deadlines)
            except asyncio.CancelledError:
                # Its upstream call is closed. The prompt counts (the provider
                # may have read it); of the endpoint it says nothing.
                tries.cut_short = self._usage(call, Tokens(), 0)
                self._record(
                    call, attempt, tries, "cancelled", None, usage=tries.cut_short, judged=False
                )
                raise
            except TimeoutError as exc:
                self._record(call, attempt, tries, "timeout", None, str(exc))
                continue
            except OSError as exc:
                self._record(call, attempt, tries, "connect_error", None, str(exc)[:200])
                continue
            if response.status != 200:
                self._rejected(
                    call, attempt, tries, response.status, response.headers, response.body
                )
                continue
            try:
                answer = exchange.answer(response.body, call.body, attempt.model_id)
            except Exception as exc:  # anything unreadable is the provider's failure
                self._record(call, attempt, tries, "malformed", 200, _malformed(exc))
                continue
            usage = self._usage(call, answer.tokens, len(answer.text))
            self._record(call, attempt, tries, "success", 200, usage=usage)
            return Result(
                attempt.model_id,
                attempt.endpoint.id,
                tries.attempts,
                usage,
                tries.upstream_ms,
                decision.rule_id,
                answer,
            )
        raise self._failed(call, tries)

    async def stream(self, call: Call) -> tuple[Result, AsyncIterator[bytes]]:
        """Open the stream on the first candidate that yields a first event.
        Returns the result so far (finished when the iterator ends) and the
        bytes to send, the first of them already read."""
        decision, hold = await self.admit(call)
        try:
            return await self._stream(call, decision, hold)
        except BaseException:
            self._settle(hold, None)
            raise

    async def _stream(
        self, call: Call, decision: Decision, hold: Holds
    ) -> tuple[Result, AsyncIterator[bytes]]:
        tries = _Tries(rule_id=decision.rule_id)
        for attempt, exchange, request, timeouts in self._plan(call, decision, tries):
            try:
                reader = exchange.stream(call.body, attempt.model_id)
            except Refused as refused:
                tries.refused = tries.refused or refused
                continue
            first_token = min(timeouts.first_token_ms / 1000, call.deadline - time.monotonic())
            deadlines = Deadlines.within(
                first_token, timeouts.connect_ms / 1000, timeouts.first_byte_ms / 1000
            )
            opened = self.client.stream(request, deadlines)
            events = EventReader(self.client.max_body)
            first: list[bytes] = []
            failure: tuple[str, int | None, str] | None = None
            try:
                stream: UpstreamStream = await opened.__aenter__()
                if stream.status == 200:
                    # Until the first content: the first-token deadline.
                    stream.pace(first_token, first_token)
                    async for chunk in stream.chunks:
                        for event in events.feed(chunk):
                            first += reader.feed(event)
                        if reader.state.started or reader.state.error:
                            break
            except TimeoutError as exc:
                failure = ("timeout", None, str(exc) or "timed out")
            except OSError as exc:
                failure = ("connect_error", None, str(exc)[:200])
            except Exception as exc:  # an event we cannot read or translate
                failure = ("malformed", 200, _malformed(exc))
            if failure is None and stream.status != 200:
                await opened.__aexit__(None, None, None)
                self._rejected(call, attempt, tries, stream.status, stream.headers, stream.body)
                continue
            if failure is None and (reader.state.error or not reader.state.started):
                failure = (
                    "stream_error",
                    200,
                    reader.state.error or "stream ended before any content",
                )
            if failure is not None:
                await opened.__aexit__(None, None, None)
                self._record(call, attempt, tries, *failure)
                continue
            attempt.ttft_ms = attempt.elapsed_ms()
            # Until the stream ends, the upstreams' time so far: this attempt's
            # wait for its first content is theirs, not the router's overhead.
            result = Result(
                attempt.model_id,
                attempt.endpoint.id,
                tries.attempts,
                Usage(),
                tries.upstream_ms + attempt.ttft_ms,
                decision.rule_id,
            )
            idle_s = timeouts.stream_idle_ms / 1000
            body = self._forward(
                call, result, attempt, tries, opened, stream, events, reader, first, idle_s, hold
            )
            return result, body
        raise self._failed(call, tries)

    async def _forward(
        self,
        call: Call,
        result: Result,
        attempt: _Attempt,
        tries: _Tries,
        opened: Any,
        stream: UpstreamStream,
        events: EventReader,
        reader: StreamReader,
        first: list[bytes],
        idle_s: float,
        hold: Holds,
    ) -> AsyncIterator[bytes]:
        """Forward the stream chunk by chunk as it arrives, then account it.
        Closing this iterator early (the client left) closes the upstream call.
        A failure after the first byte ends the stream with an error event."""
        state = reader.state
        finished = False
        try:
            try:
                # What one read from the upstream brought goes out as one write.
                if first:
                    yield b"".join(first)
                stream.pace(idle_s, call.deadline - time.monotonic())
                async for chunk in stream.chunks:
                    out: list[bytes] = []
                    for event in events.feed(chunk):
                        try:
                            out += reader.feed(event)
                        except Exception as exc:
                            state.error = _malformed(exc)
                            break
                        if state.error:
                            break
                    if out:
                        yield out[0] if len(out) == 1 else b"".join(out)
                    if state.error:
                        break
                finished = state.error is None
                if not state.done and finished:
                    state.error, finished = "stream ended without its final event", False
            except Exception as exc:  # the connection, a stall, an oversized event
                state.error = f"{type(exc).__name__}: {exc}"[:300]
            if state.error is not None:
                yield self._error_event(call)
        finally:
            usage = self._usage(call, state.tokens, state.text_chars)
            # A caller that leaves once the final event went out (an SDK stops
            # reading at `[DONE]`) left a stream that had ended.
            finished = finished or (state.done and state.error is None)
            outcome = (
                "success" if finished else ("cancelled" if state.error is None else "stream_error")
            )
            self._record(call, attempt, tries, outcome, 200, state.error, usage=usage)
            result.upstream_ms = tries.upstream_ms
            result.usage = usage
            self._settle(hold, usage)
            await opened.__aexit__(None, None, None)

    @staticmethod
    def _error_event(call: Call) -> bytes:
        """The event that tells the caller's client the stream failed."""
        message = "the model's stream failed"
        if call.operation is Operation.MESSAGES:
            error = {"type": "error", "error": {"type": "api_error", "message": message}}
            return b"event: error\ndata: " + msgspec.json.encode(error) + b"\n\n"
        error = {"error": {"message": message, "type": "upstream_error"}}
        return b"data: " + msgspec.json.encode(error) + b"\n\n"
