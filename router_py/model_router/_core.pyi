"""Type stubs for the Rust extension (core_rs/src/py.rs)."""

import os
from collections.abc import Mapping, Sequence
from typing import Literal, final

__all__ = [
    "Engine",
    "Decision",
    "Upstream",
    "Door",
    "DOOR_PEER_HEADER",
    "DOOR_VERDICT_HEADER",
    "Keys",
    "Clients",
    "Leases",
    "Rollouts",
    "unit_hash",
    "ARM_WINNER",
    "ARM_CANARY",
    "ARM_BASELINE",
    "SPENT_LEASED",
    "SPENT_ALONE",
    "SPENT_TAKE",
    "SPENT_REFUSED",
    "LEASE",
    "RATE_MS",
    "AHEAD_MS",
    "SHARE",
    "RETRY_MS",
    "hash_key",
    "read_key_file",
    "new_id",
    "permissions",
    "sketch_quantiles",
    "same_format_body",
    "pii_plain",
    "release_free_memory",
    "account_door_calls",
    "answer_outcome",
    "read_chat_call",
    "retry_after_ms",
    "FAILOVER_OUTCOMES",
    "HEALTHY_OUTCOMES",
    "read_openai_chat",
    "read_openai_chunk",
    "read_anthropic_message",
    "__version__",
]
__version__: str

@final
class Decision:
    """The outcome of one Engine.decide."""

    source: Literal["requested", "rule", "preferences", "default"]
    rule_id: str | None
    rule_name: str | None
    candidates: list[tuple[str, list[str]]]
    """Ranked (model id, [endpoint id, ...])."""
    reasons: list[str]
    """Why each candidate holds its place (with explain)."""
    excluded: list[tuple[str, str]]
    """(model id, why it is not a candidate), with explain."""
    error: tuple[str, str] | None
    """(kind, message) when there is no candidate: budget_exceeded,
    unknown_model, no_eligible_model or breakers_open."""
    budget: tuple[str, float, float] | None
    """(period, limit USD, spent USD) when a budget stopped the request."""
    failed_open: bool

