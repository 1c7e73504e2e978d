"""Serving logic of one chat completion: drive the engine, turn tokens into text events.

Runs in the request greenlet.  Every engine step executes in the worker's engine thread
(`EngineRunner.call`), so this greenlet -- and every other connection of the worker --
stays responsive.  The caller consumes `events()`; closing it early (client gone) cancels
the generation before the next decode step and frees the engine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .engine.base import Prompt
from .engine.generation import Cancel, generate
from .engine.sampling import SamplingParams
from .processing.detok import Detokenizer, StopMatcher


@dataclass
class JobStats:
    """Timings and counts of one generation, for the request log, metrics and Server-Timing.
    Times are time.monotonic(); `engine_seconds` is measured inside the engine thread."""

    queue_wait: float | None = None  # waiting for this worker's engine (and its load)
    first_token_at: float | None = None
    last_token_at: float | None = None
    engine_seconds: float = 0.0  # prefill + decode steps, as the engine thread saw them
    prompt_tokens: int = 0
    completion_tokens: int = 0
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
class ChatJob:
    prompt: Prompt
    params: SamplingParams
    stops: list[str] = field(default_factory=list)
    time_limit: float = 600.0
    stats: JobStats = field(default_factory=JobStats)


@dataclass
class Delta:
    text: str
    logprobs: list[dict] = field(default_factory=list)


@dataclass
class Finish:
    reason: str
    prompt_tokens: int
    completion_tokens: int


PING = object()  # yielded while a long prefill runs, so streams can send keep-alives
ADMITTED = object()  # first item: this request holds the engine (raised QueueFull instead if not)


def events(runner, tokenizer, job: ChatJob, ping_every: float | None = None):
    """Yield ADMITTED, Delta..., then one Finish (PING in between when ping_every is set).
    Ends early with finish_reason 'length' at the job's time limit or when the worker's
    graceful-shutdown deadline passes (`runner.drain_deadline`)."""
    cancel = Cancel()
    stats = job.stats
    produced = 0
    finish = "length"
    completed = False
    queued_at = time.monotonic()
    with runner.turn() as engine:
        stats.queue_wait = time.monotonic() - queued_at
        yield ADMITTED
        deadline = time.monotonic() + job.time_limit
        gen = generate(engine, job.prompt, job.params, tokenizer.eos_ids, cancel)
        detok = Detokenizer(tokenizer)
        stops = StopMatcher(job.stops)
        try:
            first = True
            while True:
                if first and ping_every:
                    pending = runner.spawn(_timed_next, gen, stats)
                    while not pending.ready():
                        pending.wait(ping_every)
                        if not pending.ready():
                            yield PING
                    item = pending.get()
                else:
                    item = runner.call(_timed_next, gen, stats)
                first = False
                if item is None:
                    break
                now = time.monotonic()
                if stats.first_token_at is None:
                    stats.first_token_at = now
                stats.last_token_at = now
                produced += 1
                text = stops.push(detok.push(item.token_id))
                if stops.stopped:
                    finish = "stop"
                elif item.finish_reason:
                    finish = item.finish_reason
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
            runner.call(gen.close)
            stats.prompt_tokens = len(job.prompt.input_ids)
            stats.completion_tokens = produced
            stats.finish_reason = finish if completed else "cancelled"
    yield Finish(finish, len(job.prompt.input_ids), produced)


def _timed_next(gen, stats: JobStats):
    """One engine step, timed in the engine thread (so thread hand-off counts as overhead)."""
    t0 = time.perf_counter()
    try:
        return next(gen, None)
    finally:
        stats.engine_seconds += time.perf_counter() - t0


def _logprob_entry(tokenizer, choice) -> dict:
    def entry(tid, lp):
        raw = tokenizer.token_bytes(tid)
        return {"token": raw.decode("utf-8", "replace"), "logprob": lp, "bytes": list(raw)}

    out = entry(choice.token_id, choice.logprob)
    out["top_logprobs"] = [entry(t, lp) for t, lp in (choice.top_logprobs or [])]
    return out
