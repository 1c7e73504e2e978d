"""The decode loop shared by every engine: prefill, then choose/feed one token at a time.

Runs in the worker's engine thread.  It stops on an end token, at max_tokens, when the
context is full, or as soon as `cancel` is set (checked before every decode step, so a
cancelled request costs at most one more step).  With a `mask` (constrained decoding)
every choice is made among the tokens the grammar allows, and the grammar sees each.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import Engine, Prompt
from .sampling import Choice, Sampler, SamplingParams

if TYPE_CHECKING:
    from .constraints import TokenMask


class Cancel:
    """A flag set from the request greenlet and read in the engine thread.  A plain
    attribute on purpose: gevent-patched threading primitives must not cross threads."""

    __slots__ = ("is_set", "reason")

    def __init__(self):
        self.is_set = False
        self.reason = None

    def set(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self.is_set = True


@dataclass
class Generated:
    choice: Choice
    finish_reason: str | None  # None, "stop" (end token) or "length"
    cached_tokens: int = 0  # on the first token: prompt tokens the prefill reused

    @property
    def token_id(self) -> int:
        return self.choice.token_id


def max_new_tokens(engine: Engine, prompt: Prompt, requested: int) -> int:
    return max(0, min(requested, engine.limits.max_context - len(prompt.input_ids)))


def generate(
    engine: Engine,
    prompt: Prompt,
    params: SamplingParams,
    eos_ids,
    cancel: Cancel,
    constrain: Callable[[], TokenMask] | None = None,
) -> Generator[Generated, None, None]:
    """`constrain` builds the grammar's mask; called here, in the engine thread, because
    its first use in a worker builds the tokenizer trie (seconds)."""
    budget = max_new_tokens(engine, prompt, params.max_tokens)
    if budget == 0 or cancel.is_set:
        return
    sampler = Sampler(params, prompt.input_ids)
    out = engine.prefill(prompt)
    cached = out.cached_tokens
    mask = constrain() if constrain is not None and out.logits is not None else None
    for produced in range(1, budget + 1):
        if out.logits is None:
            choice = Choice(int(out.token_id or 0))
        elif mask is None:
            choice = sampler.choose(out.logits)
        else:
            choice = sampler.choose(out.logits, mask.allowed())
            mask.accept(choice.token_id)
        if choice.token_id in eos_ids:
            yield Generated(choice, "stop", cached)
            return
        yield Generated(choice, "length" if produced == budget else None, cached)
        if produced == budget or cancel.is_set:
            return
        out = engine.decode(choice.token_id)
