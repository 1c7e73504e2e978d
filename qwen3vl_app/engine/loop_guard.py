"""The repetition-loop detector: has the output been one token cycle, over and over, for
longer than a set span?

Rules:
- Pure token ids, no text: it runs in the engine thread for every token of a slot that
  asked for it (the scheduler feeds it through `engine/steering.py`), in O(max_period)
  per token, with no allocation.
- A loop is a *cycle*: the last `span` tokens (at least) are periodic with some period
  p <= max_period, i.e. token[i] == token[i - p] throughout, and the cycle came round
  at least `MIN_REPEATS` times.  Anything that varies inside the window (the numbers of
  a table, the items of a list, a counter) breaks the run; only text that is literally
  the same cycle again and again for the whole span counts.
- The defaults are set so that legitimate repetition does not trip it: a document's
  repeated lines (a form's blank `Signature: ______` rows, a table of identical rows)
  run to a few hundred tokens at most, while a real loop runs until max_tokens.  At the
  default span of 512 tokens, a line of ~10 tokens has to repeat 50 times in a row.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SPAN = 512  # tokens the cycle must cover before the guard stops the generation
DEFAULT_MAX_PERIOD = 128  # longest cycle looked for, in tokens
MIN_REPEATS = 4  # a cycle must have come round at least this often, whatever the span
MIN_SPAN = 16


@dataclass(frozen=True)
class LoopConfig:
    span: int = DEFAULT_SPAN
    max_period: int = DEFAULT_MAX_PERIOD


@dataclass(frozen=True)
class LoopFound:
    period: int  # tokens in one cycle
    span: int  # tokens of output that are that cycle, repeated


class LoopDetector:
    """Feed every generated token to `push`; it returns a `LoopFound` the first time the
    output is one cycle repeated for at least `span` tokens, else None."""

    __slots__ = ("config", "_tail", "_runs", "_n")

    def __init__(self, config: LoopConfig = LoopConfig()):
        self.config = config
        size = config.max_period + 1
        self._tail = [-1] * size  # ring buffer of the last max_period + 1 tokens
        # _runs[p]: how many of the latest positions i had token[i] == token[i - p]
        self._runs = [0] * size
        self._n = 0

    def push(self, token: int) -> LoopFound | None:
        cfg = self.config
        size = cfg.max_period + 1
        n = self._n
        tail, runs = self._tail, self._runs
        found = None
        for p in range(1, min(cfg.max_period, n) + 1):
            if tail[(n - p) % size] == token:
                runs[p] += 1
                covered = runs[p] + p  # the periodic stretch includes the first cycle
                if found is None and covered >= cfg.span and covered >= MIN_REPEATS * p:
                    found = LoopFound(p, covered)
            else:
                runs[p] = 0
        tail[n % size] = token
        self._n = n + 1
        return found
