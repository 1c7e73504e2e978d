"""Serving logic of every generation endpoint: a parsed request becomes a running
generation, and its events become one JSON body or an SSE stream.

Plain Python: no Flask, no sockets (`api/transport.py` turns what this hands over into a
response).  Blueprints parse the request and pick an encoder; everything in between
lives here, in the order a request meets it:

  resolve_media -> start (prompt, length check, sampling, engine turn) -> collect_events | sse_events

The prompt itself is built by `prompt/build.py` (byte bound, tokenized off the hub).

It runs in the request greenlet.  The generation itself runs in the worker's engine
thread (`engine.scheduler`, the one decode loop) and its tokens arrive here through a
`TokenChannel`, so this greenlet -- and every other connection of the worker -- stays
responsive.  Closing the event iterator (client gone, stream closed, an error) cancels
the generation before its next decode step and frees its slot; both `collect_events`
and `sse_events` guarantee it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from .engine.base import Engine, Prompt, VisionInput
from .engine.constraints import GrammarFailed
from .engine.sampling import SamplingParams
from .engine.scheduler import Cancel
from .engine.speculative import MAX_DRAFT
from .engine.steering import prompt_opens_thinking
from .errors import APIError, error_body, grammar_failed_body
from .media.pipeline import MediaConfig, retag_parts
from .media.pipeline import resolve_media as resolve
from .processing import reasoning, steering_options
from .processing.detok import Detokenizer, StopMatcher
from .prompt.build import OFFLOAD_TEXT_BYTES, off_hub, tokenize
from .prompt.messages import split_messages
from .prompt.template import check_length
from .prompt.vision import vision_tokens
from .protocol import SAMPLING_FIELDS, ChatRequest, GenerationRequest
from .sse import SSE_DONE, SSE_PING, sse
from .structured import OutputPlan, plan_output

if TYPE_CHECKING:
    from .engine.constraints import Grammar
    from .engine.runner import EngineRunner
    from .engine.steering import Steering
    from .prompt.messages import MediaRef
    from .settings import Settings
    from .state import ServerState
    from .tokenizer import ChatTokenizer

log = logging.getLogger("qwen3vl.serving")


# ----------------------------------------------------------------------------- events


@dataclass
class JobStats:
    """Timings and counts of one generation, for the request log, metrics and Server-Timing.
    Times are time.monotonic(); `engine_seconds` is measured inside the engine thread."""

    queue_wait: float | None = None  # waiting for this worker's engine (and its load)
    first_token_at: float | None = None
    last_token_at: float | None = None
    engine_seconds: float = 0.0  # prefill + decode steps, as the engine thread saw them
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV the engine reused
    completion_tokens: int = 0
    steps: int = 0  # engine steps that produced its tokens (prefill included)
    speculative: bool = False  # drafted tokens (engine.speculative) were verified for it
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens kept
    finish_reason: str | None = None  # stop | length | cancelled

    def ttft(self, started: float) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - started

    @property
    def tpot(self) -> float | None:
        if self.completion_tokens < 2 or self.first_token_at is None or self.last_token_at is None:
            return None
        return (self.last_token_at - self.first_token_at) / (self.completion_tokens - 1)

    def overhead(self, total: float) -> float | None:
        """Request time spent outside the engine and the queue."""
        if self.queue_wait is None:
            return None
        return max(0.0, total - self.queue_wait - self.engine_seconds)


@dataclass
class GenerationJob:
    prompt: Prompt
    params: SamplingParams
    stops: list[str] = field(default_factory=list)
    time_limit: float = 600.0
    stats: JobStats = field(default_factory=JobStats)
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says
    grammar: Grammar | None = None  # constrained decoding (response_format, forced tool calls)
    speculative: int = 0  # draft tokens per step (engine.speculative; 0: off)
    prediction: tuple[int, ...] = ()  # OpenAI `prediction`, tokenized: drafted first
    steer: Steering | None = None  # thinking budget, loop guard (engine/steering.py)


@dataclass
class Delta:
    text: str
    logprobs: list[dict] = field(default_factory=list)


@dataclass
class Finish:
    reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    draft: tuple[int, int] | None = None  # speculative: (accepted, rejected) draft tokens
    reasoning_tokens: int | None = None  # a thinking model's: tokens up to and including </think>
    stopped_by: str | None = None  # "loop_guard" when the loop guard ended it (finish reason "stop")
    image_tokens: int = 0  # of prompt_tokens: image placeholders
    video_tokens: int = 0  # of prompt_tokens: video placeholders


PING = object()  # yielded while a long prefill runs, so streams can send keep-alives
ADMITTED = object()  # first item: this request holds the engine (raised QueueFull instead if not)

Event = Any  # PING | ADMITTED | Delta | Finish


# ----------------------------------------------------------------------------- request -> generation


# Fields every generation endpoint honours (GenerationRequestSchema); each endpoint adds its own.
GENERATION_FIELDS = frozenset(
    {
        "model",
        *SAMPLING_FIELDS,
        "stop",
        "n",
        "stream",
        "stream_options",
        "logit_bias",
        "cache_salt",
        "speculative_tokens",
    }
)
SPECULATIVE_FIELDS = ("speculative_tokens", "prediction")  # no effect on an engine that cannot verify
PREDICTION_DRAFT = 8  # draft tokens per step for a request with `prediction` when nothing else sets K


def sampling_params(
    req: GenerationRequest,
    defaults: dict,
    settings: Settings,
    logits: bool,
    extra_bias: dict[int, float] | None = None,
) -> SamplingParams:
    """Request values win over the model folder's generation_config.json.  `logits`: the
    engine's `Capabilities.logits` (without them there are no logprobs).  `extra_bias`:
    the output plan's, on top of the request's logit_bias."""

    def pick(name, fallback):
        value = getattr(req, name)
        return fallback if value is None else value

    if req.logprobs and not logits:
        raise APIError(
            "This engine picks tokens on the device and returns no logits, so logprobs are unavailable.",
            400,
            "logprobs",
            "unsupported_parameter",
        )
    bias = {**dict(req.logit_bias), **(extra_bias or {})}
    return SamplingParams(
        max_tokens=req.max_tokens or settings.max_tokens_default,
        temperature=pick("temperature", defaults.get("temperature", 1.0) if defaults.get("do_sample", True) else 0.0),
        top_p=pick("top_p", defaults.get("top_p", 1.0)),
        top_k=pick("top_k", defaults.get("top_k", 0)),
        repetition_penalty=pick("repetition_penalty", defaults.get("repetition_penalty", 1.0)),
        presence_penalty=pick("presence_penalty", 0.0),
        frequency_penalty=pick("frequency_penalty", 0.0),
        seed=req.seed,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        logit_bias=tuple(bias.items()),
    )


def speculation(req: GenerationRequest, settings: Settings, tokenizer: ChatTokenizer) -> tuple[int, tuple[int, ...]]:
    """Draft tokens per step and the tokenized `prediction`: the request's
    `speculative_tokens`, else the server's --speculative-tokens, else 8 with a prediction."""
    ids: tuple[int, ...] = ()
    if text := req.prediction:
        if len(text) > OFFLOAD_TEXT_BYTES // 4:  # up to 4 bytes a character: tokenized off the hub when large
            ids = tuple(off_hub(tokenizer.encode_untrusted, text))
        else:
            ids = tuple(tokenizer.encode_untrusted(text))
    k = req.speculative_tokens
    if k is None:
        k = settings.speculative_tokens or (PREDICTION_DRAFT if ids else 0)
    return max(0, min(int(k), MAX_DRAFT)), ids


