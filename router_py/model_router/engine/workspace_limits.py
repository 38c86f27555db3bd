"""Per-workspace limits on model calls and tokens per minute
(`budgetLimits.requestsPerMinute` and `.tokensPerMinute`), exact across
workers and replicas.

Calls are admitted like a key's requests (ratelimit.py: leases of one store
counter per workspace and minute). Tokens are reserved before the call, at
the request's estimate (the prompt's generous token count plus the most
output any candidate can give), atomically in the store: what every worker
reserved in the minute plus this estimate must stay within the limit. When
the call ends its reservation is corrected to the tokens it really used (a
beat sends the corrections), so the minute counts real usage, and a call
never starts that the minute cannot hold at its worst.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from ..ratelimit import RateLimiter, retry_after
from ..store import Reservation, Store
from .exchanges import max_output_tokens
from .live import LiveConfig

log = logging.getLogger("model_router.workspace_limits")

MINUTE_MS = 60_000


class WorkspaceLimited(Exception):
    """A workspace's per-minute limit has no room for this call: a 429."""

    def __init__(self, workspace_id: str, name: str, limit: int, retry_after_s: float, need: int):
        unit = "model calls" if name == "requestsPerMinute" else "tokens"
        super().__init__(
            f"workspace {workspace_id!r} is over its limit of {limit} {unit} per minute "
            f"(budgetLimits.{name})"
        )
        self.retry_after = retry_after(retry_after_s)
        self.details = {
            "workspaceId": workspace_id,
            "limit": name,
            "value": limit,
            "retryAfterSeconds": int(self.retry_after),
        }
        if name == "tokensPerMinute":
            self.details["estimatedTokens"] = need


class NeverFits(Exception):
    """The call's estimate alone exceeds the workspace's tokens per minute: no
    minute could ever hold it, so waiting does not help (a 400)."""

    def __init__(self, workspace_id: str, limit: int, prompt: int, estimate: int):
        advice = "lower max_tokens" if prompt < limit else "shorten the prompt"
        super().__init__(
            f"this call may use up to {estimate} tokens (about {prompt} of prompt, the rest "
            f"output), more than workspace {workspace_id!r}'s limit of {limit} tokens per "
            f"minute (budgetLimits.tokensPerMinute): {advice} or raise the limit"
        )
        self.details = {
            "workspaceId": workspace_id,
            "limit": "tokensPerMinute",
            "value": limit,
            "estimatedTokens": estimate,
        }


@dataclass(frozen=True)
class TokenHold:
    """Tokens one call reserved in its minute's counter."""

    counter: str
    tokens: int


class WorkspaceLimits:
    def __init__(self, live: LiveConfig, store: Store):
        self.live = live
        self.store = store
        self.calls = RateLimiter(store, 1, MINUTE_MS)
        self._corrections: dict[str, int] = defaultdict(int)  # counter -> tokens to add

    def _limits(self, workspace_id: str | None) -> tuple[int | None, int | None]:
        config = self.live.workspaces.get(workspace_id) if workspace_id else None
        limits = config.budget_limits if config is not None else None
        if limits is None:
            return None, None
        calls, tokens = limits.requests_per_minute, limits.tokens_per_minute
        return (calls or None), (tokens or None)  # unset (UNSET is falsy) or null: none

    def estimate(self, candidates: list[str], prompt_tokens: int, body: dict[str, object]) -> int:
        """The most tokens the call can use on any of its candidates."""
        output = max((max_output_tokens(self.live.models[m], body) for m in candidates), default=0)
        return prompt_tokens + output

    def applies(self, workspace_id: str | None) -> bool:
        return self._limits(workspace_id) != (None, None)

    async def admit(self, workspace_id: str, prompt: int, estimate: int) -> TokenHold | None:
        """Reserve the call's tokens and count it, or WorkspaceLimited (or
        NeverFits when its estimate is more than a whole minute's tokens)."""
        calls, tokens = self._limits(workspace_id)
        now_ms = int(time.time() * 1000)
        reset_s = (MINUTE_MS - now_ms % MINUTE_MS) / 1000
        hold = None
        if tokens is not None:
            if estimate > tokens:
                raise NeverFits(workspace_id, tokens, prompt, estimate)
            hold = await self._reserve(workspace_id, tokens, estimate, now_ms, reset_s)
        # Counted after the tokens: a call refused for tokens takes no call slot.
        if calls is not None:
            verdict = await self.calls.admit(f"ws:{workspace_id}", now_ms, calls)
            if not verdict.admitted:
                self.settle(hold, 0)
                raise WorkspaceLimited(workspace_id, "requestsPerMinute", calls, reset_s, 1)
        return hold

    async def _reserve(
        self, workspace_id: str, tokens: int, estimate: int, now_ms: int, reset_s: float
    ) -> TokenHold | None:
        counter = f"tpm:{workspace_id}:{now_ms // MINUTE_MS}"
        check = Reservation(f"tpm-spent:{workspace_id}", counter, tokens)
        try:
            refused = await self.store.reserve([check], estimate, 2 * MINUTE_MS)
        except Exception as exc:  # the store is away: the call goes on uncounted
            log.warning("workspace token limit not checked: %s", exc)
            return None
        if refused is not None:
            raise WorkspaceLimited(workspace_id, "tokensPerMinute", tokens, reset_s, estimate)
        return TokenHold(counter, estimate)

    def settle(self, hold: TokenHold | None, used: int) -> None:
        """The call is over: its minute counts the tokens it used, not its estimate."""
        if hold is not None and used != hold.tokens:
            self._corrections[hold.counter] += used - hold.tokens

    async def flush(self) -> None:
        """A beat: the calls admitted while the store was away, and the token
        corrections, reach the store."""
        await self.calls.reconcile()
        corrections, self._corrections = dict(self._corrections), defaultdict(int)
        if not corrections:
            return
        try:
            await self.store.add_counters(corrections, 2 * MINUTE_MS)
        except Exception:
            for counter, tokens in corrections.items():  # sent with the next beat
                self._corrections[counter] += tokens
            raise