@final
class Engine:
    """One worker's routing engine (see docs/routing.md)."""

    def __new__(cls, seed: int | None = None) -> Engine: ...
    def load(self, data: bytes) -> int:
        """Swap in a snapshot document (JSON); returns its version.
        ValueError, keeping the current one, if it is invalid."""
    @property
    def version(self) -> int: ...
    @property
    def model_count(self) -> int: ...
    @property
    def endpoint_count(self) -> int: ...
    @property
    def rule_count(self) -> int: ...
    def decide(
        self,
        agent_type: str,
        workspace_id: str | None = None,
        user_id: str | None = None,
        request_type: str = "chat",
        content_length: int = 0,
        capabilities: list[str] | None = None,
        model: str | None = None,
        metadata: Mapping[str, object] | None = None,
        limit: int | None = None,
        explain: bool = False,
    ) -> Decision:
        """Rank candidates, at most `limit` of them. With explain: reasons for
        everything, and a dry run (no rule match counted, no probe taken)."""
    def record(
        self,
        model_id: str,
        endpoint_id: str | None,
        success: bool | None,
        latency_ms: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        workspace_id: str | None = None,
        retry_after_ms: int | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        started_ms: int | None = None,
        outcome: str | None = None,
        agent_type: str | None = None,
        rule_id: str | None = None,
        failover_from: tuple[str, str, str] | None = None,
        ttft_ms: float | None = None,
        rollout_id: str | None = None,
        variant: str | None = None,
    ) -> int | None:
        """Account one attempt; its cost in nano-dollars (None: model unknown).
        `success` None is no verdict (the caller left before the answer): the
        breaker and latency stats are left alone. `prompt_tokens` counts
        cached ones too; cache reads and writes are priced at the model's
        cache prices. `started_ms` (when the attempt was
        sent; default now): outcomes of attempts sent before the breaker's last
        change do not move it. With an `outcome` kind ("success", "timeout",
        ...) the attempt also folds into the outcome rollups (in the minute of
        `started_ms`), keyed by model,
        endpoint, workspace, agent type, rule, outcome, rollout and variant
        (the canary or experiment id and the arm's label, as headers show
        them); `failover_from` is the failed attempt it follows: (model id,
        endpoint id, outcome)."""
    def take_rollups(
        self,
    ) -> tuple[
        list[
            tuple[
                int,
                tuple[str, str, str, str, str, str, str, str],
                tuple[int, int, int, int, int, int, int],
                list[tuple[int, int]],
                list[tuple[int, int]],
            ]
        ],
        int,
    ]:
        """Drain the outcome rollups: ([(minute start ms, (model, endpoint,
        workspace, agent type, rule, outcome, rollout, variant; "" when
        absent), (attempts, requests, failovers in, failovers out, tokens in,
        tokens out, cost nano-dollars), latency sketch bins, TTFT sketch
        bins), ...], attempts not counted because the key bound was reached)."""
    def take_breaker_transitions(self) -> list[tuple[str, int | None]]:
        """Breaker changes since the last call: (endpoint id, open until ms
        since the epoch, or None for closed)."""
    def adopt_breaker_transition(self, endpoint_id: str, open_until_ms: int | None) -> bool:
        """Take on a change another worker or replica made."""
    def due_probes(self) -> list[tuple[str, str]]:
        """Half-open endpoints due for the router's own probe (active probes):
        (model id, endpoint id), each probe slot taken."""
    def begin_flush(self) -> tuple[dict[str, int], dict[str, int]]: ...
    def end_flush(self, totals: dict[str, tuple[int, int, int]]) -> None: ...
    def spent(self, workspace_id: str) -> tuple[int, int, int]: ...
    def rule_matches(self) -> list[tuple[str, str, int]]: ...
    def model_stats(self, model_id: str) -> tuple[int, float, float, float, float] | None: ...
    def health_scores(self) -> list[tuple[str, float]]:
        """(model id, health x success rate x latency factor, 0..1)."""
    def breaker_state(
        self, endpoint_id: str
    ) -> tuple[Literal["closed", "open", "half_open"], int | None] | None: ...
    def breaker_states(
        self,
    ) -> list[tuple[str, str, Literal["closed", "open", "half_open"]]]:
        """Every endpoint's breaker: (model id, endpoint id, state)."""

@final
class Upstream:
    """Plain HTTP/1.1 exchanges, over TLS for https://, on a thread of the
    core's own (engine/upstream.py carries them)."""

    def __new__(
        cls,
        trusted_file: str | os.PathLike[str] | None = None,
        trusted_dir: str | os.PathLike[str] | None = None,
    ) -> Upstream: ...
    def fileno(self) -> int:
        """Readable when `take` has finished exchanges."""
    def submit(
        self,
        token: int,
        tls: bool,
        host: str,
        port: int,
        request: bytes,
        connect_s: float,
        head_s: float,
        done_s: float,
        max_body: int,
    ) -> None:
        """Queue `request` (head and body) for host:port (over TLS when
        `tls`, checked against the trusted authorities) until `dispatch`:
        connected within connect_s, the answer's head within head_s, all of
        it within done_s and at most max_body bytes of body."""
    def dispatch(self) -> None:
        """Hand what was submitted to the core's thread (one wake for all)."""
    def cancel(self, token: int) -> None:
        """End the exchange at once, closing its connection; `take` will
        not return it."""
    def take(
        self,
    ) -> tuple[list[tuple[int, int, dict[str, str], bytes]], list[tuple[int, bool, str]]]:
        """The exchanges finished since the last call: ([(token, status,
        headers, body), ...], [(token, timed out, message), ...])."""

@final
class Clients:
    """Each client address's standing in this worker (core_rs/src/clients.rs):
    its requests in progress, capped at `max_in_flight` (0: no cap), and its
    block after too many failed authentications. Times are ms since the epoch."""

    def __new__(cls, max_in_flight: int) -> Clients: ...
    def enter(self, address: str) -> bool:
        """Count one more request of `address`; False, counting nothing, at its cap."""
    def leave(self, address: str) -> None:
        """One request `enter` counted is over."""
    def block(self, address: str, until_ms: int, now_ms: int) -> None:
        """Block `address` until `until_ms`; blocks ended by `now_ms` are forgotten."""
    def blocked_for(self, address: str, now_ms: int) -> int | None:
        """How long (ms) `address` is still blocked, if it is."""
    def unblock_ended(self, now_ms: int) -> int:
        """Forget the blocks ended by `now_ms`; how many are left."""

