"""The door's own account of the calls it serves (`Door.take`): each call's
log line, its record for the store and its metric samples, made in the core
(core_rs/src/log_line.rs, recent_record.rs, metric_tally.rs) for the calls
whose strings need no masking, held here to what the app's accounting makes
of the same call; and `DoorCalls.account`, which asks for it at INFO only.
End to end, on both edges: tests/test_door_calls.py."""

from __future__ import annotations

import logging
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_router import _core, door_calls
from model_router.door_calls import DoorCalls, summary_of
from model_router.telemetry import metrics, requests
from model_router.telemetry.logging import Timestamps
from model_router.telemetry.metrics import DOOR_BUCKETS, MetricBatch
from model_router.telemetry.requests import RequestObserver

IDS = st.sampled_from(
    ["3f9a1c2b7d4e0000000001", "rq-1", "jane@example.com", "u 7", "sk-" + "a" * 20]
)
NAMES = st.one_of(st.none(), st.sampled_from(["ws-1", "m1", "m1-ep0", "creative", "", "Ünïcode"]))
ENDPOINTS = st.sampled_from(["m1-ep0", "m2-ep1", "a b"])
MS = st.floats(0, 1e7, allow_nan=False).map(lambda ms: round(ms * 1000) / 1000)
OUTCOMES = st.sampled_from(
    [
        "success",
        "client_error",
        "rate_limited",
        "upstream_error",
        "timeout",
        "connect_error",
        "malformed",
        "stream_error",
        "cancelled",
    ]
)
ATTEMPT = st.tuples(
    st.sampled_from(["m1", "m2"]),
    ENDPOINTS,
    OUTCOMES,
    st.one_of(st.none(), st.sampled_from([200, 429, 503])),
    MS,
    st.one_of(st.none(), st.just("the provider's message")),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
CALL = st.tuples(
    st.tuples(IDS, NAMES, st.sampled_from(["creative", "a b"]), NAMES, NAMES, NAMES),
    st.tuples(
        st.sampled_from([200, 400, 499, 502, 503]),
        OUTCOMES,
        MS,
        MS,
        st.integers(0, 10**7),
        st.integers(0, 10**7),
        st.integers(0, 10**15),
        st.booleans(),
        st.integers(0, 4_000_000_000_000),
        st.booleans(),
    ),
    st.lists(ATTEMPT, min_size=1, max_size=4),
    st.none(),
)


def plain(call) -> bool:
    names, _, tried, _ = call
    strings = [s for s in names if s is not None] + [s for a in tried for s in a[:2]]
    return all(_core.pii_plain(s) for s in strings)


def accounted_by_app(calls, record_ids, now_s: float, level: int = logging.INFO):
    """What the app's accounting makes of calls the door left to it, at
    `level` with its clock at `now_s`: (their lines, their records, their samples)."""
    observer = RequestObserver(None, None, 10)  # type: ignore[arg-type]
    written: list[bytes] = []
    ids = iter(record_ids)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests, "STDERR", types.SimpleNamespace(add=written.append))
        patch.setattr(requests, "time", types.SimpleNamespace(time=lambda: now_s))
        patch.setattr(requests.log, "isEnabledFor", lambda asked: asked >= level)
        patch.setattr(door_calls, "new_id", lambda: next(ids))
        for call in calls:
            summary, attempts = summary_of(call, Timestamps())
            observer.served_by_door(summary, attempts, None)
    return written, list(observer._pending), observer._metrics


# Latencies arrive rounded to the microsecond (routed.rs), as the app's
# line writes them (`round(x, 3)`); the record keeps them as they are.
@settings(max_examples=1000, deadline=None)
@given(
    calls=st.lists(CALL, min_size=1, max_size=4),
    now_s=st.floats(0, 4e9, allow_nan=False),
    level=st.sampled_from([logging.INFO, logging.WARNING]),
)
def test_the_door_accounts_calls_as_the_app_does(calls, now_s, level):
    """The same lines (none below INFO), records and samples, byte for byte
    and sample for sample (a batch's sums added in the same order), for the
    calls whose strings are all `pii_plain`; the others it leaves to the
    app, which masks and accounts them."""
    ids = [f"{i:x}a0f9135bc9aff" for i in range(len(calls))]
    lines_on = level <= logging.INFO
    (lines, records, counts, observed), left = _core.account_door_calls(
        calls, ids, now_s, DOOR_BUCKETS, lines_on
    )
    assert left == [call for call in calls if not plain(call)]
    mine = [call for call in calls if plain(call)]
    app_lines, app_records, app_samples = accounted_by_app(mine, ids, now_s, level)
    assert (lines, records) == (app_lines, app_records)
    merged = MetricBatch()
    merged.merge(counts, observed)
    assert merged._counts == app_samples._counts
    assert merged._observed == app_samples._observed


def test_the_door_tallies_every_metric_the_app_samples():
    """DOOR_COUNTERS and DOOR_HISTOGRAMS are every metric a call of the
    door's moves (the property test above holds their order and buckets)."""
    names = ("rq-1", None, "creative", None, "m1", "m1-ep0")
    tried = [("m1", "m1-ep0", "success", 200, 1.0, None, None)]
    call = (names, (200, "success", 2.5, 1.0, 1, 2, 9, False, 0, False), tried, None)
    _, _, samples = accounted_by_app([call], ["a1"], 0.0)
    moved = {metric for metric, _ in samples._counts} | {h for h, _ in samples._observed}
    assert moved == set(metrics.DOOR_COUNTERS) | set(metrics.DOOR_HISTOGRAMS)


