"""The Store protocol: everything the API writes, behind one small interface.

Documents are JSON bytes filed under a kind (``models``, ``rules``…) and an id.
Writes go through ``apply``: a list of operations carried out atomically, all or
nothing, after their preconditions hold, and each successful ``apply`` bumps the
config version that every worker polls to reload its engine. Counters are the
other half: atomic increments with an expiry, for rate limits and spend.

The config also has an epoch: an id written once into an empty store, and
anew by every config import. A store that comes back without our epoch (wiped,
or restored from an old backup) is a reset, which the router must not mistake
for a config; an epoch an import wrote is an operator's config, adopted.

Every implementation raises StoreUnavailable, and only that, when the store
cannot be reached (refused, timed out, locked): callers tell an outage from
a bug by its type.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol


class StoreUnavailable(Exception):
    """The store could not be reached; nothing is known of the operation's fate
    beyond that (a write may or may not have landed)."""


@dataclass(frozen=True)
class ConfigStamp:
    """Which config the store holds: its epoch (None when the store has none:
    wiped) and its version within that epoch."""

    epoch: str | None
    version: int

    @property
    def imported(self) -> bool:
        return self.epoch is not None and self.epoch.startswith("imported-")


def new_epoch(origin: Literal["created", "imported"]) -> str:
    return f"{origin}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Put:
    kind: str
    id: str
    body: bytes


@dataclass(frozen=True)
class Delete:
    kind: str
    id: str


@dataclass(frozen=True)
class Clear:
    """Delete every document of a kind. `before`: the documents the writer read
    just before (for the audit trail's deletions; the store ignores it)."""

    kind: str
    before: Mapping[str, bytes] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ExpectAbsent:
    kind: str
    id: str


@dataclass(frozen=True)
class ExpectPresent:
    kind: str
    id: str


@dataclass(frozen=True)
class ExpectBody:
    """The document still holds exactly these bytes (compare-and-set)."""

    kind: str
    id: str
    body: bytes


@dataclass(frozen=True)
class SetEpoch:
    """Start a new config epoch (what a config import does)."""

    epoch: str


@dataclass(frozen=True)
class AppendAudit:
    """Record this write in the audit trail, with the config version it
    produces, keeping the newest `keep` entries (written with the write, so
    no write lands unrecorded)."""

    body: bytes
    keep: int


Op = Put | Delete | Clear | ExpectAbsent | ExpectPresent | ExpectBody | SetEpoch | AppendAudit

# One audit entry as stored: (sequence number, config version it produced, body).
AuditRow = tuple[int, int, bytes]


@dataclass(frozen=True)
class Reservation:
    """A budget check: the spent and reserved counters of one period must
    stay within `limit` (all three in the same unit)."""

    spent: str
    reserved: str
    limit: int


# One rollup cell to add: (resolution "m" | "h" | "w" | "u", bucket start ms, key,
# metric) -> amount. The key joins the bucket's dimensions; the metric is a
# counter or a sketch bin. "w" buckets are the measurement windows of canaries
# and experiments: each starts at its own ms (a canary step's start), so their
# step is 1 ms and a window is read as [start, start + 1); "u" buckets hold an
# experiment window's per-user totals (experiments/tally.py) the same way.
RollupCell = tuple[str, int, str, str]
# How long a merged batch's id is remembered: far longer than any retry.
BATCH_KEEP_MS = 3_600_000
ROLLUP_STEP_MS = {"m": 60_000, "h": 3_600_000, "w": 1, "u": 1}

# How long a writer's last applied write is remembered (add_counters): longer
# than any outage a write stays in doubt through.
WRITE_KEEP_MS = 7 * 86_400_000


class CounterWrite(NamedTuple):
    """A write of counters that a writer sends until the store answers: the
    store remembers the id of each writer's last applied write, so the same
    write sent again adds nothing. A writer sends a new write only once its
    last one is known to have landed."""

    writer: str
    id: str


class PreconditionFailed(Exception):
    """An ``Expect*`` operation did not hold; nothing was written."""

    def __init__(self, op: ExpectAbsent | ExpectPresent | ExpectBody):
        super().__init__(f"{type(op).__name__} {op.kind}/{op.id}")
        self.op = op


def lifetimes(names: Iterable[str], ttl_ms: int | Mapping[str, int]) -> list[int]:
    """Each counter's time to live, in the order of `names` (add_counters)."""
    if isinstance(ttl_ms, Mapping):
        return [ttl_ms[name] for name in names]
    return [ttl_ms for _ in names]


class Store(Protocol):
    async def get(self, kind: str, id: str) -> bytes | None: ...

    async def get_all(self, kind: str) -> dict[str, bytes]: ...

    async def apply(self, ops: Sequence[Op]) -> int:
        """Check every Expect*, then carry out every write, atomically; return
        the new config version. Raises PreconditionFailed and writes nothing."""
        ...

    async def version(self) -> int: ...

    async def audit(self, before: int | None, count: int) -> list[AuditRow]:
        """Up to `count` audit entries with a sequence number below `before`
        (all when None), newest first."""
        ...

    async def stamp(self) -> ConfigStamp:
        """The config's epoch and version, read together."""
        ...

    async def start_epoch(self) -> str:
        """Give a store with no epoch a new one ("created-..."); return the
        store's epoch, whoever wrote it."""
        ...

    async def watch_config(self, changed: Callable[[], None]) -> None:
        """Call `changed` whenever another process writes the config, until
        cancelled; return at once if the store cannot tell (then polling does)."""
        ...

    async def add_counters(
        self,
        deltas: Mapping[str, int],
        ttl_ms: int | Mapping[str, int],
        write: CounterWrite | None = None,
    ) -> dict[str, int]:
        """Add each delta to its counter (creating it with this time to live,
        one for all or each counter's own) and return the new totals,
        atomically per counter. A `write` is applied once: the same write
        sent again (its writer's last, remembered WRITE_KEEP_MS) adds nothing
        and returns the totals."""
        ...

    async def claim_counters(self, values: Mapping[str, int], ttl_ms: int) -> dict[str, int]:
        """Set each counter that does not exist to its value (with this time to
        live), leave the others alone, and return what each holds now:
        atomically per counter, so the first claim wins."""
        ...

    async def read_counters(self, names: Sequence[str]) -> dict[str, int]:
        """Each counter's value (0 when absent), creating none."""
        ...

    async def push_recent(self, items: Sequence[bytes], keep: int) -> None:
        """Append to the list of recent requests, keeping the newest `keep`."""
        ...

    async def recent(self, limit: int) -> list[bytes]:
        """The newest `limit` recent requests, newest first."""
        ...

    async def reserve(
        self, checks: Sequence[Reservation], amount: int, ttl_ms: int
    ) -> tuple[int, int, int] | None:
        """Atomically: if every counter pair leaves room for `amount` under its
        limit, add `amount` to each reserved counter (created with this time to
        live) and return None; else change nothing and return (index of the
        first check without room, its spent, its reserved)."""
        ...

    async def put_state(self, kind: str, items: Mapping[str, bytes]) -> None:
        """Set entries of a map of live state shared by every worker and
        replica (breaker transitions): not config, so no version bump."""
        ...

    async def get_state(self, kind: str) -> dict[str, bytes]: ...

    async def delete_state(self, kind: str, ids: Collection[str]) -> None:
        """Remove entries of a map of live state (those absent are ignored)."""
        ...

    async def hold_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take the lease `name` for `holder`, or extend it if `holder` has it,
        for `ttl_ms`; True when `holder` holds it now. A lease no one renews is
        free again after its time to live: one holder at a time, deployment-wide
        (the active health prober, the rollout controller: store/lease.py)."""
        ...

    async def release_lease(self, name: str, holder: str) -> None:
        """Free the lease if `holder` holds it (a clean stop hands it over at once)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    async def merge_rollups(
        self, cells: Mapping[RollupCell, int], keep_ms: Mapping[str, int], batch: str = ""
    ) -> None:
        """Add each amount to its cell (created at zero), and forget the cells of
        each resolution older than its `keep_ms` (retention). A `batch` id is
        applied once (remembered BATCH_KEEP_MS): a merge whose answer was lost
        is sent again under its id, never counted twice."""
        ...

    async def read_rollups(
        self, resolution: str, from_ms: int, to_ms: int
    ) -> list[tuple[int, str, str, int]]:
        """(bucket start, key, metric, value) of every cell whose bucket starts
        in [from_ms, to_ms)."""
        ...
