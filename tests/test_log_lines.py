"""The log's lines: the request line's schema, none lost at a clean stop,
whole lines on a pipe shared by several processes, and a bounded buffer when
stderr does not take them (see docs/operations.md, "Logs")."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from test_calls import add_model, prefer

from model_router.telemetry.logging import MAX_BUFFERED_BYTES, LineWriter, Timestamps

REQUEST_LINE_KEYS = [
    "timestamp",
    "level",
    "service",
    "logger",
    "message",
    "requestId",
    "route",
    "workspaceId",
    "agentType",
    "userId",
    "modelId",
    "endpointId",
    "status",
    "latency",
    "upstreamMs",
    "tokens",
    "cost",
    "attempts",
]


def test_no_request_line_is_lost_at_a_clean_stop(make_server, make_mock):
    """Requests still in flight at SIGTERM finish, and their lines, built
    just before the worker exits, are in the log."""
    router = make_server(workers=2, LOG_LEVEL="info", MOCK_PROVIDER_KEY="k")
    mock = make_mock("openai", latency_ms=300)
    add_model(router, "m1", mock)
    prefer(router, "m1")
    router.wait_for_config()
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}

    def call(i: int) -> int:
        headers = {"X-Request-Id": f"stop-{i}"}
        return router.client.post("/v1/chat/completions", headers=headers, json=body).status_code

    with ThreadPoolExecutor(16) as pool:
        answers = pool.map(call, range(16))
        deadline = time.monotonic() + 10
        while mock.requests() < 16:  # all sent, and waiting on the mock
            assert time.monotonic() < deadline
            time.sleep(0.01)
        router.stop()
        assert set(answers) == {200}
    lines = router.log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]  # every line whole
    routed = [e for e in entries if e.get("requestId", "").startswith("stop-")]
    assert sorted(e["requestId"] for e in routed) == sorted(f"stop-{i}" for i in range(16))
    assert list(routed[0]) == REQUEST_LINE_KEYS
    assert routed[0]["message"] == "Request routed successfully" and routed[0]["level"] == "info"


WRITER = """
import sys
from model_router.telemetry.logging import STDERR
name = sys.argv[1]
for i in range(int(sys.argv[2])):
    STDERR.add(('{"writer": "%s", "n": %d, "pad": "%s"}\\n' % (name, i, "x" * 150)).encode())
STDERR.write()
"""


def test_workers_sharing_a_pipe_never_split_each_others_lines():
    """Granian's workers share one stderr; on a pipe only a write of at most
    PIPE_BUF bytes is atomic, so each write is at most that, in whole lines."""
    read, write = os.pipe()
    count = 3000
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, name, str(count)],
            stderr=write,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for name in ("a", "b")
    ]
    os.close(write)
    chunks = []
    while chunk := os.read(read, 8192):  # slowly: the pipe stays full, writers wait
        chunks.append(chunk)
        time.sleep(0.0005)
    os.close(read)
    out = b"".join(chunks)
    for writer in writers:
        assert writer.wait(30) == 0
    entries = [json.loads(line) for line in out.splitlines()]
    for name in ("a", "b"):
        assert [e["n"] for e in entries if e["writer"] == name] == list(range(count))


def test_a_blocked_stderr_drops_request_lines_and_counts_them():
    read, write = os.pipe()  # nobody reads it yet: it fills and blocks
    writer = LineWriter(write)
    line = b'{"pad": "' + b"x" * 990 + b'"}\n'
    added = 3000  # ~3 MB: far past the pipe and the buffer's bound
    started = time.monotonic()
    for _ in range(added):
        writer.add(line)
    assert time.monotonic() - started < 5  # never waited for the pipe
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read, 65536), b"")))
    reader.start()
    writer.write()
    os.close(write)
    reader.join(10)
    lines = b"".join(chunks).splitlines()
    kept = [entry for entry in lines if entry == line.rstrip()]
    notes = [json.loads(entry) for entry in lines if entry != line.rstrip()]
    assert len(notes) == 1 and notes[0]["level"] == "warning", notes
    dropped = int(notes[0]["message"].split()[0])
    assert dropped > 0 and len(kept) + dropped == added
    # At most the buffer's bound waiting, and one batch taken from it being written.
    assert len(kept) * len(line) <= 2 * (MAX_BUFFERED_BYTES + len(line))
    os.close(read)


def test_timestamps_are_isoformat_to_the_millisecond():
    stamps = Timestamps()
    rng = random.Random(1)
    for _ in range(20000):
        whole = rng.randint(0, 4_000_000_000)
        created = whole + rng.choice([rng.random(), 0.9999995, 0.99999949, 0.0005, 0.0004999])
        want = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert stamps(created) == want.replace("+00:00", "Z"), created
