"""Writes from handlers: a store precondition that fails becomes the API's
answer (an id that is taken is 409, one that is missing is 404), an update
that loses to other writers every time is 409, and a document set whole
answers 201 when new, 200 when replaced."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from ..catalog import LABELS, ConcurrentUpdate, Kind
from ..http import ApiError, Request, Response, json_response, not_found
from ..store import ExpectAbsent, Op, PreconditionFailed


async def apply(req: Request, ops: Sequence[Op]) -> None:
    try:
        await req.service.catalog.apply(ops)
    except PreconditionFailed as failed:
        op = failed.op
        label = LABELS[op.kind]
        if isinstance(op, ExpectAbsent):
            raise ApiError(
                409, "conflict", f"{label} {op.id!r} already exists", {f"{label}Id": op.id}
            ) from None
        raise not_found(label, op.id) from None


T = TypeVar("T", bound=msgspec.Struct)


async def update(
    req: Request, kind: Kind[T], ids: Sequence[str], change: Callable[[T], T]
) -> list[T] | str:
    """Catalog.update, with losing every race answered as 409."""
    try:
        return await req.service.catalog.update(kind, ids, change)
    except ConcurrentUpdate as exc:
        raise ApiError(409, "conflict", str(exc)) from None


async def put_whole(req: Request, kind: Kind[Any], id: str, doc: Any) -> Response:
    existed = await req.service.store.get(kind.name, id) is not None
    await req.service.catalog.apply([kind.put(id, doc)])
    return json_response(doc, 200 if existed else 201)
