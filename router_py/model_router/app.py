"""The application: route table -> handlers, with the body decoded once.

Every request goes: match route -> authenticate and authorize -> rate limit ->
read body (bounded) -> decode query and body into their Structs -> handler.
Anything the client got wrong becomes a 4xx JSON error; a store that cannot
be reached is a 503 `store_unavailable` (a warning in the log, no traceback);
only our own bugs can be a 500, and those are logged with the request id.
Before anything else a request checks the instance's write counter, so it
never routes under a config older than a write that has already answered.

The core (`App.respond`) knows no server interface. Two thin front ends speak
to servers: ASGI (`__call__`, any ASGI server) and RSGI (`__rsgi__`, Granian's
native interface, which `model-router serve` uses: it hands the request over
with fewer hops between Granian's Rust threads and the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from granian.rsgi import ProtocolClosed, ProtocolError

from . import _core
from . import types as t
from .api import ROUTES
from .audit import WRITER, Writer
from .door import LAST_WRITES_S, PEER_HEADER, start_door
from .door_calls import VERDICT_HEADER, DoorCalls, DoorVerdict, read_verdict
from .http import ApiError, Request, Response, RouteTable, new_id, too_deep
from .service import Service
from .settings import Settings
from .store import StoreUnavailable
from .telemetry.logging import configure_logging

log = logging.getLogger("model_router.app")

_AT = re.compile(r"at `\$\.?([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_ERROR_ENCODER = msgspec.json.Encoder()

# Reads the request body, given the most bytes it may have.
BodyReader = Callable[[int], Awaitable[bytes]]


# Anthropic's error types, by status (else api_error).
ANTHROPIC_ERROR_TYPES: dict[int, t.AnthropicErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_shape(path: str, headers: Mapping[str, str]) -> str:
    """Which API's error shape a caller expects: Anthropic's on /v1/messages
    (and on /v1 from Anthropic's SDK), OpenAI's on /v1, else the router's."""
    if path.startswith("/v1/messages") or (
        path.startswith("/v1/") and "anthropic-version" in headers
    ):
        return "anthropic"
    return "openai" if path.startswith("/v1/") else "router"


def error_response(err: ApiError, shape: str) -> Response:
    body: dict[str, Any]
    if shape == "openai":
        error = {
            "message": err.message,
            "type": err.type,
            "param": err.param,
            "code": err.code or err.type,
        }
        body = {"error": error}
    elif shape == "anthropic":
        kind = ANTHROPIC_ERROR_TYPES.get(err.status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": err.message}}
    else:
        body = {"error": {"type": err.type, "message": err.message, "details": err.details}}
    if err.details is not None and shape != "router":
        body["error"]["details"] = err.details
    response = Response(_ERROR_ENCODER.encode(body), err.status)
    response.headers.extend(err.headers)
    return response


def is_json(content_type: str | None) -> bool:
    """A JSON media type, or none declared (read as JSON)."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def credentials(headers: Mapping[str, str]) -> str | None:
    """The Authorization header, or Anthropic's x-api-key as a bearer token."""
    authorization = headers.get("authorization")
    if authorization is None and "x-api-key" in headers:
        return f"Bearer {headers['x-api-key']}"
    return authorization


def invalid_input(exc: msgspec.MsgspecError, where: str) -> ApiError:
    message = str(exc)
    at, missing = _AT.search(message), _MISSING.search(message)
    base = at.group(1) if at else ""
    details: dict[str, Any] = {"in": where}
    if missing:
        details["field"] = f"{base}.{missing.group(1)}" if base else missing.group(1)
    elif at:
        details["field"] = base or "$"
    # ValidationError subclasses DecodeError: test for it first.
    kind = "validation_error" if isinstance(exc, msgspec.ValidationError) else "invalid_json"
    return ApiError(400, kind, f"invalid {where}: {message}", details)


def store_unavailable() -> ApiError:
    return ApiError(
        503,
        "store_unavailable",
        "the state store is unreachable; routing continues on the last loaded config, "
        "but this call needs the store: retry later",
        headers=[("retry-after", "1")],
    )


def too_many_in_flight(cap: int) -> ApiError:
    return ApiError(
        429,
        "too_many_requests_in_flight",
        f"this client address already has {cap} requests in progress here; wait for some to finish",
        {"limit": cap},
        [("retry-after", "1")],
    )


def body_cut_short() -> ApiError:
    # The client's error (it stopped sending, or framed the body badly), not
    # the router's: a 400, never a 500.
    return ApiError(400, "invalid_json", "the request's body ended before it was complete")


def too_large(limit: int) -> ApiError:
    # Answered before the body is read to its end: the connection cannot carry
    # another request, and a client told so opens a new one instead of
    # reusing it (and meeting a closed socket).
    return ApiError(
        413,
        "payload_too_large",
        f"request body over {limit} bytes",
        {"limit": limit},
        [("connection", "close")],
    )


def declared_too_large(headers: Mapping[str, str], limit: int) -> bool:
    declared = headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


class App:
    def __init__(self, settings: Settings, door: _core.Door | None = None):
        self.settings = settings
        # Behind the door, the caller's address comes in its header.
        self.door = door
        self.routes = RouteTable(ROUTES)
        self.service: Service | None = None
        self.clients = _core.Clients(settings.max_in_flight_per_client)
        self.door_calls: DoorCalls | None = None

    async def startup(self) -> None:
        self.service = Service(self.settings, self.clients)
        await self.service.start()
        if self.door is not None:
            self.door_calls = DoorCalls(self.door, self.service, self.clients)
            self.door_calls.start()

    async def shutdown(self) -> None:
        # The door's last calls first: the service's final flushes hold them.
        if self.door is not None:
            self.door.drain()
            await asyncio.to_thread(self.door.wait, LAST_WRITES_S)
        if self.door_calls is not None:
            self.door_calls.finish()
        if self.service is not None:
            await self.service.stop()

    # --- the core ----------------------------------------------------------

    async def respond(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: Mapping[str, str],
        read_body: BodyReader,
        started: float,
        peer: str = "",
        raw_path: str | None = None,
        caller_left: Callable[[], Awaitable[object]] | None = None,
    ) -> tuple[Response, str]:
        """The response to one request, and the request's id. `path` is
        decoded; `raw_path`, when the server gives it, is as sent, and is
        what routing splits (so `%2F` stays inside its segment).
        `caller_left` waits until the caller's connection closes."""
        request_id = headers.get("x-request-id", "")[:128] or new_id()
        address = self.client_address(headers, peer)
        # Servers may run requests in one context: no writer outlives its request.
        writer = WRITER.set(None)
        entered = False
        try:
            entered = self.clients.enter(address)
            if not entered:
                raise too_many_in_flight(self.settings.max_in_flight_per_client)
            response = await self._handle(
                method,
                path,
                raw_path,
                query_string,
                headers,
                read_body,
                request_id,
                started,
                address,
                caller_left,
            )
            if response.stream is not None:
                # The request lasts until its stream ends.
                response.stream = _Leaving(response.stream, self.clients, address)
                entered = False
        except ApiError as err:
            response = error_response(err, error_shape(path, headers))
            if not err.observed and self.service is not None:
                self.service.observer.rejected(method, path, err.status, err.type, request_id)
        except StoreUnavailable as exc:
            log.warning(
                "store unavailable: %s %s answered 503 (%s)",
                method,
                path,
                exc,
                extra={"requestId": request_id},
            )
            response = error_response(store_unavailable(), error_shape(path, headers))
        except Exception:
            log.exception("unhandled error", extra={"requestId": request_id})
            internal = ApiError(500, "internal_error", "internal error", {"requestId": request_id})
            response = error_response(internal, error_shape(path, headers))
        finally:
            WRITER.reset(writer)
            if entered:
                self.clients.leave(address)
        return response, request_id

    def client_address(self, headers: Mapping[str, str], peer: str) -> str:
        """Who is calling: the peer's address, or, behind an ingress that sets
        it, the last entry of the configured header (the one the ingress added)."""
        name = self.settings.client_address_header
        forwarded = headers.get(name) if name else None
        if forwarded:
            return forwarded.rsplit(",", 1)[-1].strip()[:64]
        return peer

    async def _handle(
        self,
        method: str,
        path: str,
        raw_path: str | None,
        query_string: str,
        headers: Mapping[str, str],
        read_body: BodyReader,
        request_id: str,
        started: float,
        address: str,
        caller_left: Callable[[], Awaitable[object]] | None,
    ) -> Response:
        service = self.service
        if service is None:
            raise ApiError(503, "unavailable", "service is starting")
        if service.live.behind():
            await service.live.catch_up()
        route, params = self.routes.match(method, path, raw_path)
        verdict = self._door_verdict(headers)
        if verdict is not None:  # the door admitted the call and had it this long
            started -= verdict.elapsed_ms / 1000
        request = Request(method, path, params, headers, service, started=started)
        request.request_id = request_id
        request.caller_left = caller_left
        request.door_tries = verdict.tries if verdict is not None else None
        limits: list[tuple[str, str]] = []
        if route.permission is not None:
            principal = await service.authenticate(credentials(headers), address)
            principal.authorize(route.permission, params.get("workspaceId"))
            # Once the door admitted the call, the admission it spent stands.
            limits = verdict.limits() if verdict else await service.check_rate(principal)
            request.principal = principal
            if route.audited:
                WRITER.set(Writer(principal, method, path, request_id))
        if route.query is not None:
            query = dict(parse_qsl(query_string))
            try:
                request.query = msgspec.convert(query, route.query, strict=False)
            except msgspec.ValidationError as exc:
                raise invalid_input(exc, "query") from None
        if route.body is not None and not is_json(headers.get("content-type")):
            raise ApiError(
                415,
                "unsupported_media_type",
                "send the body as JSON (Content-Type: application/json)",
                {"in": "header", "field": "content-type"},
            )
        # Every success is answered after the body has been read: the door
        # keeps the app's connection only after one (core_rs/src/door.rs,
        # `AppLink::send`), as the server closes one whose body went unread.
        raw = await read_body(self.settings.max_body_bytes)
        request.raw_body = raw
        if route.body is not None and not route.raw_body:
            if not raw.strip():
                raise ApiError(400, "invalid_json", "a JSON request body is required")
            try:
                request.body = msgspec.json.decode(raw, type=route.body)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise invalid_input(exc, "body") from None
            except RecursionError:
                raise too_deep() from None
        response = await route.handler(request)
        response.headers += limits
        return response

    def _door_verdict(self, headers: Mapping[str, str]) -> DoorVerdict | None:
        """The door's verdict on a call it admitted; trusted only behind it."""
        value = headers.get(VERDICT_HEADER) if self.door is not None else None
        return read_verdict(value) if value else None

    @staticmethod
    async def _stream_until_disconnect(
        body: AsyncIterator[bytes],
        send: Callable[[bytes], Awaitable[None]],
        disconnected: Callable[[], Awaitable[Any]],
    ) -> None:
        """Send each chunk as it comes; if the client disconnects first, stop
        and close the body's iterator, which cancels the upstream call.

        A routed stream's first chunk is in memory already (the executor read
        up to the first content): it goes out now, before the two tasks exist,
        not a loop iteration later."""
        try:
            first = await anext(body, None)
            if first is None:
                return
            await send(first)
            sending = asyncio.ensure_future(_drain(body, send))
            watching = asyncio.ensure_future(disconnected())
            try:
                await asyncio.wait({sending, watching}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sending, watching):
                    task.cancel()
                for task in (sending, watching):
                    with contextlib.suppress(BaseException):
                        await task
        finally:
            await body.aclose()  # type: ignore[attr-defined]

    # --- ASGI ----------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._asgi_http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._asgi_lifespan(receive, send)

    async def _asgi_lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _asgi_http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

        async def read_body(limit: int) -> bytes:
            if declared_too_large(headers, limit):
                raise too_large(limit)
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            return b"".join(chunks)

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        client = scope.get("client")
        raw_path = scope.get("raw_path")
        peer = headers.get(PEER_HEADER, "") if self.door else client[0] if client else ""
        response, request_id = await self.respond(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            headers,
            read_body,
            started,
            peer,
            raw_path.decode("latin-1") if raw_path else None,
            disconnected,
        )
        head = [
            (b"content-type", response.content_type.encode()),
            (b"x-request-id", request_id.encode("latin-1")),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers),
        ]
        if response.stream is None:
            head.append((b"content-length", str(len(response.body)).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": head})
            await send({"type": "http.response.body", "body": response.body})
            return
        head.append((b"cache-control", b"no-cache"))
        stream = response.stream
        async with _closed_if_unsent(stream):
            await send({"type": "http.response.start", "status": response.status, "headers": head})

        async def send_chunk(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        await self._stream_until_disconnect(stream, send_chunk, disconnected)
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    # --- RSGI (Granian) ------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.startup())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.shutdown())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        started = time.perf_counter()
        headers = scope.headers

        async def read_body(limit: int) -> bytes:
            if declared_too_large(headers, limit):
                raise too_large(limit)
            try:
                if headers.get("content-length") is not None:
                    body: bytes = await proto()
                    if len(body) > limit:
                        raise too_large(limit)
                    return body
                chunks, size = [], 0
                async for chunk in proto:  # no declared length: count as it comes
                    size += len(chunk)
                    if size > limit:
                        raise too_large(limit)
                    chunks.append(chunk)
                return b"".join(chunks)
            except (ProtocolError, ProtocolClosed) as exc:  # the body broke off
                raise body_cut_short() from exc

        # Granian's RSGI scope has only the decoded path (docs/deployment.md).
        if self.door is not None:
            peer = headers.get(PEER_HEADER, "")
        else:
            peer = scope.client.rsplit(":", 1)[0].strip("[]")
        response, request_id = await self.respond(
            scope.method,
            scope.path,
            scope.query_string,
            headers,
            read_body,
            started,
            peer,
            caller_left=proto.client_disconnect,
        )
        head = [
            ("content-type", response.content_type),
            ("x-request-id", request_id),
            *response.headers,
        ]
        if response.stream is None:
            proto.response_bytes(response.status, head, response.body)
            return
        head.append(("cache-control", "no-cache"))
        async with _closed_if_unsent(response.stream):
            transport = proto.response_stream(response.status, head)
        await self._stream_until_disconnect(
            response.stream, transport.send_bytes, proto.client_disconnect
        )


class _Leaving:
    """A response stream that, when it ends or is closed (even before its
    first chunk), counts its request as no longer in flight."""

    def __init__(self, stream: AsyncIterator[bytes], clients: _core.Clients, address: str):
        self._stream = stream
        self._clients = clients
        self._address: str | None = address

    def __aiter__(self) -> _Leaving:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._stream.__anext__()
        except BaseException:
            self._leave()
            raise

    async def aclose(self) -> None:
        self._leave()
        await self._stream.aclose()  # type: ignore[attr-defined]

    def _leave(self) -> None:
        if self._address is not None:
            self._clients.leave(self._address)
            self._address = None


@contextlib.asynccontextmanager
async def _closed_if_unsent(stream: AsyncIterator[bytes]) -> AsyncIterator[None]:
    """Starting the response failed (the client left, the server refused): the
    stream will never be sent, so close it now; that releases its in-flight
    slot, upstream connection and budget and token holds."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
        raise


async def _drain(body: AsyncIterator[bytes], send: Callable[[bytes], Awaitable[None]]) -> None:
    async for chunk in body:
        await send(chunk)


def create_app() -> App:
    """The entry point each server worker calls (Granian: ``factory=True``)."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return App(settings, start_door(settings))
