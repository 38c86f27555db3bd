"""Background work on a beat: each worker's config poll, rate-limit sync,
spend flush and telemetry flush.

A failing beat logs once when it starts failing and once when it recovers,
not on every round: a store outage is a warning without a traceback (it is
expected, and routing goes on), anything else an error with one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .store import StoreUnavailable

log = logging.getLogger("model_router.periodic")


def report_failure(what: str, exc: Exception) -> None:
    if isinstance(exc, StoreUnavailable):
        log.warning("%s: the state store is unreachable (%s); retrying until it answers", what, exc)
    else:
        log.error("%s failed; will retry", what, exc_info=exc)


async def every(
    interval_ms: int,
    what: str,
    work: Callable[[], Awaitable[object]],
    on_error: Callable[[Exception], None] = lambda exc: None,
) -> None:
    """Run `work` every interval until cancelled; a failure is reported and
    the next round tries again. Cancelled during a round, the beat lets the
    round finish before it stops: a flush cut off after its write landed,
    but before it knew, would be sent again by the final flush."""
    failing = False
    while True:
        await asyncio.sleep(interval_ms / 1000)
        this_round = asyncio.ensure_future(work())
        try:
            await asyncio.shield(this_round)
        except asyncio.CancelledError:
            try:
                await this_round
            except Exception as exc:
                report_failure(what, exc)
            raise
        except Exception as exc:
            on_error(exc)
            if not failing:
                report_failure(what, exc)
            failing = True
        else:
            if failing:
                log.info("%s: working again", what)
            failing = False


async def cancel_all(tasks: list[asyncio.Task[None]], within_s: float) -> None:
    """Cancel the background tasks and wait for them, no longer than
    `within_s`: a task that does not end when cancelled (a library that drops
    a cancellation, as redis-py does: store/redis.py makes up for it) is
    reported and left, so that stopping goes on to its final flushes instead
    of hanging until the worker is killed."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=within_s)
    if pending:
        names = ", ".join(sorted(getattr(task.get_coro(), "__qualname__", "?") for task in pending))
        log.warning("stopping: background work still running after %.1f s: %s", within_s, names)
