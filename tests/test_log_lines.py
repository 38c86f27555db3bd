"""The log's lines: the request line's schema, none lost at a clean stop,
whole lines on a pipe shared by several processes, and a bounded buffer when
stderr does not take them (see docs/operations.md, "Logs")."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_calls import add_model, prefer

from model_router import _core, door_calls
from model_router.door_calls import DoorCalls, summary_of
from model_router.telemetry import requests
from model_router.telemetry.logging import MAX_BUFFERED_BYTES, LineWriter, Timestamps
from model_router.telemetry.requests import RequestObserver

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


IDS = st.sampled_from(
    ["3f9a1c2b7d4e0000000001", "rq-1", "jane@example.com", "u 7", "sk-" + "a" * 20]
)
NAMES = st.one_of(st.none(), st.sampled_from(["ws-1", "m1", "m1-ep0", "creative", "Ünïcode"]))
MS = st.floats(0, 1e7, allow_nan=False).map(lambda ms: round(ms * 1000) / 1000)


def door_call(names, ending, latency_ms, upstream_ms, tokens, cost, attempts):
    """A call as `Door.take` hands it over (`_core._DoorCall`)."""
    status, outcome = ending
    figures = (status, outcome, latency_ms, upstream_ms, *tokens, cost, False, 0, False)
    tried = [(names[4] or "m", names[5] or "e", outcome, status, latency_ms, None, None)]
    return (names, figures, tried * attempts, None, False)


def lines_written(observer: RequestObserver, act, now_s: float = 0.0) -> list[bytes]:
    """The lines `act` has `observer` write at INFO, its clock at `now_s`."""
    written: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests, "STDERR", types.SimpleNamespace(add=written.append))
        patch.setattr(requests, "time", types.SimpleNamespace(time=lambda: now_s))
        patch.setattr(requests.log, "isEnabledFor", lambda level: level >= logging.INFO)
        act()
    return written


@settings(max_examples=2000, deadline=None)
@given(
    names=st.tuples(IDS, NAMES, st.sampled_from(["creative", "a b"]), NAMES, NAMES, NAMES),
    ending=st.sampled_from([(200, "success"), (499, "cancelled")]),
    latency_ms=MS,
    upstream_ms=MS,
    tokens=st.tuples(st.integers(0, 10**7), st.integers(0, 10**7)),
    cost=st.integers(0, 10**15),
    attempts=st.integers(1, 4),
    now_s=st.floats(0, 4e9, allow_nan=False),
)
def test_the_door_writes_a_calls_line_as_the_app_does(
    names, ending, latency_ms, upstream_ms, tokens, cost, attempts, now_s
):
    """`Door.take`'s line of a call (core_rs/src/log_line.rs) against the
    app's (`RequestObserver._log_line`, of the record `door_calls` makes)
    for the same call and clock: the same bytes, or none when a string is
    not `pii_plain` (the app writes that line)."""
    facts = (ending[0], ending[1], latency_ms, upstream_ms, tokens, cost, attempts)
    door = _core.request_line(names, *facts, now_s)
    assert (door is not None) == all(_core.pii_plain(s) for s in names if s is not None)
    if door is not None:
        call = door_call(names, ending, latency_ms, upstream_ms, tokens, cost, attempts)
        summary, _ = summary_of(call, Timestamps())
        observer = RequestObserver(None, None, 1)  # type: ignore[arg-type]
        assert lines_written(
            observer, lambda: observer._log_line(summary, None, None, None), now_s
        ) == [door]


def test_a_call_the_door_wrote_the_line_of_gets_no_second_line():
    observer = RequestObserver(None, None, 1)  # type: ignore[arg-type]
    names = ("rq-1", None, "creative", None, "m1", "m1-ep0")
    summary, attempts = summary_of(
        door_call(names, (200, "success"), 2.5, 1.0, (1, 2), 0, 1), Timestamps()
    )
    logged = lines_written(observer, lambda: observer.served_by_door(summary, attempts, None, True))
    assert logged == []
    [line] = lines_written(
        observer, lambda: observer.served_by_door(summary, attempts, None, False)
    )
    assert b'"requestId":"rq-1"' in line


@pytest.mark.parametrize(
    ("level", "door", "replies"),
    [("info", True, False), ("debug", False, True), ("warning", False, False)],
)
def test_the_door_writes_lines_at_info_and_hands_replies_over_at_debug(level, door, replies):
    observer = RequestObserver(None, None, 1)  # type: ignore[arg-type]
    threshold = logging.getLevelName(level.upper())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests.log, "isEnabledFor", lambda asked: asked >= threshold)
        assert (observer.door_writes_lines(), observer.logs_replies()) == (door, replies)


class RecordingDoor:
    """The door's side of `DoorCalls.account`: what it is asked to take,
    and one plain call it served, with its line when asked for lines (the
    real door: tests/test_door_calls.py)."""

    def __init__(self, call, line: bytes):
        self.call, self.line, self.asked = call, line, []

    def take(self, lines: bool, replies: bool):
        self.asked.append((lines, replies))
        names, figures, tried, reply, _ = self.call
        call = (names, figures, tried, reply if replies else None, lines)
        return [call], [], [self.line] if lines else []


@pytest.mark.parametrize("level", ["info", "debug"])
def test_account_asks_the_door_for_lines_at_info_and_replies_at_debug(level):
    names = ("rq-1", None, "creative", None, "m1", "m1-ep0")
    _, figures, tried, _, _ = door_call(names, (200, "success"), 2.5, 1.0, (1, 2), 0, 1)
    line = _core.request_line(names, 200, "success", 2.5, 1.0, (1, 2), 0, 1, 0.0)
    door = RecordingDoor((names, figures, tried, "the reply", False), line)
    observer = RequestObserver(None, None, 1)  # type: ignore[arg-type]
    service = types.SimpleNamespace(observer=observer)
    calls = DoorCalls(door, service, None)  # type: ignore[arg-type]
    threshold = logging.getLevelName(level.upper())
    written: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests, "STDERR", types.SimpleNamespace(add=written.append))
        patch.setattr(door_calls, "STDERR", types.SimpleNamespace(extend=written.extend))
        patch.setattr(requests.log, "isEnabledFor", lambda asked: asked >= threshold)
        calls.account()
    assert door.asked == [(level == "info", level == "debug")]
    [line] = written  # one line a call, whichever side wrote it
    assert (line == door.line) == (level == "info")
    assert (b'"response":"the reply"' in line) == (level == "debug")
