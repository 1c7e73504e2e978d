"""POST /v1/responses: OpenAI's Responses API over the same generation path as chat.

The request is translated into a chat request (responses_schema.to_chat_request), so
tools, structured output (`text.format`), images and the chat template behave exactly as
in /v1/chat/completions.  The output is built by one `ResponseWriter` for both modes: a
stream sends its events as they happen (response.created ... response.completed, no
`[DONE]`, as OpenAI's streams end); a non-stream request returns its final snapshot.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from contextlib import contextmanager

from flask import Blueprint, current_app, jsonify
from marshmallow import ValidationError

from .. import serving
from ..errors import APIError
from ..processing.reasoning import ReasoningSplitter
from ..processing.tools import ToolCall, ToolCallStream
from ..protocol import ChatRequest
from . import transport
from .admission import admitted
from .auth import auth
from .chat_schema import ChatCompletionRequestSchema
from .common import check_message_count, json_body, prepare, request_limit, value_budget
from .errors import first_validation_error
from .models import check_served
from .replies import output_item, response
from .responses_schema import ResponseRequestSchema, ResponseSchema, to_chat_request
from .routedoc import route_doc

bp = Blueprint("responses", __name__)

HONOURED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "previous_response_id",
        "metadata",
        "thinking_budget",
        "chat_template_kwargs",
        "loop_guard",
    }
)


@bp.post("/v1/responses")
@route_doc(
    tag="responses",
    summary="OpenAI Responses API (stateless: previous_response_id is a 400, store has no effect)",
    operation_id="createResponse",
    request=ResponseRequestSchema,
    request_example={"model": "qwen3-vl-instruct", "input": "Hello!", "max_output_tokens": 32},
    responses={
        200: (
            "a response, or with `stream: true` its events (`event: <type>`): "
            "response.created, response.in_progress, response.output_item.added, "
            "response.content_part.added, response.output_text.delta..., "
            "response.function_call_arguments.delta/done, ...done events, then "
            "response.completed or response.incomplete (no `[DONE]`)",
            ResponseSchema,
        )
    },
    stream="a Responses stream event as JSON with `type` and `sequence_number`; lifecycle events carry a Response",
    errors=(400, 404, 408, 413, 415, 500, 503),
)
@auth.login_required
@admitted
def create_response():
    state = current_app.extensions["qwen3vl"]
    limit = request_limit(state)
    body = json_body(value_budget(limit))
    items = body.get("input")
    if limit is not None and isinstance(items, list) and len(items) > limit:  # counted before anything walks them
        with _responses_names([]):
            check_message_count(sum(1 for i in items if not _is_reasoning(i)), limit, "input items")
    rreq = prepare(ResponseRequestSchema().load, body)
    model = check_served(state, rreq.get("model"))  # 404 for a model not served here
    chat_body, origins = prepare(to_chat_request, rreq)
    with _responses_names(origins):
        req: ChatRequest = prepare(ChatCompletionRequestSchema().load, chat_body)
        gen = serving.start_chat(state, req, transport.caller())
    plan = gen.plan
    ignored = serving.ignored_header(serving.ignored_params(body, gen.engine.capabilities.logits, HONOURED))
    writer = ResponseWriter(_base(rreq, model), plan.tool_names, gen.thinking)
    if req.stream:
        return transport.sse_response(gen, ResponsesStreamEncoder(writer), ignored, done="")
    out = transport.collect(gen)
    writer.start()
    writer.text(out.text)
    final = writer.finish(out.finish)[-1]["response"]
    return jsonify(final), 200, ignored


def _is_reasoning(item) -> bool:
    """A reasoning item: dropped from the prompt, so it makes no token."""
    return isinstance(item, dict) and item.get("type") == "reasoning"


# Chat field -> the Responses field it came from, for error messages.
_PARAM_NAMES = {"max_completion_tokens": "max_output_tokens", "response_format": "text.format", "messages": "input"}
_MESSAGE = re.compile(r"^messages(?:\[(\d+)\]|\.(\d+))")  # media errors use [i], validation errors .i


@contextmanager
def _responses_names(origins: list[str]):
    """Errors raised while the translated chat request is checked and its media fetched
    name the Responses field (`input[2].content[0]`, `text.format`), not the chat one."""

    def rename(param: str | None) -> str | None:
        if not param:
            return param
        m = _MESSAGE.match(param)
        if m and int(m.group(1) or m.group(2)) < len(origins):
            return origins[int(m.group(1) or m.group(2))] + param[m.end() :]
        head, dot, rest = param.partition(".")
        return _PARAM_NAMES.get(head, head) + dot + rest

    try:
        yield
    except ValidationError as e:
        param, msg = first_validation_error(e.messages)
        raise APIError(f"{rename(param)}: {msg}", 400, rename(param), "invalid_value") from None
    except APIError as e:
        e.param = rename(e.param)
        raise


def _base(rreq: dict, model: str) -> dict:
    fmt = (rreq.get("text") or {}).get("format") or {"type": "text"}
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": rreq.get("instructions"),
        "max_output_tokens": rreq.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": rreq.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,  # stateless: nothing is kept, whatever `store` asked
        "temperature": rreq.get("temperature"),
        "text": {"format": fmt},
        "tool_choice": rreq.get("tool_choice") or "auto",
        "tools": rreq.get("tools") or [],
        "top_p": rreq.get("top_p"),
        "truncation": "disabled",
        "usage": None,
        "user": rreq.get("user"),
        "metadata": rreq.get("metadata") or {},
    }


class ResponseWriter:
    """Output items and the events that build them: text goes into an assistant `message`
    item (one output_text part), each `<tool_call>` block becomes a `function_call` item."""

    def __init__(self, base: dict, tool_names: set[str] | None, thinking: bool | None = None):
        self.base = base
        self.output: list[dict] = []
        self.seq = 0
        self.message: dict | None = None  # the open message item
        self.tools = ToolCallStream(tool_names) if tool_names else None
        # a thinking model: its reasoning goes into a `reasoning` item before the message
        self.splitter = ReasoningSplitter(thinking) if thinking is not None else None
        self.reasoning: dict | None = None

    def _event(self, type_: str, **fields) -> dict:
        ev = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def snapshot(self, status: str, **extra) -> dict:
        """The `response` object now, dumped through ResponseSchema (a copy: later events change the output)."""
        return response({**self.base, "status": status, "output": self.output, **extra})

    def start(self) -> list[dict]:
        return [
            self._event("response.created", response=self.snapshot("in_progress")),
            self._event("response.in_progress", response=self.snapshot("in_progress")),
        ]

    def text(self, delta: str) -> list[dict]:
        events = []
        if self.splitter is not None:
            thought, delta = self.splitter.push(delta)
            events += self._reasoning_text(thought)
            if not delta:
                return events
            events += self._close_reasoning()
        return events + self._apply(self.tools.push(delta) if self.tools else [("content", delta)])

    def finish(self, fin: serving.Finish) -> list[dict]:
        events = []
        if self.splitter is not None:
            thought, text = self.splitter.flush()
            events += self._reasoning_text(thought) + self._close_reasoning()
            if text:
                events += self._apply(self.tools.push(text) if self.tools else [("content", text)])
        events += self._apply(self.tools.finish()) if self.tools else []
        complete = fin.reason != "length"
        events += self._close_message("completed" if complete else "incomplete")
        usage = {
            "input_tokens": fin.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": fin.cached_tokens,
                "image_tokens": fin.image_tokens,
                "video_tokens": fin.video_tokens,
            },
            "output_tokens": fin.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": fin.reasoning_tokens or 0},
            "total_tokens": fin.prompt_tokens + fin.completion_tokens,
        }
        if complete:
            final = self.snapshot("completed", usage=usage)
            return events + [self._event("response.completed", response=final)]
        final = self.snapshot("incomplete", usage=usage, incomplete_details={"reason": "max_output_tokens"})
        return events + [self._event("response.incomplete", response=final)]

    def _reasoning_text(self, text: str) -> list[dict]:
        """A `reasoning` item (opened at its first text), its text as reasoning_text deltas."""
        if not text:
            return []
        events = []
        if self.reasoning is None:
            self.reasoning = {
                "type": "reasoning",
                "id": f"rs_{uuid.uuid4().hex}",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": ""}],
                "status": "in_progress",
            }
            self.output.append(self.reasoning)
            index = len(self.output) - 1
            events.append(
                self._event("response.output_item.added", output_index=index, item=output_item(self.reasoning))
            )
        self.reasoning["content"][0]["text"] += text
        events.append(
            self._event(
                "response.reasoning_text.delta",
                item_id=self.reasoning["id"],
                output_index=self.output.index(self.reasoning),
                content_index=0,
                delta=text,
            )
        )
        return events

    def _close_reasoning(self) -> list[dict]:
        item, self.reasoning = self.reasoning, None
        if item is None:
            return []
        index = self.output.index(item)
        item["status"] = "completed"
        text = item["content"][0]["text"]
        return [
            self._event(
                "response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0, text=text
            ),
            self._event("response.output_item.done", output_index=index, item=output_item(item)),
        ]

    def _apply(self, pieces) -> list[dict]:
        events: list[dict] = []
        for kind, value in pieces:
            if kind == "content":
                if value:
                    events += self._append_text(value)
            else:
                events += self._close_message("completed") + self._add_call(value)
        return events

    def _append_text(self, text: str) -> list[dict]:
        events = []
        if self.message is None:
            self.message = {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            self.output.append(self.message)
            index = len(self.output) - 1
            events.append(self._event("response.output_item.added", output_index=index, item=output_item(self.message)))
            part = {"type": "output_text", "text": "", "annotations": []}
            self.message["content"].append(part)
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=self.message["id"],
                    output_index=index,
                    content_index=0,
                    part=dict(part),
                )
            )
        self.message["content"][0]["text"] += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self.message["id"],
                output_index=self.output.index(self.message),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _close_message(self, status: str) -> list[dict]:
        msg, self.message = self.message, None
        if msg is None:
            return []
        index = self.output.index(msg)
        part = msg["content"][0]
        msg["status"] = status
        return [
            self._event(
                "response.output_text.done",
                item_id=msg["id"],
                output_index=index,
                content_index=0,
                text=part["text"],
                logprobs=[],
            ),
            self._event(
                "response.content_part.done", item_id=msg["id"], output_index=index, content_index=0, part=dict(part)
            ),
            self._event("response.output_item.done", output_index=index, item=output_item(msg)),
        ]

    def _add_call(self, call: ToolCall) -> list[dict]:
        item = {
            "type": "function_call",
            "id": f"fc_{uuid.uuid4().hex}",
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
            "status": "in_progress",
        }
        self.output.append(item)
        index = len(self.output) - 1
        events = [
            self._event("response.output_item.added", output_index=index, item=dict(item)),
            self._event(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=call.arguments
            ),
        ]
        item.update(arguments=call.arguments, status="completed")
        events += [
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=call.name,
                arguments=call.arguments,
            ),
            self._event("response.output_item.done", output_index=index, item=dict(item)),
        ]
        return events


class ResponsesStreamEncoder:
    """SSE of the writer's events: `event: <type>` and the event as `data:`."""

    def __init__(self, writer: ResponseWriter):
        self.writer = writer

    @staticmethod
    def _sse(events: list[dict]):
        for ev in events:
            yield f"event: {ev['type']}\ndata: {json.dumps(ev, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def start(self):
        yield from self._sse(self.writer.start())

    def delta(self, ev: serving.Delta):
        yield from self._sse(self.writer.text(ev.text))

    def finish(self, ev: serving.Finish):
        yield from self._sse(self.writer.finish(ev))