@final
class Leases:
    """One worker's rate-limit leases (core_rs/src/leases.rs): the admissions
    in hand per (key, window), spent on each request; taking a lease from the
    store is the caller's (ratelimit.py). `now_mono_ms` is a monotonic clock,
    `now_ms` the wall clock windows are counted on."""

    def __new__(cls) -> Leases: ...
    def spend(
        self, key: str, window: int, limit: int, may_take: bool, now_mono_ms: int
    ) -> tuple[int, int, bool]:
        """(SPENT_LEASED, ALONE, TAKE or REFUSED; remaining; top up now). TAKE:
        the lease is empty and may_take: take one, then spend again."""
    def begin_take(self, key: str, window: int, limit: int, now_ms: int) -> int | None:
        """The amount to reserve (<= 0: none, but end with take_ended); None:
        refilled meanwhile, nothing to do."""
    def granted(self, key: str, window: int, amount: int) -> None: ...
    def refused(self, key: str, window: int, limit: int, amount: int, taken: int) -> int:
        """The store refused, all workers having taken `taken`: the next amount."""
    def store_away(self, key: str, window: int, now_mono_ms: int) -> None:
        """Count alone, and ask the store no more for a while."""
    def take_ended(self, key: str, window: int) -> None: ...
    def offline(self) -> list[tuple[str, int, int]]:
        """(key, window, count) admitted alone and not yet handed to the store."""
    def handed_over(self, key: str, window: int, count: int) -> None: ...
    def __len__(self) -> int: ...

SPENT_LEASED: int
SPENT_ALONE: int
SPENT_TAKE: int
SPENT_REFUSED: int
LEASE: int  # the smallest lease: a slow key's, and a window's first
RATE_MS: int  # the admission rate is measured over at least this long
AHEAD_MS: int  # a lease holds this long of the measured rate
SHARE: int  # a worker holds at most this fraction of what the window has left
RETRY_MS: int  # after the store failed to answer, how long to count alone

@final
class Rollouts:
    """The active canaries and experiments (core_rs/src/rollouts.rs)."""

    def __new__(
        cls,
        entries: list[
            tuple[
                int,
                str,
                str,
                tuple[str, float] | None,
                tuple[bool, list[float], bool] | None,
            ]
        ],
    ) -> Rollouts:
        """Entries oldest first (the newest on a scope wins): (scope: 0 rule,
        1 agent type, 2 workspace; its value; the rollout's id; a canary's
        (baseline model, share 0-1), or an experiment's (by user, the
        weights' running sums over their total, ended on its winner))."""
    def assign(
        self,
        rule_id: str | None,
        agent_type: str,
        workspace_id: str | None,
        first_model: str | None,
        request_id: str,
        user_id: str | None,
    ) -> tuple[int, int] | None:
        """(the rollout's index among the entries, its arm: a variant >= 0,
        ARM_WINNER, ARM_CANARY or ARM_BASELINE), or None."""

ARM_WINNER: int
ARM_CANARY: int
ARM_BASELINE: int

def unit_hash(parts: list[str]) -> float:
    """A uniform number in [0, 1): BLAKE2b-64 of the parts joined by 0x1f."""

@final
class Keys:
    """The API keys a worker accepts (core_rs/src/keys.rs): `records` as the
    store keeps them, (id, role, secret_hash, workspace_id), and the admin
    key the service was started with, by its hash. A record whose hash is
    not SHA-256 hex matches no key. Raises ValueError for an unknown role."""

    def __new__(
        cls,
        records: list[tuple[str, str, str, str | None]],
        bootstrap_hash: str | None = None,
    ) -> Keys: ...
    def verify(
        self, key: str
    ) -> tuple[str, Literal["admin", "operator", "agent", "viewer"], str | None] | None:
        """(key id, role, workspace id) of `key`, or None. A miss costs what
        a hit does: the key is hashed and compared in constant time either way."""