@pytest.mark.parametrize(
    ("level", "door", "lines", "replies"),
    [
        ("info", True, True, False),
        ("debug", False, True, True),
        ("warning", True, False, False),
        ("error", True, False, False),
    ],
)
def test_the_door_accounts_but_at_debug_and_hands_replies_over_then(level, door, lines, replies):
    observer = RequestObserver(None, None, 1)  # type: ignore[arg-type]
    threshold = logging.getLevelName(level.upper())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests.log, "isEnabledFor", lambda asked: asked >= threshold)
        asked = (observer.door_buckets(), observer.writes_lines(), observer.logs_replies())
    assert asked == (DOOR_BUCKETS if door else None, lines, replies)


class RecordingDoor:
    """The door's side of `DoorCalls.account`: what it is asked to take, and
    two calls it served, one plain (it accounts that one itself when asked)
    and one with an email in it (always Python's). The real door:
    tests/test_door_calls.py."""

    PLAIN = ("rq-1", None, "creative", None, "m1", "m1-ep0")
    MASKED = ("rq-2", None, "creative", "jane@example.com", "m1", "m1-ep0")

    def __init__(self) -> None:
        figures = (200, "success", 2.5, 1.0, 1, 2, 9, False, 0, False)
        tried = [("m1", "m1-ep0", "success", 200, 1.0, None, None)]
        self.calls = [(names, figures, tried, "the reply") for names in (self.PLAIN, self.MASKED)]
        self.asked: list = []

    def take(self, bounds, lines: bool, replies: bool):
        self.asked.append((bounds, lines, replies))
        calls = [(n, f, t, reply if replies else None) for n, f, t, reply in self.calls]
        if bounds is None:
            return calls, [], ([], [], [{}] * 5, [{}] * 3)
        accounted, left = _core.account_door_calls(calls, ["a1"], 0.0, bounds, lines)
        return left, [], accounted


@pytest.mark.parametrize("level", ["info", "debug"])
def test_account_takes_in_what_the_door_accounted_and_accounts_the_rest(level):
    door = RecordingDoor()
    observer = RequestObserver(None, None, 10)  # type: ignore[arg-type]
    service = types.SimpleNamespace(observer=observer)
    calls = DoorCalls(door, service, None)  # type: ignore[arg-type]
    threshold = logging.getLevelName(level.upper())
    written: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests, "STDERR", types.SimpleNamespace(add=written.append))
        patch.setattr(door_calls, "STDERR", types.SimpleNamespace(extend=written.extend))
        patch.setattr(requests.log, "isEnabledFor", lambda asked: asked >= threshold)
        calls.account()
    info = level == "info"
    assert door.asked == [(DOOR_BUCKETS if info else None, True, not info)]
    # One line and one record a call, whichever side made them.
    assert sorted(line.split(b'"requestId":"')[1][:4] for line in written) == [b"rq-1", b"rq-2"]
    assert len(observer._pending) == 2
    assert all((b'"response":"the reply"' in line) == (not info) for line in written)
    assert b'"userId":"[EMAIL]"' in next(line for line in written if b"rq-2" in line)
    requests_m1 = observer._metrics._counts[(metrics.REQUESTS, ("m1", "200"))]
    door_200 = observer._metrics._counts[(metrics.DOOR_CALLS, ("200",))]
    assert (requests_m1, door_200) == (2.0, 2.0)


class BrokenTallyDoor(RecordingDoor):
    """A door whose own account cannot be taken in (a tally of the wrong
    shape, as a metric added on one side only would make)."""

    def take(self, bounds, lines: bool, replies: bool):
        left, _, (lines_, records, counts, observed) = super().take(bounds, lines, replies)
        return left, [("k1", 60, 100, 5)], (lines_, records, counts[:-1], observed)


def test_an_account_that_cannot_be_taken_in_loses_no_call_left_to_python():
    refilled = []
    observer = RequestObserver(None, None, 10)  # type: ignore[arg-type]
    limiter = types.SimpleNamespace(refill=lambda *args: refilled.append(args))
    service = types.SimpleNamespace(observer=observer, limiter=limiter)
    calls = DoorCalls(BrokenTallyDoor(), service, None)  # type: ignore[arg-type]
    written: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests, "STDERR", types.SimpleNamespace(add=written.append))
        patch.setattr(door_calls, "STDERR", types.SimpleNamespace(extend=written.extend))
        patch.setattr(requests.log, "isEnabledFor", lambda asked: asked >= logging.INFO)
        calls.account()  # logs the failure, raises nothing
    assert refilled == [(("k1", 60), 100, 5)]
    # The call with an email in it is still accounted, by the app.
    assert any(b'"requestId":"rq-2"' in line for line in written)
    assert observer._metrics._counts[(metrics.DOOR_CALLS, ("200",))] == 1.0
    assert len(observer._pending) == 1  # the door's part is refused whole, not halfway