def cache_scope(scope_setting: str, key_digest: bytes, salt: str | None) -> bytes:
    """The prompt's cache scope (`Prompt.cache_scope`): its API key's digest unless the
    operator shares the cache between keys (`--prompt-cache-scope shared`), and the
    request's `cache_salt` (vLLM's extension) either way."""
    h = hashlib.sha256(b"qwen3vl-cache-scope\0")
    h.update(key_digest if scope_setting == "key" else b"")
    if salt:
        h.update(b"\0salt\0" + salt.encode("utf-8", "surrogatepass"))
    return h.digest()[:16]


def ignored_params(body: dict, logits: bool, honoured: frozenset[str] | None = None, verify: bool = True) -> list[str]:
    """Fields the response names in `X-Ignored-Params` instead of hiding that they had no
    effect: the sampling fields a device-greedy engine cannot honour, the speculative ones
    an engine without `verify` cannot, and, given the endpoint's `honoured` fields, every
    other field set in the body (outside the spec or not implemented).  /v1/models lists
    the capabilities."""
    out = [f for f in SAMPLING_FIELDS if not logits and body.get(f) is not None]
    out += [f for f in SPECULATIVE_FIELDS if not (logits and verify) and body.get(f) is not None]
    if honoured is not None:
        out += [k for k, v in body.items() if v is not None and k not in honoured and k not in out]
    return out


