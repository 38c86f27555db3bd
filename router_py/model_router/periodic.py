"""Background work on a beat: each worker's config poll, rate-limit sync,
spend flush and telemetry flush."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("model_router.periodic")


def log_failure(what: str) -> Callable[[Exception], None]:
    def report(exc: Exception) -> None:
        log.error("%s failed; will retry", what, exc_info=exc)

    return report


async def every(
    interval_ms: int, work: Callable[[], Awaitable[object]], on_error: Callable[[Exception], None]
) -> None:
    """Run `work` every interval until cancelled; a failure is reported and
    the next round tries again."""
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            await work()
        except Exception as exc:
            on_error(exc)
