"""The audit trail of admin writes, newest first, for admins only."""

from __future__ import annotations

from .. import types as t
from ..audit import read
from ..http import Request, Response, Route, json_response
from ..telemetry.figures import epoch_ms
from ..validation import parse_time

CHUNK = 500  # entries read from the store at a time while filtering


def _matches(entry: t.AuditEntry, q: t.AuditQuery) -> bool:
    if q.key_id is not None and entry.key_id != q.key_id:
        return False
    return q.resource_type is None or any(c.resource_type == q.resource_type for c in entry.changes)


async def list_audit(req: Request) -> Response:
    q: t.AuditQuery = req.query
    since = parse_time(q.since, "since") if q.since is not None else None
    found: list[t.AuditEntry] = []
    before, more = q.before, True
    # The trail is bounded (MODEL_ROUTER_AUDIT_MAX_ENTRIES): filtering reads
    # at most all of it, in chunks, and stops at the first entry before `since`.
    while more and len(found) < q.limit:
        rows = await req.service.store.audit(before, CHUNK)
        more = len(rows) == CHUNK
        for row in rows:
            entry = read(row)
            before = entry.seq
            if since is not None and epoch_ms(entry.at) < since:
                more = False
                break
            if _matches(entry, q):
                found.append(entry)
                if len(found) == q.limit:
                    break
    last = found[-1].seq if len(found) == q.limit else None
    return json_response(t.AuditPage(data=found, next_before=last))


ROUTES = [
    Route(
        "GET",
        "/api/audit",
        list_audit,
        "The audit trail of admin writes (who, when, what, before/after), newest first",
        "audit",
        "audit",
        query=t.AuditQuery,
        response=t.AuditPage,
    ),
]