def ignored_header(names: list[str]) -> dict[str, str]:
    """`X-Ignored-Params` for every response of a generation endpoint (empty: nothing was
    ignored).  Client-chosen names are percent-encoded where they hold anything but
    letters, digits and `_.-` (a header carries no control characters), and the list is
    cut at 2000 characters."""
    value = ",".join(quote(n, safe="_.-") for n in names)
    if len(value) > 2000:
        value = value[:2000].rsplit(",", 1)[0] + ",..."
    return {"X-Ignored-Params": value}


def resolve_media(state: ServerState, media: list[MediaRef], engine: Engine, messages: list[dict]) -> list[VisionInput]:
    """Fetch and preprocess every media item of the conversation, in order; a bad one is a
    4xx naming its part.  Each template part of `messages` gets the kind the bytes turned
    out to be (a video sent through image_url becomes a video placeholder)."""
    if not media:
        return []
    vision = resolve(media, MediaConfig.from_settings(state.settings, engine.limits))
    retag_parts(messages, vision)
    return vision


@dataclass(frozen=True)
class Caller:
    """Who asks, as far as serving needs to know (the api layer fills it in)."""

    request_id: str = "-"
    key_digest: bytes = b""  # the API key's digest, the default cache scope (b"": no key)


@dataclass
class Generation:
    """A generation under way: its events (already past admission) and its stats."""

    events: Iterator[Event]
    stats: JobStats
    # a thinking model's output: True the prompt opened <think>, False the model may open it; None: no reasoning
    thinking: bool | None = field(default=None, kw_only=True)


@dataclass
class ChatGeneration(Generation):
    """A chat generation, with what its encoder needs to know."""

    plan: OutputPlan  # tools to parse from the output, grammar, forced tool calls
    engine: Engine
    vision: list[VisionInput] = field(default_factory=list)  # the conversation's media (grounding maps to them)


def start_chat(state: ServerState, req: ChatRequest, caller: Caller) -> ChatGeneration:
    """A chat request (Chat Completions, or a Responses request translated to one) becomes
    a running generation: its media fetched and preprocessed, its output plan (tools,
    response_format, logit_bias) applied, the prompt built and checked by the chat template,
    this worker's engine taken (503 at once when its queue is full)."""
    messages, media = split_messages(req.messages, req.mm_processor_kwargs)
    engine = state.runner.wait_ready()
    plan = plan_output(req, engine.capabilities.logits, state.tokenizer, state.settings)
    assert state.tokenizer is not None
    kwargs = reasoning.prepare(req, state.tokenizer, messages)
    vision = resolve_media(state, media, engine, messages)
    gen = start(state, engine, messages, vision, req, caller, plan, kwargs)
    return ChatGeneration(gen.events, gen.stats, plan, engine, vision, thinking=gen.thinking)


def start(
    state: ServerState,
    engine: Engine,
    messages: list[dict],
    vision: list[VisionInput],
    req: GenerationRequest,
    caller: Caller,
    plan: OutputPlan | None = None,
    template_kwargs: dict | None = None,
) -> Generation:
    """The chat template's messages (media already resolved into `vision`) -> a generation;
    `plan`: the tools the template renders, the grammar and logit_bias to apply."""
    assert state.tokenizer is not None  # an unusable model folder never gets a ready engine
    plan = plan or OutputPlan()
    prompt = tokenize(
        state.tokenizer, messages, vision, engine.limits, state.settings.max_prompt_tokens, plan.tools, template_kwargs
    )
    return start_prompt(state, engine, prompt, req, caller, plan.grammar, plan.logit_bias)


