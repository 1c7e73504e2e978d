"""Per-slot steering of one generation: the thinking budget and the loop guard.

Rules:
- Built by the request greenlet (`for_request`), then touched only by the engine thread:
  the scheduler (`engine/scheduler.py`, the one decode loop) asks `forced()` before it
  chooses a slot's next token and reports every token to `observe()`.  So the same code
  steers every engine: a host-sampling engine's logits and a device-greedy engine's
  token are both overridden by a forced token the same way, and the forced token is what
  the next decode step feeds into that slot's KV cache.
- The thinking budget counts tokens generated while the model thinks (after `<think>`,
  before `</think>`).  When it is spent the slot is fed `CLOSE_TEXT` (a newline,
  `</think>`, a blank line: the template's own closing) one token per step, and then the
  model answers.  A model that closes its thinking itself is left alone.
- `thinking` says whether the output is still inside the thinking: a grammar (response
  format, forced tool call) applies to the answer only, so the scheduler holds the
  slot's token mask back until the thinking is closed.
- `reasoning_tokens` (tokens before and including `</think>`) is read by the request
  greenlet once the generation ended; it is only ever incremented.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .loop_guard import LoopConfig, LoopDetector, LoopFound

THINK_START = 151667  # <think>
THINK_END = 151668  # </think>
CLOSE_TEXT = "\n</think>\n\n"  # what a spent budget feeds the model (tokenized by the template's tokenizer)

LOOP_STOP = "loop_guard"  # Generated.stopped_by when the loop guard ended a generation


def prompt_opens_thinking(ids) -> bool:
    """Whether the prompt leaves the model inside `<think>`: the generation prompt of a
    Thinking template ends with `<think>` and a newline (`enable_thinking: false` on a
    hybrid template closes it again with `</think>`)."""
    tail = list(ids[-4:])
    if THINK_START not in tail:
        return False
    last_open = len(tail) - 1 - tail[::-1].index(THINK_START)
    return THINK_END not in tail[last_open:]


@dataclass
class Steering:
    """What the scheduler consults for one slot (see the module docstring)."""

    thinking: bool = False  # inside <think> now
    thinking_model: bool = False  # its reasoning_tokens are reported (a Thinking model)
    budget: int | None = None  # thinking tokens allowed (None: unbounded)
    close_ids: tuple[int, ...] = ()
    loop: LoopDetector | None = None
    reasoning_tokens: int = 0
    loop_found: LoopFound | None = None
    _queue: list[int] = field(default_factory=list)
    _produced: int = 0
    _spent: int = 0  # thinking tokens so far

    def forced(self) -> int | None:
        """The token this step must emit instead of choosing one, or None."""
        if self._queue:
            return self._queue.pop(0)
        if self.thinking and self.budget is not None and self._spent >= self.budget and self.close_ids:
            self._queue = list(self.close_ids)
            return self._queue.pop(0)
        return None

    @property
    def holds_mask(self) -> bool:
        """The grammar waits: still thinking, or the forced closing is not all out."""
        return self.thinking or bool(self._queue)

    def observe(self, token: int) -> str | None:
        """Every token the slot emits, in order; returns why the generation must stop now
        (`LOOP_STOP`), else None."""
        self._produced += 1
        if self.thinking:
            self.reasoning_tokens += 1
            if token == THINK_END:
                self.thinking = False
            else:
                self._spent += 1
        elif token == THINK_START and self._produced == 1:  # a hybrid template: the model opens it
            self.thinking = True
            self.reasoning_tokens += 1
        if self.loop is not None:
            found = self.loop.push(token)
            if found is not None:
                self.loop_found = found
                return LOOP_STOP
        return None


def build(
    prompt_ids,
    thinking_model: bool,
    budget: int | None,
    close_ids: tuple[int, ...],
    loop: LoopConfig | None,
) -> Steering | None:
    """A slot's steering, or None when there is nothing to steer or count."""
    thinking = thinking_model and prompt_opens_thinking(prompt_ids)
    if not thinking_model and loop is None:
        return None
    return Steering(
        thinking=thinking,
        thinking_model=thinking_model,
        budget=budget if thinking_model else None,
        close_ids=close_ids,
        loop=LoopDetector(loop) if loop is not None else None,
    )
