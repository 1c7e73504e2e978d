"""Prompt-lookup drafting: guess a slot's next tokens from text it has already seen.

Extraction answers (read the invoice, fill this JSON, rewrite this text) copy long runs of
their prompt, or of themselves.  `Drafter` proposes the next K tokens by matching the
last few tokens of the sequence (prompt + generated) against an earlier occurrence and
copying what followed it; a client's `prediction` (OpenAI's predicted output: the text
the answer is expected to be) is a second, preferred source.  No second model: a draft
costs a dictionary lookup, and a sequence with no match gets no draft (its step is a
plain decode).

The scheduler (`engine.scheduler`) feeds the slot's next token plus the draft to the
engine's verify step (`Engine.verify_batch`), which returns one distribution per fed
token, and chooses tokens position by position with the slot's own sampler: a drafted
token is kept while it is what the sampler chose.  The draft is deterministic, so this
is the standard speculative acceptance rule (accept draft token d with probability
p(d), on rejection sample from p without d) and the output is exactly the
non-speculative one, token for token at temperature 0 and in distribution (same seed,
same tokens) when sampling.

Rules: pure Python over token ids, no engine or request knowledge; the index grows with
the sequence (O(1) per token), a lookup is O(max_n).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

MAX_DRAFT = 32  # the largest K a request or the server may ask for


class _NgramIndex:
    """For every n-gram (min_n..max_n) of a growing sequence, where its occurrences that
    have a continuation end: `find(suffix)` gives the index after the latest one, or after
    the first one at or past `after`."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.ids: list[int] = []
        self._at: dict[tuple[int, ...], list[int]] = {}

    def extend(self, tokens: Iterable[int]) -> None:
        ids, at = self.ids, self._at
        for t in tokens:
            end = len(ids)  # every n-gram ending just before `t` now has a continuation: t
            for n in range(self.min_n, min(self.max_n, end) + 1):
                at.setdefault(tuple(ids[end - n : end]), []).append(end)
            ids.append(int(t))

    def find(self, suffix: Sequence[int], after: int | None = None) -> int | None:
        ends = self._at.get(tuple(suffix))
        if not ends:
            return None
        if after is None:
            return ends[-1]
        i = bisect.bisect_left(ends, after)
        return ends[i] if i < len(ends) else None


class Drafter:
    """One slot's drafter.  `context`: the prompt ids; `prediction`: the client's expected
    output ids (its first tokens are the draft before anything is generated).
    `extend` the generated tokens as they are chosen; `propose(k)` gives up to k tokens."""

    def __init__(self, context: Sequence[int], prediction: Sequence[int] = (), min_n: int = 2, max_n: int = 4) -> None:
        self.max_n = max_n
        self._history = _NgramIndex(min_n, max_n)
        self._history.extend(context)
        self._prediction = list(prediction)
        self._pred_index = _NgramIndex(1, max_n)
        self._pred_index.extend(self._prediction)
        # the prediction index of the next generated token while the output follows it
        self._aligned: int | None = 0 if self._prediction else None
        self._cursor = 0  # where in the prediction the output was when it last left it
        self.generated = 0

    def extend(self, tokens: Iterable[int]) -> None:
        tokens = list(tokens)
        pred = self._prediction
        for t in tokens:
            a = self._aligned
            if a is not None and a < len(pred) and pred[a] == t:
                self._aligned = a + 1
            elif a is not None:
                self._aligned, self._cursor = None, a + 1  # left it: maybe one token replaced
        self.generated += len(tokens)
        self._history.extend(tokens)

    def propose(self, k: int) -> list[int]:
        if k <= 0:
            return []
        pred = self._prediction
        if pred:
            if self._aligned is None:
                # back on the prediction: the first place past where the output left it that
                # the last tokens match, else the very next place (one token was replaced)
                found = self._match(self._pred_index, 2, len(pred), after=self._cursor)
                self._aligned = found if found is not None else self._cursor
                self._cursor += 1  # a guess that fails moves on
            if self._aligned < len(pred):
                return pred[self._aligned : self._aligned + k]
        ids = self._history.ids
        start = self._match(self._history, self._history.min_n, len(ids))
        if start is None:
            return []
        # What followed the match; a run reaching the end of the sequence repeats itself
        # (the draft continues a loop: "a b a b" -> "a b ...").
        end = len(ids)
        draft: list[int] = []
        for j in range(start, start + k):
            draft.append(ids[j] if j < end else draft[j - end])
        return draft

    def _match(self, index: _NgramIndex, min_n: int, limit: int, after: int | None = None) -> int | None:
        """Where the longest suffix of the sequence (max_n down to min_n tokens) was last
        (or first at or past `after`) followed by something in `index`, if anywhere."""
        ids = self._history.ids
        for n in range(min(self.max_n, len(ids)), min_n - 1, -1):
            start = index.find(ids[len(ids) - n :], after)
            if start is not None and start < limit:
                return start
        return None
