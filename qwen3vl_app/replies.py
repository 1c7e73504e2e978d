"""OpenAI reply objects (chat completions, chunks, usage) and their SSE lines."""

from __future__ import annotations

import json
import time
import uuid


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(obj) -> str:
    return f"data: {_dumps(obj)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
SSE_PING = ": ping\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, image_tokens: int = 0, video_tokens: int = 0
) -> dict:
    """OpenAI's usage object; `cached_tokens`: prompt tokens whose KV was reused;
    `image_tokens` / `video_tokens` (extension): the prompt's vision placeholder tokens."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": cached_tokens,
            "image_tokens": image_tokens,
            "video_tokens": video_tokens,
        },
    }


class ChunkEncoder:
    """Builds the `chat.completion.chunk` objects of one stream (shared id/created/model)."""

    def __init__(self, completion_id: str, model: str, created: int | None = None):
        self.base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created or int(time.time()),
            "model": model,
        }

    def chunk(self, delta: dict, finish_reason=None, logprobs=None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse({**self.base, "choices": [choice]})

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, *media: int) -> str:
        counts = usage(prompt_tokens, completion_tokens, cached_tokens, *media)
        return sse({**self.base, "choices": [], "usage": counts})


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
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }
