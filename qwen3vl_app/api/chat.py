"""POST /v1/chat/completions: schema -> media -> prompt -> engine -> response or SSE stream."""
from __future__ import annotations

import logging
import select
import socket

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context

from ..admission import admitted
from ..chat_service import PING, ChatJob, Delta, Finish, events
from ..conversation import split_messages
from ..engine.sampling import SamplingParams
from ..errors import APIError
from ..processing.prompt import build_prompt, check_length
from ..streaming import SSE_DONE, SSE_HEADERS, SSE_PING, ChunkEncoder, completion, new_completion_id
from .chat_schema import ChatCompletionRequestSchema
from .common import json_body, resolve_media_or_400, run_guarded, stream_failure_event

log = logging.getLogger("qwen3vl.chat")
bp = Blueprint("chat", __name__)


def sampling_params(req: dict, defaults: dict, settings, greedy_only: bool) -> SamplingParams:
    """Request values win over the model folder's generation_config.json."""

    def pick(name, fallback):
        value = req.get(name)
        return fallback if value is None else value

    if req.get("logprobs") and greedy_only:
        raise APIError("This engine picks tokens on the device and returns no logits, so logprobs "
                       "are unavailable.", 400, "logprobs", "unsupported_parameter")
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or settings.max_tokens_default
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=pick("temperature", defaults.get("temperature", 1.0) if defaults.get("do_sample", True) else 0.0),
        top_p=pick("top_p", defaults.get("top_p", 1.0)),
        top_k=pick("top_k", defaults.get("top_k", 0)),
        repetition_penalty=pick("repetition_penalty", defaults.get("repetition_penalty", 1.0)),
        presence_penalty=pick("presence_penalty", 0.0),
        frequency_penalty=pick("frequency_penalty", 0.0),
        seed=req.get("seed"),
        logprobs=bool(req.get("logprobs")),
        top_logprobs=req.get("top_logprobs") or 0,
    )


SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "seed")


def ignored_params(req: dict, greedy_only: bool) -> list[str]:
    """Sampling fields a device-greedy engine cannot honour; the response names them in
    `X-Ignored-Params` (and /v1/models lists the capabilities) instead of hiding it."""
    return [f for f in SAMPLING_FIELDS if greedy_only and req.get(f) is not None]


def register(app, auth):
    @bp.post("/v1/chat/completions")
    @auth.login_required
    @admitted  # a --max_concurrent slot for the whole response, or 503 at once
    def chat_completions():
        state = current_app.extensions["qwen3vl"]
        settings = state.settings
        req = ChatCompletionRequestSchema().load(json_body())
        messages, media = split_messages(req["messages"])
        engine = run_guarded(state.runner.wait_ready)
        vision = resolve_media_or_400(state, media, engine.limits, messages)
        prompt = run_guarded(build_prompt, state.tokenizer, messages, vision)
        run_guarded(check_length, prompt, engine.limits, settings.max_prompt_tokens)
        greedy_only = not engine.capabilities.sampling
        params = sampling_params(req, state.tokenizer.generation_config, settings, greedy_only)
        ignored = {"X-Ignored-Params": ",".join(ignored_params(req, greedy_only))} if greedy_only else {}
        job = ChatJob(prompt, params, req["stop"] or [], settings.request_timeout)
        g.job_stats = job.stats  # TTFT, tokens, engine time: request log + metrics
        stream = bool(req.get("stream"))
        it = events(state.runner, state.tokenizer, job, settings.sse_keepalive if stream else None)
        run_guarded(next, it)  # waits for this worker's turn (or 503 at once when the queue is full)
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
                g.usage = (ev.prompt_tokens, ev.completion_tokens)
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
                g.usage = (ev.prompt_tokens, ev.completion_tokens)
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
