"""The traffic agents send to the router, and the spec's SLA asserted on it.

    locust -f bench/locustfile.py --headless -u 40 -r 20 -t 60s --host URL \\
        --exit-code-on-error 0            # or `make sla`, which starts everything

Traffic: `/api/route` and `/v1/chat/completions`, plain and streaming, and a
few admin reads. Besides each request's own time, every routed answer's
`X-Model-Router-Overhead-Ms` (the router's own time, upstream excluded) is
recorded as a request of type OVERHEAD, so it gets percentiles like any other.

Environment: SLA_KEY (an API key of the router; admin reads need an admin
key), SLA_AGENT (the agent type to send as), SLA_CHECK (which figures to
assert: `overhead`, `e2e` or both, comma-separated). At the end: P50 < 100 ms,
P95 < 500 ms and P99 < 1 s for each checked figure, and fewer than 0.1% of
requests failed; the exit code is 1 on a breach.
"""

from __future__ import annotations

import os

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.stats import RequestStats, StatsEntry

KEY = os.environ.get("SLA_KEY", "")
AGENT = os.environ.get("SLA_AGENT", "sla-agent")
CHECKS = [c for c in os.environ.get("SLA_CHECK", "overhead").split(",") if c]
SLA_MS = {0.50: 100.0, 0.95: 500.0, 0.99: 1000.0}
MAX_FAILED = 0.001
OVERHEAD = "OVERHEAD"
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report in three bullets"}]


class Agent(FastHttpUser):
    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {KEY}", "X-Agent-Type": AGENT}

    def routed(self, name: str, path: str, body: dict, stream: bool = False) -> None:
        with self.client.post(
            path, json=body, headers=self.headers, name=name, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {(r.text or '')[:200]}")
                return
            if stream and not (r.text or "").rstrip().endswith("data: [DONE]"):
                r.failure("the stream did not end with [DONE]")
                return
            overhead = r.headers.get("x-model-router-overhead-ms")
            if overhead is None:
                r.failure("no X-Model-Router-Overhead-Ms header")
                return
            self.environment.events.request.fire(
                request_type=OVERHEAD,
                name=name,
                response_time=float(overhead),
                response_length=0,
                exception=None,
                context={},
            )

    @task(4)
    def route(self) -> None:
        body = {
            "agentType": AGENT,
            "prompt": "Generate a creative marketing message for our new product",
            "parameters": {"maxTokens": 200},
            "metadata": {"requestType": "chat", "priority": "normal"},
        }
        self.routed("/api/route", "/api/route", body)

    @task(4)
    def chat(self) -> None:
        self.routed(
            "/v1/chat/completions", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES}
        )

    @task(2)
    def chat_stream(self) -> None:
        body = {"model": "auto", "messages": MESSAGES, "stream": True}
        self.routed("/v1/chat/completions stream", "/v1/chat/completions", body, stream=True)

    @task(1)
    def admin_reads(self) -> None:
        for path in ("/api/models", "/api/routing/rules", "/api/metrics/requests?limit=20"):
            self.client.get(path, headers=self.headers, name=path.split("?")[0])


def combined(stats: RequestStats, overhead: bool) -> StatsEntry:
    """One entry for the OVERHEAD samples or for the routed calls' own times."""
    total = StatsEntry(stats, "combined", "")
    for (_name, method), entry in stats.entries.items():
        if (method == OVERHEAD) == overhead and (overhead or method == "POST"):
            total.extend(entry)
    return total


def breaches(stats: RequestStats) -> list[str]:
    found = []
    calls = [e for (_, method), e in stats.entries.items() if method != OVERHEAD]
    requests = sum(e.num_requests for e in calls)
    failed = sum(e.num_failures for e in calls)
    ratio = failed / requests if requests else 1.0
    print(f"SLA  failed requests: {failed} of {requests} ({100 * ratio:.3f}%, limit < 0.1%)")
    if ratio >= MAX_FAILED:
        found.append(f"failed requests {100 * ratio:.3f}%")
    for check in CHECKS:
        entry = combined(stats, overhead=check == "overhead")
        for q, limit in SLA_MS.items():
            got = entry.get_response_time_percentile(q) if entry.num_requests else float("inf")
            print(f"SLA  {check} P{int(q * 100)}: {got:.1f} ms (limit < {limit:.0f} ms)")
            if not got < limit:
                found.append(f"{check} P{int(q * 100)} {got:.1f} ms")
    return found


@events.quitting.add_listener
def assert_sla(environment: Environment, **_: object) -> None:
    found = breaches(environment.stats)
    print("SLA  " + (f"BREACHED: {', '.join(found)}" if found else "met"))
    environment.process_exit_code = 1 if found else 0
