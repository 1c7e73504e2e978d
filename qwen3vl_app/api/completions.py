"""POST /v1/completions: OpenAI's legacy text completions.  The prompt is raw text (or
token ids): no chat template.  A list of prompts gives one choice per prompt (n=1 each),
generated one after the other on this worker's engine."""

from __future__ import annotations

import time
import uuid

from flask import Blueprint, current_app, jsonify

from .. import serving
from ..errors import PromptError
from ..prompt import build as prompting
from ..prompt.template import context_overflow
from ..protocol import CompletionRequest
from ..sse import sse
from ..structured import check_logit_bias
from . import transport
from .admission import admitted
from .auth import auth
from .common import json_body, prepare, request_limit, value_budget
from .completions_schema import MAX_PROMPTS, CompletionRequestSchema, CompletionSchema
from .models import check_served
from .replies import text_choice, text_completion, usage
from .routedoc import route_doc

bp = Blueprint("completions", __name__)

HONOURED = serving.GENERATION_FIELDS | {"prompt", "max_tokens", "best_of", "echo", "logprobs", "loop_guard"}


@bp.post("/v1/completions")
@route_doc(
    tag="completions",
    summary="OpenAI legacy text completions (raw prompt, no chat template)",
    operation_id="createCompletion",
    request=CompletionRequestSchema,
    request_example={"model": "qwen3-vl-instruct", "prompt": "Once upon a time", "max_tokens": 16},
    responses={
        200: (
            "a text_completion (one choice per prompt), or with `stream: true` an SSE stream of text_completion events",
            CompletionSchema,
        )
    },
    stream="a Completion as JSON (an ErrorResponse if the engine fails mid-stream), then `[DONE]`",
    errors=(400, 404, 408, 413, 415, 500, 503),
)
@auth.login_required
@admitted
def completions():
    state = current_app.extensions["qwen3vl"]
    limit = request_limit(state)
    body = json_body(value_budget(limit))
    check_id_counts(body.get("prompt"), limit)
    req: CompletionRequest = prepare(CompletionRequestSchema().load, body)
    model = check_served(state, req.model)  # 404 for a model not served here
    engine = state.runner.wait_ready()
    check_logit_bias(req, engine.capabilities.logits)
    texts = [p if isinstance(p, str) else state.tokenizer.decode(list(p), skip_special=False) for p in req.prompts]

    def launch(i: int):
        try:
            prompt = prompting.tokenize_text(
                state.tokenizer, req.prompts[i], engine.limits, state.settings.max_prompt_tokens
            )
            return serving.start_prompt(state, engine, prompt, req, transport.caller())
        except PromptError as e:
            e.param = "prompt" if len(texts) == 1 else f"prompt[{i}]"
            raise

    ignored = serving.ignored_header(
        serving.ignored_params(body, engine.capabilities.logits, HONOURED, engine.capabilities.verify)
    )
    base = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    if req.stream:
        encoder = CompletionStreamEncoder(base, len(texts), texts if req.echo else None, req.include_usage)
        first = launch(0)
        rest = [lambda i=i: launch(i).events for i in range(1, len(texts))]
        return transport.sse_response(
            serving.Generation(_one_after_another(first.events, rest), first.stats), encoder, ignored
        )
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for i in range(len(texts)):
        out = transport.collect(launch(i))
        text = (texts[i] if req.echo else "") + out.text
        logprobs = legacy_logprobs(out.logprobs) if out.logprobs else None
        choices.append(text_choice(i, text, logprobs, out.finish.reason, out.finish.stopped_by))
        prompt_tokens += out.finish.prompt_tokens
        completion_tokens += out.finish.completion_tokens
    return jsonify(text_completion(base, choices, usage(prompt_tokens, completion_tokens))), 200, ignored


def check_id_counts(prompt, limit: int | None) -> None:
    """A token-id prompt longer than the limit is an overflow known from its length alone:
    refused before the schema walks millions of ids."""
    if limit is None or not isinstance(prompt, list) or not prompt:
        return
    lists = prompt if isinstance(prompt[0], list) else [prompt]
    if len(lists) > MAX_PROMPTS or isinstance(prompt[0], str):
        return  # the schema's to refuse
    for i, ids in enumerate(lists):
        if isinstance(ids, list) and len(ids) > limit:
            e = context_overflow(limit, len(ids), "prompt")
            e.param = "prompt" if lists is not prompt or len(prompt) == 1 else f"prompt[{i}]"
            raise e


def _one_after_another(first, rest):
    """The events of each prompt's generation in turn; each later one takes the engine only
    when the previous one has finished (and released it)."""
    yield from first
    for launch in rest:
        yield from launch()


def legacy_logprobs(entries: list[dict], offset: int = 0) -> dict:
    """Chat-style logprob entries -> the legacy shape (parallel lists)."""
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e["token"])
        out["token_logprobs"].append(e["logprob"])
        out["top_logprobs"].append({t["token"]: t["logprob"] for t in e.get("top_logprobs") or []})
        out["text_offset"].append(offset)
        offset += len(e["token"])
    return out


class CompletionStreamEncoder:
    """`text_completion` events: text deltas per prompt (`index`), a finish event per
    prompt, then a usage event when asked for."""

    def __init__(self, base: dict, count: int, echo: list[str] | None, include_usage: bool):
        self.base = base
        self.count, self.echo, self.include_usage = count, echo, include_usage
        self.index = 0
        self.offset = 0
        self.prompt_tokens = self.completion_tokens = 0

    def _event(self, text: str, logprobs=None, finish_reason=None, stopped_by=None) -> str:
        return sse(text_completion(self.base, [text_choice(self.index, text, logprobs, finish_reason, stopped_by)]))

    def start(self):
        if self.echo:
            yield self._event(self.echo[0])

    def delta(self, ev: serving.Delta):
        lp = legacy_logprobs(ev.logprobs, self.offset) if ev.logprobs else None
        self.offset += len(ev.text)
        yield self._event(ev.text, lp)

    def finish(self, ev: serving.Finish):
        yield self._event("", None, ev.reason, ev.stopped_by)
        self.prompt_tokens += ev.prompt_tokens
        self.completion_tokens += ev.completion_tokens
        self.index += 1
        self.offset = 0
        if self.echo and self.index < self.count:
            yield self._event(self.echo[self.index])
        if self.include_usage and self.index == self.count:
            yield sse(text_completion(self.base, [], usage(self.prompt_tokens, self.completion_tokens)))
