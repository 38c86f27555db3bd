"""HTTP primitives: the route table entry, the request a handler sees, its
response, the API error, and the matcher that maps a path to a route.

A Route says everything about an endpoint once: its handler, who may call it,
the Struct its body and query decode into and the Struct it answers with. The
app uses that to validate and authorize, the OpenAPI document to describe.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

import msgspec

from . import _core

if TYPE_CHECKING:
    from .auth import Principal
    from .door_calls import DoorTries
    from .service import Service

Permission = Literal[
    "read",  # look at models, rules, health, config
    "operate",  # change a model's status or health
    "configure",  # write models, endpoints, rules, agent preferences, import/export
    "configure_workspace",  # write the config of the key's own workspace
    "manage_keys",  # create, list and revoke API keys
    "route",  # ask for routing decisions and model calls
    "audit",  # read the audit trail of admin writes
]

JSON = "application/json"

# Ids unique across workers, replicas and restarts: the core's (ids.rs).
new_id = _core.new_id


class ApiError(Exception):
    """An error the client caused or must know of; rendered as
    ``{"error": {"type", "message", "details"}}`` with its status."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        details: Any = None,
        headers: Sequence[tuple[str, str]] = (),
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.details = details
        self.headers = list(headers)
        self.param = param  # the request parameter at fault, when one is
        self.code = code  # a finer kind than `type` (OpenAI's `code`)
        self.observed = False  # already logged and counted as a routed request


def too_deep() -> ApiError:
    """JSON nested past what the decoder follows (about a thousand levels):
    no API takes anything that deep."""
    return ApiError(400, "invalid_json", "the JSON body is nested too deeply", {"in": "body"})


def not_found(what: str, id: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} {id!r} not found", {what: id})


@dataclass
class Response:
    body: bytes
    status: int = 200
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    # A streamed body: sent chunk by chunk as it is produced; closed early if
    # the client goes away.
    stream: AsyncIterator[bytes] | None = None


_encoder = msgspec.json.Encoder()


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(obj), status)


@dataclass
class Request:
    method: str
    path: str
    path_params: dict[str, str]
    headers: Mapping[str, str]  # lower-case names
    service: Service
    query: Any = None
    body: Any = None
    raw_body: bytes = b""
    principal: Principal | None = None
    started: float = 0.0  # time.perf_counter() when the request arrived
    request_id: str = ""
    # Waits until the caller's connection closes (the server's own signal).
    caller_left: Callable[[], Awaitable[object]] | None = None
    # What the door's attempts at this call came to (it hands over failures).
    door_tries: DoorTries | None = None


class CallerWatch:
    """Cancels the request's task when its caller leaves (the connection
    closes) before `close`: whatever the task awaits is cancelled with it,
    an upstream call included. `left` says whether it did.

    The watch starts WATCH_AFTER_S after it is made: watching costs a task,
    about 25 µs of a worker's CPU (a fifth of a routed call's, measured with
    `bench/plain_ab.py`), which most calls end before paying. A caller gone
    by then is seen at once."""

    WATCH_AFTER_S = 0.1

    def __init__(self, req: Request):
        self.left = False
        self._task = asyncio.current_task()
        self._watch: asyncio.Future[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        if req.caller_left is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.WATCH_AFTER_S, self._start, req.caller_left)

    def _start(self, caller_left: Callable[[], Awaitable[object]]) -> None:
        self._timer = None
        self._watch = asyncio.ensure_future(caller_left())
        self._watch.add_done_callback(self._leaving)

    def _leaving(self, watch: asyncio.Future[object]) -> None:
        if watch.cancelled() or self._watch is None:  # closed first
            return
        if watch.exception() is None and self._task is not None:
            self.left = True
            self._task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()


Handler = Callable[[Request], Awaitable[Response]]


# What the writes of routes with these permissions change is recorded in the audit trail.
AUDITED: frozenset[Permission] = frozenset(
    {"operate", "configure", "configure_workspace", "manage_keys"}
)


@dataclass(frozen=True)
class HeaderParam:
    """A request header a route reads: its value's rule (whole) and meaning."""

    pattern: re.Pattern[str]
    description: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    permission: Permission | None = None  # None: open to anyone
    body: type | None = None
    query: type | None = None
    response: Any = None
    status: int = 200
    # The handler decodes the body itself (to keep fields it passes on);
    # `body` then only describes it in the OpenAPI document.
    raw_body: bool = False
    # What the OpenAPI document cannot derive from the above: the statuses the
    # handler answers besides `status`, with `response` (`answers`) or as an
    # error (`errors`; "4XX" for any a provider relays), the success's media
    # types, and path parameters that are not ids (name -> type).
    answers: tuple[int, ...] = ()
    errors: tuple[int | str, ...] = ()
    media: tuple[str, ...] = (JSON,)
    path_types: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, HeaderParam] = field(default_factory=dict)  # by lower-case name

    @functools.cached_property
    def audited(self) -> bool:
        """Whether what its writes change is recorded in the audit trail."""
        return self.permission in AUDITED and self.method != "GET"

    @functools.cached_property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/"))

    @property
    def path_params(self) -> list[str]:
        return [s[1:-1] for s in self.segments if s.startswith("{")]


class RouteTable:
    """Maps (method, path) to a route. Literal segments win over parameters, so
    ``/api/models/batch/status`` is never read as a model called ``batch``."""

    def __init__(self, routes: Sequence[Route]):
        self.routes = list(routes)
        self._static: dict[tuple[str, str], Route] = {}
        self._static_at: dict[tuple[str, ...], list[Route]] = {}  # by segments, any method
        self._dynamic: list[Route] = []
        for route in self.routes:
            route.audited  # noqa: B018 (computed once here, read on every request)
            if route.path_params:
                self._dynamic.append(route)
            else:
                self._static[(route.method, route.path)] = route
                self._static_at.setdefault(route.segments, []).append(route)
        self._dynamic.sort(key=lambda r: [s.startswith("{") for s in r.segments])

    def match(
        self, method: str, path: str, raw_path: str | None = None
    ) -> tuple[Route, dict[str, str]]:
        """`path` decoded; `raw_path` as sent, when known: split first, then
        each segment decoded, so an encoded '/' stays inside its segment."""
        if raw_path is not None and "%" in raw_path:
            parts = tuple(unquote(part) for part in raw_path.strip("/").split("/"))
        else:
            route = self._static.get((method, path))
            if route is not None:
                return route, {}
            parts = tuple(path.strip("/").split("/"))
        allowed: list[str] = []
        for route in self._static_at.get(parts, ()):
            if route.method == method:
                return route, {}
            allowed.append(route.method)
        for route in self._dynamic:
            params = _bind(route.segments, parts)
            if params is None:
                continue
            if route.method == method:
                return route, params
            allowed.append(route.method)
        if allowed:
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}",
                {"allowed": sorted(set(allowed))},
                [("allow", ", ".join(sorted(set(allowed))))],
            )
        raise ApiError(404, "not_found", f"no route for {method} {path}")


def _bind(segments: tuple[str, ...], parts: tuple[str, ...]) -> dict[str, str] | None:
    if len(segments) != len(parts):
        return None
    params = {}
    for segment, part in zip(segments, parts, strict=True):
        if segment.startswith("{"):
            if not part:
                return None
            params[segment[1:-1]] = part
        elif segment != part:
            return None
    return params