def start_prompt(
    state: ServerState,
    engine: Engine,
    prompt: Prompt,
    req: GenerationRequest,
    caller: Caller,
    grammar: Grammar | None = None,
    extra_bias: dict[int, float] | None = None,
) -> Generation:
    """A generation of a prompt already built (the legacy completions endpoint: raw text)."""
    settings = state.settings
    assert state.tokenizer is not None
    check_length(prompt, engine.limits, settings.max_prompt_tokens)
    prompt.cache_scope = cache_scope(settings.prompt_cache_scope, caller.key_digest, req.cache_salt)
    params = sampling_params(req, state.tokenizer.generation_config, settings, engine.capabilities.logits, extra_bias)
    k, prediction = speculation(req, settings, state.tokenizer)
    job = GenerationJob(
        prompt,
        params,
        list(req.stop),
        settings.request_timeout,
        ignore_eos=req.ignore_eos,
        grammar=grammar,
        speculative=k,
        prediction=prediction,
    )
    job.steer = steering_options.for_request(req, settings, state.tokenizer, prompt.input_ids)
    thinking = prompt_opens_thinking(prompt.input_ids) if reasoning.support(state.tokenizer).thinks else None
    it = _run(state.runner, state.tokenizer, job, settings.sse_keepalive if req.stream else None)
    next(it)  # ADMITTED, or QueueFull / EngineUnavailable
    return Generation(it, job.stats, thinking=thinking)


def _run(
    runner: EngineRunner, tokenizer: ChatTokenizer, job: GenerationJob, ping_every: float | None = None
) -> Iterator[Event]:
    """Yield ADMITTED, Delta..., then one Finish (PING in between when ping_every is set).
    Ends early with finish_reason 'length' at the job's time limit or when the worker's
    graceful-shutdown deadline passes (`runner.drain_deadline`)."""
    cancel = Cancel()
    stats = job.stats
    produced = 0
    finish = "length"
    stopped_by = None
    completed = False
    queued_at = time.monotonic()
    with runner.turn():
        stats.queue_wait = time.monotonic() - queued_at
        yield ADMITTED
        deadline = time.monotonic() + job.time_limit
        eos_ids = () if job.ignore_eos else tokenizer.eos_ids
        constrain = partial(job.grammar.mask, tokenizer) if job.grammar else None
        tokens = _tokens(runner, job, eos_ids, cancel, ping_every, constrain)
        detok = Detokenizer(tokenizer)
        stops = StopMatcher(job.stops)
        try:
            for item in tokens:
                if item is PING:
                    yield PING
                    continue
                now = time.monotonic()
                if stats.first_token_at is None:
                    stats.first_token_at = now
                    stats.cached_tokens = item.cached_tokens
                stats.last_token_at = now
                produced += 1
                text = stops.push(detok.push(item.token_id))
                if stops.stopped:
                    finish = "stop"
                elif item.finish_reason:
                    finish, stopped_by = item.finish_reason, item.stopped_by
                    text += stops.push(detok.flush()) + stops.flush()
                lp = _logprob_entry(tokenizer, item.choice) if job.params.logprobs else None
                if text or lp:
                    yield Delta(text, [lp] if lp else [])
                if stops.stopped or item.finish_reason:
                    break
                drain = runner.drain_deadline
                if now > deadline or (drain is not None and now > drain):
                    finish = "length"
                    break
            completed = True
        finally:
            cancel.set()
            tokens.close()
            stats.prompt_tokens = len(job.prompt.input_ids)
            stats.completion_tokens = produced
            stats.finish_reason = finish if completed else "cancelled"
    draft = (stats.accepted, stats.drafted - stats.accepted) if stats.speculative else None
    steer = job.steer
    reasoning_tokens = steer.reasoning_tokens if steer is not None and steer.thinking_model else None
    image_tokens, video_tokens = vision_tokens(job.prompt.vision)
    yield Finish(
        finish,
        len(job.prompt.input_ids),
        produced,
        stats.cached_tokens,
        draft,
        reasoning_tokens,
        stopped_by,
        image_tokens,
        video_tokens,
    )


