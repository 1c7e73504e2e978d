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

from ..serving import Finish
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
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    draft: tuple[int, int] | None = None,
    reasoning_tokens: int | None = None,
    image_tokens: int = 0,
    video_tokens: int = 0,
) -> dict:
    """OpenAI's usage object (UsageSchema); `cached_tokens`: prompt tokens whose KV was
    reused; `draft`: (accepted, rejected) draft tokens when the generation was speculative;
    `reasoning_tokens`: a Thinking model's; `image_tokens` / `video_tokens` (extension):
    the prompt's vision placeholder tokens."""
    out: dict = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    out["prompt_tokens_details"].update(image_tokens=image_tokens, video_tokens=video_tokens)
    details: dict = {}
    if reasoning_tokens is not None:
        details["reasoning_tokens"] = reasoning_tokens
    if draft is not None:
        details["accepted_prediction_tokens"], details["rejected_prediction_tokens"] = draft
    if details:
        out["completion_tokens_details"] = details
    return out


def finish_usage(fin: Finish) -> dict:
    """The usage of one finished generation."""
    return usage(
        fin.prompt_tokens,
        fin.completion_tokens,
        fin.cached_tokens,
        fin.draft,
        fin.reasoning_tokens,
        fin.image_tokens,
        fin.video_tokens,
    )


class ChunkEncoder:
    """The `chat.completion.chunk` events of one stream (shared id/created/model), as SSE."""

    def __init__(self, completion_id: str, model: str, created: int | None = None):
        self.base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created or int(time.time()),
            "model": model,
        }

    def chunk(self, delta: dict, finish_reason=None, logprobs=None, **extra) -> str:
        """`extra`: choice extensions (`stopped_by`)."""
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason, **extra}
        return sse(_CHUNK.dump({**self.base, "choices": [choice]}))

    def usage_chunk(self, fin: Finish) -> str:
        return sse(_CHUNK.dump({**self.base, "choices": [], "usage": finish_usage(fin)}))


def completion(
    completion_id: str,
    model: str,
    *,
    content: str | None,
    finish_reason: str,
    usage: dict,
    logprobs: dict | None = None,
    tool_calls: list[dict] | None = None,
    reasoning: str | None = None,
    stopped_by: str | None = None,
    detections: list[dict] | None = None,
) -> dict:
    """A `chat.completion` object (`usage`: from `usage()`); `reasoning`: a Thinking
    model's thinking, under both names clients read (vLLM's older, the newer);
    `stopped_by`: the loop guard's marker; `detections`: grounding's, in the image's pixels."""
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning is not None:
        message["reasoning_content"] = message["reasoning"] = reasoning
    if detections is not None:
        message["detections"] = detections
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
    if stopped_by:
        choice["stopped_by"] = stopped_by
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


def text_choice(
    index: int, text: str, logprobs: dict | None, finish_reason: str | None, stopped_by: str | None = None
) -> dict:
    """`stopped_by`: the loop guard's marker."""
    out = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}
    if stopped_by:
        out["stopped_by"] = stopped_by
    return out


def media_description(
    description: str, metadata: dict, usage: dict, finish_reason: str | None = None, reasoning: str | None = None
) -> dict:
    """The old service's /api/v1/media/describe reply (and a stream's last event);
    `reasoning`: a Thinking model's thinking (the description is the answer)."""
    body = {"status": "success", "description": description, "metadata": metadata, "usage": usage}
    if reasoning is not None:
        body["reasoning"] = reasoning
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
