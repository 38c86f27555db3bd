"""Provider adapters: what a provider is to the router — its wire format, how
it is authenticated, and where each operation lives.

`openai`, `azure` and `custom` (vLLM, Ollama, llama.cpp, any OpenAI-compatible
server) speak OpenAI's format and differ only in credentials; `anthropic`
speaks the Messages API. What crosses between formats is in exchanges.py and
translate/.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import types as t
from .._core import read_key_file
from .exchanges import Exchange, Format, Operation, exchange_for
from .translate import Refused
from .upstream import UpstreamRequest

ANTHROPIC_VERSION = "2023-06-01"
# Request headers of Anthropic's API that a caller's client sends and an
# Anthropic endpoint must see (beta features, the API version it wrote for).
ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")
CHAT_PATH = "/chat/completions"


def api_key(endpoint: t.Endpoint) -> str | None:
    """The endpoint's provider key: from its file, else its environment variable."""
    if endpoint.api_key_file:  # re-read within a second of a change (core_rs/src/key_files.rs)
        return read_key_file(endpoint.api_key_file)
    return os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None


@dataclass(frozen=True)
class Adapter:
    format: Format
    key_header: str  # the header that carries the provider key
    key_prefix: str = ""

    def headers(self, endpoint: t.Endpoint, forwarded: Mapping[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.format is Format.ANTHROPIC:
            headers["anthropic-version"] = ANTHROPIC_VERSION
            headers.update((k, v) for k, v in forwarded.items() if k in ANTHROPIC_HEADERS)
        key = api_key(endpoint)
        if key:
            headers[self.key_header] = self.key_prefix + key
        return headers

    def url(self, endpoint: t.Endpoint, operation: Operation) -> str:
        """An endpoint's URL is its model's operation; the Responses API of an
        OpenAI chat endpoint is the sibling of its chat-completions path."""
        if operation is not Operation.RESPONSES:
            return endpoint.url
        path, _, query = endpoint.url.partition("?")
        if (
            self.format is not Format.OPENAI
            or not path.endswith(CHAT_PATH)
            or "/deployments/" in path
        ):
            raise Refused("model", "this model's endpoint has no Responses API")
        return path[: -len(CHAT_PATH)] + "/responses" + (f"?{query}" if query else "")

    def prepare(
        self,
        operation: Operation,
        model: t.SnapshotModel,
        endpoint: t.Endpoint,
        raw: bytes,
        body: dict[str, Any],
        forwarded: Mapping[str, str],
    ) -> tuple[Exchange, UpstreamRequest]:
        """The exchange and the upstream request of one attempt, from the
        caller's body as sent (`raw`) and as read (`body`); Refused when the
        model cannot take this request."""
        exchange = exchange_for(operation, model, self.format)
        upstream = exchange.body(raw, body, model)
        url = self.url(endpoint, operation)
        return exchange, UpstreamRequest(url, self.headers(endpoint, forwarded), upstream)


ADAPTERS: dict[str, Adapter] = {
    "openai": Adapter(Format.OPENAI, "authorization", "Bearer "),
    "custom": Adapter(Format.OPENAI, "authorization", "Bearer "),
    "azure": Adapter(Format.OPENAI, "api-key"),  # deployment and api-version are in the URL
    "anthropic": Adapter(Format.ANTHROPIC, "x-api-key"),
}