def permissions() -> tuple[list[tuple[str, list[str]]], list[str]]:
    """([(role, the permissions it allows)], the permissions a key scoped to
    a workspace keeps): the one table of them (core_rs/src/keys.rs)."""

def new_id() -> str:
    """A new id of 22 hex digits, unique across workers, replicas and
    restarts: a random prefix per process (drawn again in a forked child),
    then a counter."""

def hash_key(key: str) -> str:
    """The SHA-256 of a whole API key, in hex, as the store keeps it."""

def read_key_file(path: str | os.PathLike[str]) -> str | None:
    """The provider key in a file (core_rs/src/key_files.rs): its text,
    trimmed, read again within a second of a change; None when the file is
    gone, unreadable, not text or empty."""

@final
class Door:
    """The front door (core_rs/src/door.rs): accepts on the public port
    `listen_fd` on a thread of its own and hands every request to the app on
    `app_socket`, adding DOOR_PEER_HEADER; a body of no declared length is
    cut off past `max_body_bytes` (the app's limit) and refused by the app.
    Raises ValueError for TLS files it
    cannot use, OSError when it cannot start."""

    def __new__(
        cls,
        listen_fd: int,
        app_socket: str | os.PathLike[str],
        max_connections: int,
        header_read_timeout_ms: int,
        max_body_bytes: int,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_client_ca: str | os.PathLike[str] | None = None,
        trusted_file: str | os.PathLike[str] | None = None,
        trusted_dir: str | os.PathLike[str] | None = None,
    ) -> Door: ...
    def drain(self) -> None:
        """Stop accepting; each connection closes once its requests are answered."""
    def wait(self, timeout_s: float) -> bool:
        """Whether every connection ended within timeout_s (after `drain`)."""
    def install(
        self,
        keys: Keys,
        engine: Engine,
        clients: Clients,
        leases: Leases,
        writes_path: str | os.PathLike[str],
        writes_seen: int,
        model_names: Mapping[str, str],
        agent_types: list[str],
        models: list[tuple[str, str, list[str], list[_PlanEndpoint]]],
        held_workspaces: list[str],
        rollouts: bool,
        rate_limit: int,
        rate_window_ms: int,
        max_attempts: int,
        request_timeout_ms: int,
        max_upstream_body: int,
        pool_size: int,
        client_address_header: str | None = None,
    ) -> None:
        """From now on the door serves the routed calls it can from these
        tables (door_calls.py); `models`: (id, version, dropped parameters,
        endpoints), every model a chat call may be routed to. OSError when
        `writes_path` cannot be mapped."""
    def withdraw(self) -> None:
        """The door serves no routed call from now on."""
    def fileno(self) -> int:
        """The socket that turns readable when `take` has something."""
    def take(
        self, bounds: Sequence[Sequence[float]] | None, lines: bool, replies: bool
    ) -> tuple[list[_DoorCall], list[tuple[str, int, int, int]], _DoorAccounted]:
        """What the door queued since the last call: the calls it served (or
        saw cut short) that Python is to account, (key id, window, limit,
        now ms) of each lease to top up, and what it accounted itself. With
        `bounds` (the upper bounds of `metrics.DOOR_HISTOGRAMS`' buckets) it
        accounts each call whose strings need no masking itself, its line
        only with `lines`; without, Python accounts every call. A call's
        reply text only with `replies`."""

# An endpoint of the door's plan: (id, (https, host, port, target, authority),
# (key header, prefix, key or None, key file or None) or None, (connect,
# first byte, attempt, first token, stream idle) ms).
_PlanKey = tuple[str, str, str | None, str | None]
_PlanEndpoint = tuple[
    str, tuple[bool, str, int, str, str], _PlanKey | None, tuple[int, int, int, int, int]
]

# An attempt of a call the door served: (model, endpoint, outcome, status,
# latency ms, error, retry after ms).
_DoorAttempt = tuple[str, str, str, int | None, float, str | None, int | None]

