"""The ASGI application: route table -> handlers, with the body decoded once.

Every request goes: match route -> authenticate and authorize -> rate limit ->
read body (bounded) -> decode query and body into their Structs -> handler.
Anything the client got wrong becomes a 4xx JSON error; only our own bugs can
be a 500, and those are logged with the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from .api import ROUTES
from .http import ApiError, Request, Response, RouteTable
from .service import Service
from .settings import Settings
from .telemetry.logging import configure_logging

log = logging.getLogger("model_router.app")

_AT = re.compile(r"at `\$\.?([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_ERROR_ENCODER = msgspec.json.Encoder()


def error_response(err: ApiError, openai: bool) -> Response:
    """Our error shape, or OpenAI's on the OpenAI-compatible routes."""
    if openai:
        body: dict[str, Any] = {
            "error": {"message": err.message, "type": err.type, "param": None, "code": err.type}
        }
        if err.details is not None:
            body["error"]["details"] = err.details
    else:
        body = {"error": {"type": err.type, "message": err.message, "details": err.details}}
    response = Response(_ERROR_ENCODER.encode(body), err.status)
    response.headers.extend(err.headers)
    return response


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


class App:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.routes = RouteTable(ROUTES)
        self.service: Service | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
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

    async def startup(self) -> None:
        self.service = Service(self.settings)
        await self.service.start()

    async def shutdown(self) -> None:
        if self.service is not None:
            await self.service.stop()

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        openai = scope["path"].startswith("/v1/")
        try:
            response = await self._handle(scope, headers, receive, request_id, started)
        except ApiError as err:
            response = error_response(err, openai)
        except Exception:
            log.exception("unhandled error", extra={"requestId": request_id})
            response = error_response(
                ApiError(500, "internal_error", "internal error", {"requestId": request_id}),
                openai,
            )
        if response.stream is not None:
            await self._send_stream(response, request_id, receive, send)
            return
        response_headers = [
            (b"content-type", response.content_type),
            (b"content-length", str(len(response.body)).encode()),
            (b"x-request-id", request_id.encode("latin-1")),
            *response.headers,
        ]
        await send(
            {"type": "http.response.start", "status": response.status, "headers": response_headers}
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _send_stream(
        self, response: Response, request_id: str, receive: Any, send: Any
    ) -> None:
        """Send each chunk as it comes; if the client disconnects first, stop
        and close the body's iterator, which cancels the upstream call."""
        assert response.stream is not None
        body = response.stream

        async def pump() -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (b"content-type", response.content_type),
                        (b"cache-control", b"no-cache"),
                        (b"x-request-id", request_id.encode("latin-1")),
                        *response.headers,
                    ],
                }
            )
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        sending = asyncio.ensure_future(pump())
        watching = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({sending, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, watching):
                task.cancel()
            with contextlib.suppress(BaseException):
                await sending
            with contextlib.suppress(BaseException):
                await watching
            await body.aclose()  # type: ignore[attr-defined]

    async def _handle(
        self,
        scope: dict[str, Any],
        headers: dict[bytes, bytes],
        receive: Any,
        request_id: str,
        started: float,
    ) -> Response:
        service = self.service
        if service is None:
            raise ApiError(503, "unavailable", "service is starting")
        method, path = scope["method"], scope["path"]
        route, params = self.routes.match(method, path)
        request = Request(method, path, params, headers, service, started=started)
        request.request_id = request_id
        if route.permission is not None:
            principal = await service.authenticate(headers.get(b"authorization"))
            principal.authorize(route.permission, params.get("workspaceId"))
            service.check_rate(principal)
            request.principal = principal
        if route.query is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            try:
                request.query = msgspec.convert(query, route.query, strict=False)
            except msgspec.ValidationError as exc:
                raise invalid_input(exc, "query") from None
        raw = await self._read_body(headers, receive)
        request.raw_body = raw
        if route.body is not None and not route.raw_body:
            if not raw.strip():
                raise ApiError(400, "invalid_json", "a JSON request body is required")
            try:
                request.body = msgspec.json.decode(raw, type=route.body)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise invalid_input(exc, "body") from None
        return await route.handler(request)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Any) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = ApiError(
            413, "payload_too_large", f"request body over {limit} bytes", {"limit": limit}
        )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def create_app() -> App:
    """The entry point Granian calls in each worker (``factory=True``)."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return App(settings)
