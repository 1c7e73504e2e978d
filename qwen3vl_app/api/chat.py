"""POST /v1/chat/completions: schema -> media -> serving -> response or SSE stream."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .. import serving
from ..grounding import GroundingStream, detections
from ..processing import reasoning
from ..processing.tools import ToolCallStream, parse_tool_calls
from ..protocol import ChatRequest
from . import transport
from .admission import admitted
from .auth import auth
from .chat_schema import ChatCompletionChunkSchema, ChatCompletionRequestSchema, ChatCompletionSchema
from .common import load_messages_body
from .models import check_served
from .replies import ChunkEncoder, completion, finish_usage, new_completion_id
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
    "prediction",
    "thinking_budget",
    "chat_template_kwargs",
    "loop_guard",
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
    req: ChatRequest
    body, req = load_messages_body(state, ChatCompletionRequestSchema())
    model = check_served(state, req.model)  # 404 for a model not served here
    gen = serving.start_chat(state, req, transport.caller())
    plan = gen.plan
    ignored = serving.ignored_header(
        serving.ignored_params(body, gen.engine.capabilities.logits, HONOURED, gen.engine.capabilities.verify)
    )
    cid = new_completion_id()
    if req.stream:
        encoder = ChatStreamEncoder(ChunkEncoder(cid, model), req.include_usage, plan.tool_names, gen.thinking)
        grounded = GroundingStream(encoder, gen.vision) if req.grounding else None
        return transport.sse_response(gen, grounded or encoder, ignored)
    out = transport.collect(gen)
    fin = out.finish
    thought, text = reasoning.split(out.text, gen.thinking) if gen.thinking is not None else (None, out.text)
    content, calls = parse_tool_calls(text, plan.tool_names) if plan.parses_tools else (text, [])
    reason = "tool_calls" if calls and fin.reason == "stop" else fin.reason
    reply = completion(
        cid,
        model,
        content=content,
        finish_reason=reason,
        usage=finish_usage(fin),
        logprobs={"content": out.logprobs} if out.logprobs else None,
        tool_calls=[c.to_openai() for c in calls],
        reasoning=thought,
        stopped_by=fin.stopped_by,
        detections=detections(out.text, gen.vision) if req.grounding else None,
    )
    return jsonify(reply), 200, ignored


class ChatStreamEncoder:
    """`chat.completion.chunk` events: a role chunk, content deltas, a finish chunk and,
    when asked for, a usage chunk.  With tools, `<tool_call>` blocks become tool-call
    deltas (index, id and name first, then the arguments) and the finish reason
    `tool_calls`."""

    def __init__(
        self,
        chunks: ChunkEncoder,
        include_usage: bool,
        tool_names: set[str] | None = None,
        thinking: bool | None = None,
    ):
        self.chunks = chunks
        self.include_usage = include_usage
        self.tools = ToolCallStream(tool_names) if tool_names else None
        self.calls_sent = 0
        # a thinking model: reasoning_content deltas first, then the answer's
        self.splitter = reasoning.ReasoningSplitter(thinking) if thinking is not None else None

    def start(self):
        yield self.chunks.chunk({"role": "assistant", "content": ""})

    def delta(self, ev: serving.Delta):
        logprobs = {"content": ev.logprobs} if ev.logprobs else None
        if self.splitter is not None:
            thought, text = self.splitter.push(ev.text)
            if thought:
                yield self.chunks.chunk({"reasoning_content": thought, "reasoning": thought}, logprobs=logprobs)
                logprobs = None
            if not text and not logprobs:
                return
            yield from self._content(text, logprobs)
            return
        yield from self._content(ev.text, logprobs)

    def _content(self, text: str, logprobs):
        if self.tools is None:
            yield self.chunks.chunk({"content": text}, logprobs=logprobs)
            return
        yield from self._tool_events(self.tools.push(text), logprobs)

    def finish(self, ev: serving.Finish):
        reason = ev.reason
        if self.splitter is not None:
            thought, text = self.splitter.flush()
            if thought:
                yield self.chunks.chunk({"reasoning_content": thought, "reasoning": thought})
            if text:
                yield from self._content(text, None)
        if self.tools is not None:
            yield from self._tool_events(self.tools.finish(), None)
            if self.tools.calls and reason == "stop":
                reason = "tool_calls"
        yield self.chunks.chunk({}, finish_reason=reason, **({"stopped_by": ev.stopped_by} if ev.stopped_by else {}))
        if self.include_usage:
            yield self.chunks.usage_chunk(ev)

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
