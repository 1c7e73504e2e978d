"""POST /v1/chat/completions: schema -> media -> serving -> response or SSE stream."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from .. import serving
from ..admission import admitted
from ..auth import auth
from ..conversation import split_messages
from ..streaming import SSE_HEADERS, ChunkEncoder, completion, new_completion_id
from .chat_schema import ChatCompletionRequestSchema
from .common import json_body

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
@auth.login_required
@admitted  # a --max_concurrent slot for the whole response, or 503 at once
def chat_completions():
    state = current_app.extensions["qwen3vl"]
    req = ChatCompletionRequestSchema().load(json_body())
    messages, media = split_messages(req["messages"])
    engine = state.runner.wait_ready()
    vision = serving.resolve_media(state, media, engine, messages)
    stream = bool(req.get("stream"))
    events = serving.start(state, engine, messages, vision, req, req["stop"] or [], stream)
    greedy_only = not engine.capabilities.sampling
    ignored = {"X-Ignored-Params": ",".join(serving.ignored_params(req, greedy_only))} if greedy_only else {}
    cid = new_completion_id()
    if stream:
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        chunks = ChunkEncoder(cid, req.get("model") or state.model_id)
        body = serving.stream(events, ChatStreamEncoder(chunks, include_usage))
        return Response(stream_with_context(body), mimetype="text/event-stream", headers={**SSE_HEADERS, **ignored})
    out = serving.collect(events, request.environ)
    fin = out.finish
    body = completion(cid, req.get("model") or state.model_id, out.text, fin.reason, fin.prompt_tokens,
                      fin.completion_tokens, {"content": out.logprobs} if out.logprobs else None, fin.cached_tokens)
    return jsonify(body), 200, ignored


class ChatStreamEncoder:
    """`chat.completion.chunk` events: a role chunk, content deltas, a finish chunk and,
    when asked for, a usage chunk."""

    def __init__(self, chunks: ChunkEncoder, include_usage: bool):
        self.chunks = chunks
        self.include_usage = include_usage

    def start(self):
        yield self.chunks.chunk({"role": "assistant", "content": ""})

    def delta(self, ev: serving.Delta):
        yield self.chunks.chunk({"content": ev.text}, logprobs={"content": ev.logprobs} if ev.logprobs else None)

    def finish(self, ev: serving.Finish):
        yield self.chunks.chunk({}, finish_reason=ev.reason)
        if self.include_usage:
            yield self.chunks.usage_chunk(ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens)
