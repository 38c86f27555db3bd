"""The cost of a routed request's JSON log line, in process, stderr on
/dev/null: the line as any other goes (through `logging`: a LogRecord, the
handler, the formatter, one write per line) against the request's own path
(built directly, buffered, written by the writer thread in batches), and the
masking of its strings with and without the fast paths.

    .venv/bin/python bench/log_line.py [--lines 20000]
    PYTHONPATH=<another checkout>/router_py .venv/bin/python bench/log_line.py

Figures are the best of 5 runs, in microseconds per line (per string for the
masking). A checkout from before the request line had its own path times
only its line through `logging`, with its own masking.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit

os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # before the writer looks at stderr

from model_router import types as t  # noqa: E402
from model_router.telemetry import pii  # noqa: E402
from model_router.telemetry.logging import configure_logging  # noqa: E402
from model_router.telemetry.requests import RequestObserver, log  # noqa: E402

SUMMARY = t.RecentRequest(
    id="r1",
    request_id="3f9a1c2b7d4e0000000001",  # as http.new_id makes them
    timestamp="2026-11-29T18:00:00.000Z",
    route="/v1/chat/completions",
    workspace_id="ws-marketing-001",
    agent_type="creative",
    model_id="gpt-4o-mini",
    endpoint_id="gpt-4o-mini-ep0",
    status=200,
    outcome="ok",
    latency_ms=1.2345678,
    upstream_ms=0.7654321,
    prompt_tokens=12,
    completion_tokens=30,
    cost=0.000072,
    estimated=False,
    attempts=1,
    stream=False,
    user_id="user-123",
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=20000)
    args = parser.parse_args()
    configure_logging("info")
    fields = {
        "requestId": SUMMARY.request_id,
        "route": SUMMARY.route,
        "workspaceId": SUMMARY.workspace_id,
        "agentType": SUMMARY.agent_type,
        "userId": SUMMARY.user_id,
        "modelId": SUMMARY.model_id,
        "endpointId": SUMMARY.endpoint_id,
        "status": 200,
        "latency": 1.235,
        "upstreamMs": 0.765,
        "tokens": 42,
        "cost": 0.000072,
        "attempts": 1,
    }

    def best(call, n: int = args.lines) -> float:
        return min(timeit.repeat(call, number=n, repeat=5)) / n * 1e6

    through_logging = best(lambda: log.info("Request routed successfully", extra=fields))
    print(f"{'the line through logging (format, mask, write)':<52}{through_logging:>8.2f} us")
    strings = [s for s in fields.values() if isinstance(s, str)]
    strings.append("Request routed successfully")
    masking = sum(best(lambda s=s: pii.mask(s)) for s in strings) / len(strings)
    print(f"{'mask, one of its strings':<52}{masking:>8.2f} us")
    if not hasattr(RequestObserver, "_log_line"):
        return 0
    observer = RequestObserver(None, None, 1)  # type: ignore[arg-type]
    direct = best(lambda: observer._log_line(SUMMARY, None, None, None))
    patterns = sum(best(lambda s=s: pii._mask(s)) for s in strings) / len(strings)
    print(f"{'the request line (build, mask, buffer)':<52}{direct:>8.2f} us")
    print(f"{'mask, one of its strings, all the patterns':<52}{patterns:>8.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