# A call the door served (or whose caller left: status 499): ((request id,
# workspace, agent type, user, model, endpoint), (status, outcome, latency
# ms, upstream ms, prompt tokens, completion tokens, cost nanos, estimated,
# ended at ms, streamed), attempts, reply (None unless `take` was asked for
# replies)).
_DoorCall = tuple[
    tuple[str, str | None, str, str | None, str | None, str | None],
    tuple[int, str, float, float, int, int, int, bool, int, bool],
    list[_DoorAttempt],
    str | None,
]

# What the door accounted itself of the calls it took: their log lines (with
# their newlines), their records for the store, each of `metrics.DOOR_COUNTERS`'
# amounts and each of `metrics.DOOR_HISTOGRAMS`' slots (counts per bucket, then
# the sum), per tuple of label values (core_rs/src/metric_tally.rs).
_DoorAccounted = tuple[
    list[bytes],
    list[bytes],
    list[dict[tuple[str, ...], float]],
    list[dict[tuple[str, ...], list[float]]],
]

# The caller's address as the door saw it, for the app behind it.
DOOR_PEER_HEADER: str
# The door's verdict on a call it admitted and hands to the app (hex JSON).
DOOR_VERDICT_HEADER: str

def sketch_quantiles(bins: list[tuple[int, int]], quantiles: list[float]) -> list[float | None]:
    """Nearest-rank quantiles (0..1) of merged sketch bins (index, count), in
    ms, within 1% of the exact values; None when there are no values."""

def release_free_memory() -> bool:
    """Hands the free pages of every glibc arena back to the system
    (`malloc_trim`); True when some were."""

def pii_plain(text: str) -> bool:
    """Whether masking (telemetry/pii.py) leaves `text` as it is, for certain:
    a lowercase hex word with a letter, or letters, digits, `.`, `_`, `-`
    with fewer than nine digits and none of the vendor keys' prefixes."""

def account_door_calls(
    calls: list[_DoorCall],
    ids: list[str],
    now_s: float,
    bounds: Sequence[Sequence[float]],
    lines: bool,
) -> tuple[_DoorAccounted, list[_DoorCall]]:
    """What `Door.take` makes of `calls`: what it accounts itself (the lines
    stamped `now_s` seconds after the epoch, with `lines`; the records under
    the `ids` in turn; the histograms with buckets of `bounds`), and the
    calls it leaves to Python. The test layer's view of
    core_rs/src/door_account.rs."""

def same_format_body(body: bytes, model: str, drop: list[str]) -> bytes:
    """The upstream body of a request in the provider's own format: `body` as
    sent, with `model` set and `drop` taken out. ValueError when `body` is not
    one JSON object."""

# (prompt, completion, cache_read, cache_write, text, finish_reason)
_AnswerReading = tuple[int | None, int | None, int, int, str, str | None]

def read_openai_chat(body: bytes) -> _AnswerReading:
    """What accounting reads of an OpenAI chat completion; ValueError (what
    and where) when it is not of that shape."""

def read_openai_chunk(
    data: bytes,
) -> tuple[bool, bool, int, tuple[int | None, int | None, int, int]]:
    """What the door reads of one event of an OpenAI chat stream: (error,
    started, content characters, the tokens after it); ValueError when it
    is not a chunk."""

def read_anthropic_message(body: bytes) -> _AnswerReading:
    """What accounting reads of an Anthropic message; ValueError when it is
    not of that shape."""

def answer_outcome(status: int) -> str:
    """What an answer's status makes of an attempt: "success" (200),
    "rate_limited" (429), "upstream_error" (5xx, 401, 403, 408, 409: fail
    over) or "client_error" (any other: the caller's)."""

def retry_after_ms(value: str, now_ms: int) -> int | None:
    """The wait a Retry-After value asks for (delay-seconds or an HTTP-date),
    at most a day; None when it is neither."""

# The attempt outcomes that move a call on to its next candidate.
FAILOVER_OUTCOMES: frozenset[str]
# Those that leave the endpoint healthy (success, client_error, cancelled); a
# stream_error neither fails over nor does.
HEALTHY_OUTCOMES: frozenset[str]

def read_chat_call(body: bytes) -> tuple[str, bool, str | None, int] | None:
    """The door's reading of a chat completions body: (model, stream, user,
    characters of the messages' text), or None when the body is Python's to
    read (one it refuses, or may)."""
