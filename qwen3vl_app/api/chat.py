"""POST /v1/chat/completions: schema -> media -> serving -> response or SSE stream."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .. import serving
from ..admission import admitted
from ..auth import auth
from ..grounding import GroundingStream, detections
from ..processing.tools import ToolCallStream, parse_tool_calls
from ..replies import ChunkEncoder, completion, new_completion_id, usage
from . import transport
from .chat_schema import ChatCompletionChunkSchema, ChatCompletionRequestSchema, ChatCompletionSchema
from .common import check_message_count, json_body, prepare, request_limit, value_budget
from .routedoc import route_doc

bp = Blueprint("chat", __name__)

# Request fields with an effect; any other field set in a request is named in X-Ignored-Params.
HONOURED = serving.GENERATION_FIELDS | {
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "ignore_eos",
    "mm_processor_kwargs",
    "grounding",
}


@bp.post("/v1/chat/completions")
@route_doc(
    tag="chat",
    summary="OpenAI Chat Completions (text, images, videos; stream or not)",
    operation_id="createChatCompletion",
    request=ChatCompletionRequestSchema,
    request_example={
        "model": "qwen3-vl-instruct",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "Hello!"}],
    },
    responses={
        200: (
            "a chat.completion, or with `stream: true` an SSE stream of ChatCompletionChunk events",
            ChatCompletionSchema,
        )
    },
    stream="a ChatCompletionChunk as JSON (an ErrorResponse if the engine fails mid-stream), "
    "then `[DONE]`; `: ping` comments keep the stream alive",
    events=(ChatCompletionChunkSchema,),
    errors=(400, 404, 408, 413, 415, 500, 503),
)
@auth.login_required
@admitted  # a --max_concurrent admission ticket for the whole response, or 503 at once
def chat_completions():
    state = current_app.extensions["qwen3vl"]
    limit = request_limit(state)
    body = json_body(value_budget(limit))
    if isinstance(body.get("messages"), list):  # counted before anything walks them
        check_message_count(len(body["messages"]), limit)
    req = prepare(ChatCompletionRequestSchema().load, body)
    stream = bool(req.get("stream"))
    gen = serving.start_chat(state, req, stream, transport.caller())
    plan = gen.plan
    ignored = serving.ignored_header(serving.ignored_params(body, gen.engine.capabilities.logits, HONOURED))
    cid = new_completion_id()
    if stream:
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        chunks = ChunkEncoder(cid, req.get("model") or state.model_id)
        encoder = ChatStreamEncoder(chunks, include_usage, plan.tool_names)
        grounded = GroundingStream(encoder, gen.vision) if req.get("grounding") else None
        return transport.sse_response(gen, grounded or encoder, ignored)
    out = transport.collect(gen)
    fin = out.finish
    content, calls = parse_tool_calls(out.text, plan.tool_names) if plan.parses_tools else (out.text, [])
    reason = "tool_calls" if calls and fin.reason == "stop" else fin.reason
    body = completion(
        cid,
        req.get("model") or state.model_id,
        content=content,
        finish_reason=reason,
        usage=usage(fin.prompt_tokens, fin.completion_tokens, fin.cached_tokens, fin.image_tokens, fin.video_tokens),
        logprobs={"content": out.logprobs} if out.logprobs else None,
        tool_calls=[c.to_openai() for c in calls],
    )
    if req.get("grounding"):
        body["choices"][0]["message"]["detections"] = detections(out.text, gen.vision)
    return jsonify(body), 200, ignored


class ChatStreamEncoder:
    """`chat.completion.chunk` events: a role chunk, content deltas, a finish chunk and,
    when asked for, a usage chunk.  With tools, `<tool_call>` blocks become tool-call
    deltas (index, id and name first, then the arguments) and the finish reason
    `tool_calls`."""

    def __init__(self, chunks: ChunkEncoder, include_usage: bool, tool_names: set[str] | None = None):
        self.chunks = chunks
        self.include_usage = include_usage
        self.tools = ToolCallStream(tool_names) if tool_names else None
        self.calls_sent = 0

    def start(self):
        yield self.chunks.chunk({"role": "assistant", "content": ""})

    def delta(self, ev: serving.Delta):
        logprobs = {"content": ev.logprobs} if ev.logprobs else None
        if self.tools is None:
            yield self.chunks.chunk({"content": ev.text}, logprobs=logprobs)
            return
        yield from self._tool_events(self.tools.push(ev.text), logprobs)

    def finish(self, ev: serving.Finish):
        reason = ev.reason
        if self.tools is not None:
            yield from self._tool_events(self.tools.finish(), None)
            if self.tools.calls and reason == "stop":
                reason = "tool_calls"
        yield self.chunks.chunk({}, finish_reason=reason)
        if self.include_usage:
            yield self.chunks.usage_chunk(
                ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens, ev.image_tokens, ev.video_tokens
            )

    def _tool_events(self, events, logprobs):
        sent = False
        for kind, value in events:
            if kind == "content":
                yield self.chunks.chunk({"content": value}, logprobs=None if sent else logprobs)
            else:
                index = self.calls_sent
                self.calls_sent += 1
                first = value.to_openai(index)
                first["function"] = {"name": value.name, "arguments": ""}
                yield self.chunks.chunk({"tool_calls": [first]}, logprobs=None if sent else logprobs)
                yield self.chunks.chunk({"tool_calls": [{"index": index, "function": {"arguments": value.arguments}}]})
            sent = True
        if logprobs and not sent:  # text held back (maybe a tool call): its logprobs still go out now
            yield self.chunks.chunk({"content": ""}, logprobs=logprobs)
