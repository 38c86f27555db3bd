"""The pooled HTTP client that carries every upstream call of a worker.

One small interface (`post`, `stream`) over aiohttp's client: keep-alive, a
bounded connection pool and a DNS cache, so the executor neither knows nor
cares which client is underneath and a faster one can be swapped in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class UpstreamStream:
    status: int
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]
    body: bytes = b""  # the whole body, when the status is not 200


class UpstreamClient:
    def __init__(self, pool_size: int = 512, per_host: int = 0):
        self._pool_size = pool_size
        self._per_host = per_host
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size,
                limit_per_host=self._per_host,
                ttl_dns_cache=300,
                keepalive_timeout=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def post(self, request: UpstreamRequest, timeout_s: float) -> UpstreamResponse:
        async with self._client().post(
            request.url,
            data=request.body,
            headers=request.headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            body = await response.read()
            return UpstreamResponse(response.status, dict(response.headers), body)

    @contextlib.asynccontextmanager
    async def stream(
        self, request: UpstreamRequest, timeout_s: float
    ) -> AsyncIterator[UpstreamStream]:
        """Open a streaming call. `timeout_s` bounds the connection and each
        wait for the next bytes, not the whole stream."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        async with self._client().post(
            request.url, data=request.body, headers=request.headers, timeout=timeout
        ) as response:
            headers = dict(response.headers)
            if response.status != 200:
                yield UpstreamStream(response.status, headers, _empty(), await response.read())
                return
            yield UpstreamStream(response.status, headers, response.content.iter_any())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
