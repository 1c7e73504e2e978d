"""FakeEngine: a FAKE model for the in-process HTTP-contract tests.

It implements the real `Engine` interface (qwen3vl_app/engine/base.py), so everything
around it is the real code -- the runner and its engine thread, the scheduler's decode
loop, sampling, stop strings, detokenisation, the serving layer and the HTTP layer.  Only the
numbers are made up: no weights, no device.

Its logits are deterministic.  Each step gives a fixed set of readable word tokens of the
real tokenizer a pseudo-random N(0, 1) logit seeded by the previous token, plus a bonus
for that previous token itself (so greedy decoding tends to repeat, like an untrained
model, and penalties visibly change it) while sampling at temperature 1 wanders.
Every other token, end tokens included, sits far below -- a generation runs to
max_tokens unless `eos_after` says when to end.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from qwen3vl_app.engine.base import Capabilities, Engine, Limits, Prompt, StepOutput
from qwen3vl_app.tokenizer import ChatTokenizer

N_WORDS = 400
REPEAT_BONUS = 5.0
FLOOR = -30.0


@functools.lru_cache(maxsize=4)
def readable_tokens(tokenizer: ChatTokenizer) -> np.ndarray:
    """Ids of N_WORDS plain ASCII word tokens with a leading space (" the", " house")."""
    ids = []
    for tid in sorted(tokenizer.tok.get_vocab().values()):
        raw = tokenizer.token_bytes(tid)
        if raw[:1] == b" " and 3 <= len(raw) <= 9 and raw[1:].isalpha() and raw.isascii():
            ids.append(tid)
            if len(ids) == N_WORDS:
                break
    assert len(ids) == N_WORDS, "the tokenizer has too few word tokens for the fake engine"
    return np.array(ids, dtype=np.int64)


class FakeEngineFailure(RuntimeError):
    """What a failing step raises (a broken device or model would raise RuntimeError)."""


class FakeEngine(Engine):
    name = "fake"
    device = "fake"
    max_batch = 8

    def __init__(
        self,
        tokenizer: ChatTokenizer,
        max_context: int = 2048,
        *,
        eos_after: int | None = None,
        logits: bool = True,
        prefill_delay: float = 0.0,
        step_delay: float = 0.0,
    ):
        self.limits = Limits(max_context=max_context, max_input_tokens=max_context)
        self.capabilities = Capabilities(logits=logits)
        self.vocab_size = tokenizer.vocab_size
        self.words = readable_tokens(tokenizer)
        self._word_set = frozenset(self.words.tolist())
        self.eos_id = min(tokenizer.eos_ids)
        self.eos_after = eos_after  # end with the end token after this many generated tokens
        self.prefill_delay = prefill_delay  # seconds, slept in the engine thread
        self.step_delay = step_delay
        self.fail_next: str | None = None  # "prefill" or "decode": that step fails once
        self.prompts: list[Prompt] = []  # every prompt prefilled, for the tests to inspect
        self.decode_steps = 0  # decode_batch calls
        self.closed = False
        self._produced: dict[int, int] = {}  # per slot

    def prefill_slot(self, slot: int, prompt: Prompt) -> StepOutput:
        self._maybe_fail("prefill")
        self.prompts.append(prompt)
        self._produced[slot] = 0
        time.sleep(self.prefill_delay)
        return self._step(slot, prompt.input_ids[-1] if prompt.input_ids else 0)

    def decode_batch(self, tokens: dict[int, int]) -> dict[int, StepOutput]:
        self._maybe_fail("decode")
        self.decode_steps += 1
        time.sleep(self.step_delay)
        return {slot: self._step(slot, token_id) for slot, token_id in tokens.items()}

    def close(self) -> None:
        self.closed = True

    def _maybe_fail(self, step: str) -> None:
        if self.fail_next == step:
            self.fail_next = None
            raise FakeEngineFailure(f"fake engine failure in {step}")

    def _step(self, slot: int, previous: int) -> StepOutput:
        self._produced[slot] += 1
        logits = np.full(self.vocab_size, FLOOR, dtype=np.float32)
        if self.eos_after is not None and self._produced[slot] > self.eos_after:
            logits[self.eos_id] = 10.0
        else:
            logits[self.words] = np.random.default_rng(previous).standard_normal(len(self.words))
            if previous in self._word_set:
                logits[previous] += REPEAT_BONUS
        if not self.capabilities.logits:  # a device that picks the token itself (greedy)
            return StepOutput(token_id=int(np.argmax(logits)))
        return StepOutput(logits=logits)
