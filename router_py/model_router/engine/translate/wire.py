"""What the router reads of each wire format, as typed Structs.

Every answer a provider sends is decoded through these before anything else
looks at it: a body or stream event of the wrong shape (`data: 1`,
`{"choices": [1]}`, a token count that is a string, negative or absurd) fails
to decode, and the attempt is a malformed answer, never a crash. Fields the
router does not read are not declared: they pass through untouched.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

# A token count: a provider that reports more in one call is broken.
Count = Annotated[int, Meta(ge=0, le=100_000_000)]


# --- OpenAI chat completions ---------------------------------------------------


class OpenAIPromptDetails(Struct):
    cached_tokens: Count | None = None
    cache_creation_tokens: Count | None = None  # not OpenAI's: ours, for Anthropic's cache writes


class OpenAIUsage(Struct):
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    prompt_tokens_details: OpenAIPromptDetails | None = None


class OpenAIFunction(Struct):
    name: str | None = None
    arguments: str | None = None


class OpenAIToolCall(Struct):
    id: str | None = None
    type: str | None = None
    function: OpenAIFunction | None = None
    index: int | None = None  # streams only


class OpenAIMessage(Struct):
    content: str | None = None
    tool_calls: list[OpenAIToolCall] | None = None
    refusal: str | None = None


class OpenAIChoice(Struct):
    message: OpenAIMessage
    finish_reason: str | None = None


class OpenAICompletion(Struct):
    choices: Annotated[list[OpenAIChoice], Meta(min_length=1)]
    id: str = ""
    usage: OpenAIUsage | None = None


class OpenAIDelta(Struct):
    content: str | None = None
    tool_calls: list[OpenAIToolCall] | None = None
    refusal: str | None = None


class OpenAIChunkChoice(Struct):
    delta: OpenAIDelta | None = None
    finish_reason: str | None = None
    index: int = 0


class OpenAIChunk(Struct):
    id: str = ""
    choices: list[OpenAIChunkChoice] = []
    usage: OpenAIUsage | None = None
    error: Any = None


# Legacy text completions, embeddings and the Responses API: usage only
# (their bodies always pass through).


class TextChoice(Struct):
    text: str = ""
    finish_reason: str | None = None


class TextCompletion(Struct):
    choices: list[TextChoice] = []
    usage: OpenAIUsage | None = None
    error: Any = None


class EmbeddingUsage(Struct):
    prompt_tokens: Count = 0


class Embeddings(Struct):
    data: list[Any]
    usage: EmbeddingUsage | None = None


class ResponsesInputDetails(Struct):
    cached_tokens: Count | None = None


class ResponsesUsage(Struct):
    input_tokens: Count = 0
    output_tokens: Count = 0
    input_tokens_details: ResponsesInputDetails | None = None


class Response(Struct):
    usage: ResponsesUsage | None = None
    status: str | None = None


class ResponsesEvent(Struct):
    """An event of a Responses API stream: usage arrives with the last."""

    type: str = ""
    response: Response | None = None
    delta: Any = None


# --- Anthropic messages -----------------------------------------------------------


class AnthropicUsage(Struct):
    input_tokens: Count | None = None
    output_tokens: Count | None = None
    cache_read_input_tokens: Count | None = None
    cache_creation_input_tokens: Count | None = None


class AnthropicBlock(Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    thinking: str | None = None


class AnthropicMessage(Struct):
    content: list[AnthropicBlock]
    id: str = ""
    stop_reason: str | None = None
    usage: AnthropicUsage | None = None


class AnthropicDelta(Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class AnthropicEvent(Struct):
    """Any event of a Messages stream; which fields are set depends on `type`."""

    type: str
    message: AnthropicMessage | None = None
    index: int | None = None
    content_block: AnthropicBlock | None = None
    delta: AnthropicDelta | None = None
    usage: AnthropicUsage | None = None
    error: Any = None


decode_openai_completion = msgspec.json.Decoder(OpenAICompletion).decode
decode_openai_chunk = msgspec.json.Decoder(OpenAIChunk).decode
decode_text_completion = msgspec.json.Decoder(TextCompletion).decode
decode_embeddings = msgspec.json.Decoder(Embeddings).decode
decode_response = msgspec.json.Decoder(Response).decode
decode_responses_event = msgspec.json.Decoder(ResponsesEvent).decode
decode_anthropic_message = msgspec.json.Decoder(AnthropicMessage).decode
decode_anthropic_event = msgspec.json.Decoder(AnthropicEvent).decode
