"""Executing a decision: call the first candidate, fail over down the list.

Attempts go through each candidate model's endpoints in the engine's order,
then on to the next model, up to `max_attempts`, within the request's deadline.
A connect error, a timeout, a 5xx, a 408/409/429, a 401/403 (the provider
rejected *our* key) or a body we cannot read fails over; any other 4xx is the
caller's and goes back without failover. Every attempt is recorded in the
engine (breaker, stats, cost). A stream fails over only until its first byte
is sent to the client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec

from .. import types as t
from .._core import Decision
from .inputs import ERROR_STATUS, error_details
from .live import LiveConfig
from .providers import ADAPTERS, Completion, MalformedUpstream, StreamState
from .sse import EventReader
from .upstream import UpstreamClient, UpstreamStream

FAILOVER_4XX = {401, 403, 408, 409, 429}


@dataclass
class Call:
    """One request to route, in OpenAI's chat shape plus the routing inputs."""

    request_id: str
    agent_type: str
    workspace_id: str | None
    user_id: str | None
    request_type: str
    chat: dict[str, Any]
    content_length: int
    deadline: float  # time.monotonic()
    model: str | None = None
    capabilities: list[str] | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nanos: int = 0
    estimated: bool = False


@dataclass
class Result:
    model_id: str
    endpoint_id: str
    attempts: list[t.AttemptReport]
    usage: Usage
    upstream_ms: float
    rule_id: str | None
    completion: Completion | None = None


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
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.attempts = attempts or []
        self.details = details
        self.upstream_body = upstream_body


def retry_after_ms(headers: dict[str, str]) -> int | None:
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0, int(float(value) * 1000))
    except ValueError:
        pass
    try:
        return max(0, int((parsedate_to_datetime(value).timestamp() - time.time()) * 1000))
    except (TypeError, ValueError):
        return None


