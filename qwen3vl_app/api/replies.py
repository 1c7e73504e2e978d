"""OpenAI reply objects, each dumped through the schema the OpenAPI document shows.

The contract of a reply is written once, in its schema (`chat_schema`, `completions_schema`,
`media_schema`, `responses_schema`): the builders here assemble the values and the schema
writes the object, so a field the document does not declare never leaves the server, and
an extension is added to the schema (and so documented) before any reply can carry it.
Stream chunks go the same way (a dump costs about 16 us, well under a token's time).
"""

from __future__ import annotations

import time
import uuid

from ..sse import sse
from .chat_schema import ChatCompletionChunkSchema, ChatCompletionSchema
from .completions_schema import CompletionSchema
from .media_schema import MediaDescriptionSchema, MediaStreamDeltaSchema
from .responses_schema import ResponseOutputItemSchema, ResponseSchema

_CHAT_COMPLETION = ChatCompletionSchema()
_CHUNK = ChatCompletionChunkSchema()
_TEXT_COMPLETION = CompletionSchema()
_MEDIA_DESCRIPTION = MediaDescriptionSchema()
_MEDIA_DELTA = MediaStreamDeltaSchema()
_RESPONSE = ResponseSchema()
_OUTPUT_ITEM = ResponseOutputItemSchema()


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, draft: tuple[int, int] | None = None
) -> dict:
    """OpenAI's usage object (UsageSchema); `cached_tokens`: prompt tokens whose KV was
    reused; `draft`: (accepted, rejected) draft tokens when the generation was speculative."""
    out: dict = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    if draft is not None:
        out["completion_tokens_details"] = {
            "accepted_prediction_tokens": draft[0],
            "rejected_prediction_tokens": draft[1],
        }
    return out


class ChunkEncoder:
    """The `chat.completion.chunk` events of one stream (shared id/created/model), as SSE."""

    def __init__(self, completion_id: str, model: str, created: int | None = None):
        self.base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created or int(time.time()),
            "model": model,
        }

    def chunk(self, delta: dict, finish_reason=None, logprobs=None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse(_CHUNK.dump({**self.base, "choices": [choice]}))

    def usage_chunk(
        self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, draft: tuple[int, int] | None = None
    ) -> str:
        used = usage(prompt_tokens, completion_tokens, cached_tokens, draft)
        return sse(_CHUNK.dump({**self.base, "choices": [], "usage": used}))


def completion(
    completion_id: str,
    model: str,
    *,
    content: str | None,
    finish_reason: str,
    usage: dict,
    logprobs: dict | None = None,
    tool_calls: list[dict] | None = None,
) -> dict:
    """A `chat.completion` object (`usage`: from `usage()`)."""
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
    return _CHAT_COMPLETION.dump(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
    )


def text_completion(base: dict, choices: list[dict], usage: dict | None = None) -> dict:
    """A `text_completion` object, or (one choice, no usage) one event of its stream;
    `base`: its id, object, created and model."""
    body = {**base, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return _TEXT_COMPLETION.dump(body)


def text_choice(index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def media_description(description: str, metadata: dict, usage: dict, finish_reason: str | None = None) -> dict:
    """The old service's /api/v1/media/describe reply (and a stream's last event)."""
    body = {"status": "success", "description": description, "metadata": metadata, "usage": usage}
    if finish_reason is not None:
        body["finish_reason"] = finish_reason
    return _MEDIA_DESCRIPTION.dump(body)


def media_delta(text: str) -> dict:
    return _MEDIA_DELTA.dump({"status": "streaming", "delta": text})


def response(snapshot: dict) -> dict:
    """A Responses API `response` object (the non-stream reply)."""
    return _RESPONSE.dump(snapshot)


def output_item(item: dict) -> dict:
    """A Responses output item (a message or a function call), as a copy."""
    return _OUTPUT_ITEM.dump(item)