def _tokens(
    runner: EngineRunner, job: GenerationJob, eos_ids, cancel: Cancel, ping_every: float | None, constrain=None
) -> Generator[Any, None, None]:
    """One generation in a scheduler slot: the engine thread sends its tokens; PING whenever
    none came for `ping_every` (its prefill, or another slot's prefill running between two
    decode steps).  `constrain` builds the grammar's token mask, in the engine thread.
    Closing sets nothing itself: the caller's `cancel` frees the slot before the next
    decode step."""
    channel = runner.join(
        job.prompt,
        job.params,
        eos_ids,
        cancel,
        constrain,
        speculative=job.speculative,
        prediction=job.prediction,
        steer=job.steer,
    )
    request = channel.request
    assert request is not None
    try:
        while True:
            item = channel.get(ping_every)
            if item is channel.TIMEOUT:
                yield PING
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stats = job.stats
        stats.engine_seconds = request.engine_seconds
        stats.steps, stats.drafted, stats.accepted = request.steps, request.drafted, request.accepted
        stats.speculative = request.speculating


def _logprob_entry(tokenizer: ChatTokenizer, choice) -> dict:
    def entry(tid, lp):
        raw = tokenizer.token_bytes(tid)
        return {"token": raw.decode("utf-8", "replace"), "logprob": lp, "bytes": list(raw)}

    out = entry(choice.token_id, choice.logprob)
    out["top_logprobs"] = [entry(t, lp) for t, lp in (choice.top_logprobs or [])]
    return out


# ----------------------------------------------------------------------------- generation -> response


@dataclass
class Collected:
    text: str
    logprobs: list[dict]
    finish: Finish


def collect_events(events: Iterator[Event], client_gone: Callable[[], bool], request_id: str = "-") -> Collected:
    """Run a generation to its end for a non-stream response.  A client that hangs up
    (`client_gone`, asked after every token) cancels it, so it never holds the engine to
    max_tokens."""
    text: list[str] = []
    logprobs: list[dict] = []
    try:
        for ev in events:
            if isinstance(ev, Delta):
                text.append(ev.text)
                logprobs.extend(ev.logprobs)
                if client_gone():
                    log.info("client disconnected; cancelling request %s", request_id)
                    break
            elif isinstance(ev, Finish):
                return Collected("".join(text), logprobs, ev)
    finally:
        events.close()  # type: ignore[attr-defined]
    raise APIError("Client closed the connection.", 400, None, "client_closed")


class StreamEncoder(Protocol):
    """How one endpoint spells its SSE events."""

    def start(self) -> Iterable[str]: ...

    def delta(self, ev: Delta) -> Iterable[str]: ...

    def finish(self, ev: Finish) -> Iterable[str]: ...


def sse_events(
    events: Iterator[Event], encoder: StreamEncoder, done: str = SSE_DONE, request_id: str = "-"
) -> Generator[str, None, None]:
    """SSE text of a generation: the encoder's events, keep-alive pings while the prompt is
    processed, then `done` (`[DONE]`).  A failure after the stream started becomes one
    OpenAI-format error event (status and headers are already sent) and the stream ends
    without `[DONE]`, which the openai client raises as an APIError.  Closing it cancels
    the generation."""
    try:
        yield from encoder.start()
        for ev in events:
            if ev is PING:
                yield SSE_PING
            elif isinstance(ev, Delta):
                yield from encoder.delta(ev)
            elif isinstance(ev, Finish):
                yield from encoder.finish(ev)
        if done:  # the Responses API's streams end with their last event instead
            yield done
    except GrammarFailed as e:
        log.warning("request %s: %s", request_id, e)
        yield sse(grammar_failed_body(e, request_id))
    except Exception:
        log.exception("generation failed in request %s", request_id)
        yield sse(error_body(f"Internal server error (request id {request_id}).", 500, None, "internal_error"))
    finally:
        events.close()  # type: ignore[attr-defined]  # client gone or done: cancel, free the engine
