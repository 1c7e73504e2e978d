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
class ChatJob:
    prompt: Prompt
    params: SamplingParams
    stops: list[str] = field(default_factory=list)
    time_limit: float = 600.0


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
    """Yield ADMITTED, Delta..., then one Finish (PING in between when ping_every is set)."""
    cancel = Cancel()
    produced = 0
    finish = "length"
    with runner.turn() as engine:
        yield ADMITTED
        deadline = time.monotonic() + job.time_limit
        gen = generate(engine, job.prompt, job.params, tokenizer.eos_ids, cancel)
        detok = Detokenizer(tokenizer)
        stops = StopMatcher(job.stops)
        try:
            first = True
            while True:
                if first and ping_every:
                    pending = runner.spawn(next, gen, None)
                    while not pending.ready():
                        pending.wait(ping_every)
                        if not pending.ready():
                            yield PING
                    item = pending.get()
                else:
                    item = runner.call(next, gen, None)
                first = False
                if item is None:
                    break
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
                if time.monotonic() > deadline:
                    finish = "length"
                    break
        finally:
            cancel.set()
            runner.call(gen.close)
    yield Finish(finish, len(job.prompt.input_ids), produced)


def _logprob_entry(tokenizer, choice) -> dict:
    def entry(tid, lp):
        raw = tokenizer.token_bytes(tid)
        return {"token": raw.decode("utf-8", "replace"), "logprob": lp, "bytes": list(raw)}

    out = entry(choice.token_id, choice.logprob)
    out["top_logprobs"] = [entry(t, lp) for t, lp in (choice.top_logprobs or [])]
    return out