def estimate_tokens(chars: int) -> int:
    return max(1, (chars + 3) // 4) if chars else 0


@dataclass
class _Attempt:
    model_id: str
    endpoint: t.Endpoint
    started: float = field(default_factory=time.perf_counter)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class Executor:
    def __init__(
        self,
        live: LiveConfig,
        client: UpstreamClient,
        max_attempts: int,
        upstream_timeout_ms: int,
    ):
        self.live = live
        self.client = client
        self.max_attempts = max_attempts
        self.upstream_timeout_ms = upstream_timeout_ms

    def decide(self, call: Call) -> Decision:
        decision = self.live.engine.decide(
            call.agent_type,
            workspace_id=call.workspace_id,
            user_id=call.user_id,
            request_type=call.request_type,
            content_length=call.content_length,
            capabilities=call.capabilities,
            model=call.model,
            metadata=call.metadata,
            limit=self.max_attempts,
        )
        if decision.error is not None:
            kind, message = decision.error
            raise CallFailed(ERROR_STATUS[kind], kind, message, details=error_details(decision))
        return decision

    def _plan(self, call: Call, decision: Decision) -> Iterator[tuple[str, t.Endpoint, float]]:
        """(model, endpoint, timeout in seconds) of each attempt to make: at
        most max_attempts, and none once the request's deadline has passed
        (an endpoint never tried is not charged with a failure)."""
        tried = 0
        for model_id, endpoint_ids in decision.candidates:
            for endpoint_id in endpoint_ids:
                remaining = call.deadline - time.monotonic()
                if tried == self.max_attempts or remaining <= 0:
                    return
                tried += 1
                endpoint = self.live.endpoints[endpoint_id]
                timeout = (endpoint.timeout_ms or self.upstream_timeout_ms) / 1000
                yield model_id, endpoint, min(timeout, remaining)

    def _record(
        self,
        call: Call,
        attempt: _Attempt,
        attempts: list[t.AttemptReport],
        outcome: str,
        status: int | None,
        error: str | None = None,
        usage: Usage | None = None,
        retry_after: int | None = None,
    ) -> float:
        latency = attempt.elapsed_ms()
        # The endpoint did its job even when the caller erred or left.
        healthy = outcome in ("success", "client_error", "cancelled")
        cost = self.live.engine.record(
            attempt.model_id,
            attempt.endpoint.id,
            healthy,
            latency,
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
            call.workspace_id,
            retry_after,
        )
        if usage is not None:
            usage.cost_nanos = cost or 0
        attempts.append(
            t.AttemptReport(
                model_id=attempt.model_id,
                endpoint_id=attempt.endpoint.id,
                outcome=outcome,
                status=status,
                latency_ms=round(latency, 3),
                error=error,
            )
        )
        return latency

    def _rejected(
        self,
        call: Call,
        attempt: _Attempt,
        attempts: list[t.AttemptReport],
        status: int,
        headers: dict[str, str],
        body: bytes,
    ) -> float:
        """Account a non-200 answer: the latency when it fails over, else
        CallFailed carrying the provider's answer back to the caller."""
        if status in FAILOVER_4XX or status >= 500:
            outcome = "rate_limited" if status == 429 else "upstream_error"
            return self._record(
                call,
                attempt,
                attempts,
                outcome,
                status,
                body[:200].decode("utf-8", "replace"),
                retry_after=retry_after_ms(headers),
            )
        self._record(call, attempt, attempts, "client_error", status)
        raise CallFailed(
            status,
            "upstream_client_error",
            f"the model's provider rejected the request ({status})",
            attempts,
            upstream_body=body,
        )

    def _usage(
        self, call: Call, prompt: int | None, completion: int | None, text_chars: int
    ) -> Usage:
        if prompt is not None and completion is not None:
            return Usage(prompt, completion)
        return Usage(
            prompt if prompt is not None else estimate_tokens(call.content_length),
            completion if completion is not None else estimate_tokens(text_chars),
            estimated=True,
        )

    def _failed(self, call: Call, attempts: list[t.AttemptReport]) -> CallFailed:
        if time.monotonic() >= call.deadline:
            return CallFailed(504, "deadline_exceeded", "the request's deadline passed", attempts)
        return CallFailed(
            502,
            "upstream_unavailable",
            f"every attempt failed ({len(attempts)} tried)" if attempts else "nothing to try",
            attempts,
        )

    async def complete(self, call: Call) -> Result:
        decision = self.decide(call)
        attempts: list[t.AttemptReport] = []
        upstream_ms = 0.0
        for model_id, endpoint, timeout in self._plan(call, decision):
            attempt = _Attempt(model_id, endpoint)
            adapter = ADAPTERS[self.live.models[model_id].provider]
            request = adapter.request(endpoint, self.live.models[model_id].version, call.chat)
            try:
                response = await self.client.post(request, timeout)
            except TimeoutError:
                upstream_ms += self._record(call, attempt, attempts, "timeout", None, "timed out")
                continue
            except OSError as exc:
                upstream_ms += self._record(
                    call, attempt, attempts, "connect_error", None, str(exc)[:200]
                )
                continue
            if response.status != 200:
                upstream_ms += self._rejected(
                    call, attempt, attempts, response.status, response.headers, response.body
                )
                continue
            try:
                completion = adapter.completion(response.body, model_id)
            except MalformedUpstream as exc:
                upstream_ms += self._record(
                    call, attempt, attempts, "malformed", 200, str(exc)[:200]
                )
                continue
            usage = self._usage(
                call, completion.prompt_tokens, completion.completion_tokens, len(completion.text)
            )
            upstream_ms += self._record(call, attempt, attempts, "success", 200, usage=usage)
            return Result(
                model_id, endpoint.id, attempts, usage, upstream_ms, decision.rule_id, completion
            )
        raise self._failed(call, attempts)

    async def stream(self, call: Call) -> tuple[Result, AsyncIterator[bytes]]:
        """Open the stream on the first candidate that yields a first event.
        Returns the result so far (finished when the iterator ends) and the
        OpenAI SSE bytes to send, the first of them already read."""
        decision = self.decide(call)
        attempts: list[t.AttemptReport] = []
        upstream_ms = 0.0
        include_usage = bool((call.chat.get("stream_options") or {}).get("include_usage"))
        for model_id, endpoint, timeout in self._plan(call, decision):
            attempt = _Attempt(model_id, endpoint)
            adapter = ADAPTERS[self.live.models[model_id].provider]
            request = adapter.request(endpoint, self.live.models[model_id].version, call.chat)
            opened = self.client.stream(request, timeout)
            state = StreamState(extra={"include_usage": include_usage})
            reader = EventReader()
            first: list[bytes] = []
            try:
                stream: UpstreamStream = await opened.__aenter__()
                if stream.status == 200:
                    async for chunk in stream.chunks:
                        for event in reader.feed(chunk):
                            first += adapter.translate(event, state, model_id)
                        if first or state.error:
                            break
            except TimeoutError:
                await opened.__aexit__(None, None, None)
                upstream_ms += self._record(call, attempt, attempts, "timeout", None, "timed out")
                continue
            except OSError as exc:
                await opened.__aexit__(None, None, None)
                upstream_ms += self._record(
                    call, attempt, attempts, "connect_error", None, str(exc)[:200]
                )
                continue
            if stream.status != 200:
                await opened.__aexit__(None, None, None)
                upstream_ms += self._rejected(
                    call, attempt, attempts, stream.status, stream.headers, stream.body
                )
                continue
            if state.error or not first:
                await opened.__aexit__(None, None, None)
                upstream_ms += self._record(
                    call,
                    attempt,
                    attempts,
                    "stream_error",
                    200,
                    state.error or "stream ended before any event",
                )
                continue
            result = Result(model_id, endpoint.id, attempts, Usage(), upstream_ms, decision.rule_id)
            body = self._forward(
                call, result, attempt, adapter, opened, stream, reader, state, first
            )
            return result, body
        raise self._failed(call, attempts)

    async def _forward(
        self,
        call: Call,
        result: Result,
        attempt: _Attempt,
        adapter: Any,
        opened: Any,
        stream: UpstreamStream,
        reader: EventReader,
        state: StreamState,
        first: list[bytes],
    ) -> AsyncIterator[bytes]:
        """Forward the stream chunk by chunk as it arrives, then account it.
        Closing this iterator early (the client left) closes the upstream call."""
        finished = False
        try:
            for piece in first:
                yield piece
            async for chunk in stream.chunks:
                for event in reader.feed(chunk):
                    for piece in adapter.translate(event, state, attempt.model_id):
                        yield piece
                    if state.error:
                        break
                if state.error:
                    error = {
                        "error": {"message": "the model's stream failed", "type": "upstream_error"}
                    }
                    yield b"data: " + msgspec.json.encode(error) + b"\n\n"
                    break
            finished = state.error is None
            if not state.done and finished:
                state.error, finished = "stream ended without its final event", False
        except OSError as exc:
            state.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            usage = self._usage(
                call, state.prompt_tokens, state.completion_tokens, state.text_chars
            )
            outcome = (
                "success" if finished else ("cancelled" if state.error is None else "stream_error")
            )
            result.upstream_ms += self._record(
                call, attempt, result.attempts, outcome, 200, state.error, usage=usage
            )
            result.usage = usage
            await opened.__aexit__(None, None, None)
