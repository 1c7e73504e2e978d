"""POST /v1/chat/completions: schema -> media -> prompt -> engine -> response or SSE stream."""
from __future__ import annotations

import logging
import select
import socket

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from ..admission import admitted
from ..chat_service import PING, Delta, Finish
from ..conversation import split_messages
from ..errors import APIError
from ..streaming import SSE_DONE, SSE_HEADERS, SSE_PING, ChunkEncoder, completion, new_completion_id
from .chat_schema import ChatCompletionRequestSchema
from .common import json_body, resolve_media_or_400, run_guarded, stream_failure_event
from .generation import ignored_params, start_generation

log = logging.getLogger("qwen3vl.chat")
bp = Blueprint("chat", __name__)


def register(app, auth):
    @bp.post("/v1/chat/completions")
    @auth.login_required
    @admitted  # a --max_concurrent slot for the whole response, or 503 at once
    def chat_completions():
        state = current_app.extensions["qwen3vl"]
        req = ChatCompletionRequestSchema().load(json_body())
        messages, media = split_messages(req["messages"])
        engine = run_guarded(state.runner.wait_ready)
        vision = resolve_media_or_400(state, media, engine.limits, messages)
        stream = bool(req.get("stream"))
        it = start_generation(state, engine, messages, vision, req, req["stop"] or [], stream)
        greedy_only = not engine.capabilities.sampling
        ignored = {"X-Ignored-Params": ",".join(ignored_params(req, greedy_only))} if greedy_only else {}
        cid = new_completion_id()
        if stream:
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
            body = _sse(it, ChunkEncoder(cid, state.model_id), include_usage)
            return Response(stream_with_context(body), mimetype="text/event-stream",
                            headers={**SSE_HEADERS, **ignored})
        return jsonify(_collect(it, cid, state.model_id, request.environ)), 200, ignored

    app.register_blueprint(bp)


def _sse(it, enc: ChunkEncoder, include_usage: bool):
    try:
        yield enc.chunk({"role": "assistant", "content": ""})
        for ev in it:
            if ev is PING:
                yield SSE_PING
            elif isinstance(ev, Delta):
                yield enc.chunk({"content": ev.text}, logprobs={"content": ev.logprobs} if ev.logprobs else None)
            elif isinstance(ev, Finish):
                yield enc.chunk({}, finish_reason=ev.reason)
                if include_usage:
                    yield enc.usage_chunk(ev.prompt_tokens, ev.completion_tokens)
        yield SSE_DONE
    except Exception:  # engine failure mid-stream: an error event, then the stream ends
        yield stream_failure_event()
    finally:
        it.close()  # client gone or done: cancel the generation, free the engine


def _collect(it, cid: str, model: str, environ) -> dict:
    text, logprobs = [], []
    try:
        for ev in it:
            if isinstance(ev, Delta):
                text.append(ev.text)
                logprobs.extend(ev.logprobs)
                if _client_gone(environ):
                    log.info("client disconnected; cancelling %s", cid)
                    break
            elif isinstance(ev, Finish):
                return completion(cid, model, "".join(text), ev.reason, ev.prompt_tokens, ev.completion_tokens,
                                  {"content": logprobs} if logprobs else None)
    finally:
        it.close()
    raise APIError("Client closed the connection.", 400, None, "client_closed")


def _client_gone(environ) -> bool:
    """True when the peer has closed its side (readable with zero bytes pending)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
