"""Host-side token choice from logits (numpy): penalties, temperature, top-k, top-p, seed.

Both engines share it, so the same logits and the same seed give the same token on
either.  Semantics follow what clients expect:
- repetition_penalty (Hugging Face): over prompt + generated ids, positive logits divided,
  negative multiplied.
- presence/frequency penalty (OpenAI): over generated ids, subtract
  `presence * (count > 0) + frequency * count`.
- logit_bias (OpenAI): added to the raw logits of the named token ids.
- an `allowed` mask (constrained decoding) is applied last, before temperature: every
  other token gets -inf, so no setting can pick one.
- temperature 0 means greedy.  Log-probabilities are of the penalised distribution before
  temperature and truncation, like most OpenAI-compatible servers report them.
- order: most likely first, equal logits in token-id order (top-k keeps the lowest ids
  among equal logits at its edge), as the BM1684X's sort-based heads order them.

An engine with device heads (`Capabilities.device_candidates`) can choose the tokens of a
request `device_plan` accepts on the device: penalty, temperature and top-k run there, and
`Sampler.draw` applies top-p and draws among the few candidates with the same seeded
generator, so the request gets the draws `choose` would make from the same logits
(docs/sampling-on-device.md says where float rounding can still differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5 or self.top_k == 1


@dataclass(frozen=True)
class DevicePlan:
    """How a device head chooses a request's tokens: greedy_head (greedy, no penalty), or
    sample_head's `top_k` candidates after `repetition_penalty` and `temperature` (greedy
    with a penalty is its top-1)."""

    greedy: bool
    temperature: float = 1.0
    top_k: int = 1
    repetition_penalty: float = 1.0


# Penalties outside this range overflow float32 on the device (the host clamps them: _finite).
DEVICE_PENALTY_RANGE = (1e-2, 1e2)


def device_plan(params: SamplingParams, constrained: bool, candidates: int) -> DevicePlan | None:
    """The device plan giving this request the draws `Sampler.choose` would make, or None
    when its tokens need the full logits on the host: logprobs, logit_bias, presence or
    frequency penalties, a grammar (`constrained`), top-k off or wider than the head's
    `candidates` (0: the engine has no heads), or an extreme repetition penalty."""
    p = params
    if candidates <= 0 or constrained or p.logprobs or p.logit_bias or p.presence_penalty or p.frequency_penalty:
        return None
    lo, hi = DEVICE_PENALTY_RANGE
    if p.repetition_penalty != 1.0 and not lo <= p.repetition_penalty <= hi:
        return None
    if p.greedy:
        return DevicePlan(greedy=True, repetition_penalty=p.repetition_penalty)
    if not 0 < p.top_k <= candidates:
        return None
    return DevicePlan(greedy=False, temperature=p.temperature, top_k=p.top_k, repetition_penalty=p.repetition_penalty)


@dataclass
class Choice:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


class Sampler:
    def __init__(self, params: SamplingParams, prompt_ids: list[int]):
        self.p = params
        self.rng = np.random.default_rng(params.seed)
        self._seen = np.unique(np.asarray(prompt_ids, dtype=np.int64)) if params.repetition_penalty != 1.0 else None
        self._counts: dict[int, int] = {}

    def choose(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> Choice:
        p = self.p
        x = np.array(logits, dtype=np.float32, copy=True).reshape(-1)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            if p.logit_bias:
                self._bias(x)
            self._penalise(x)
            _finite(x)
            if allowed is not None:
                _restrict(x, allowed)
            if p.greedy:
                token = int(np.argmax(x))
            else:
                token = self._sample(_finite(x / np.float32(p.temperature)))
        choice = Choice(token)
        if p.logprobs:
            lp = _log_softmax(x)
            choice.logprob = float(lp[token])
            if p.top_logprobs:
                k = p.top_logprobs
                idx = np.argpartition(-lp, k - 1)[:k]
                idx = idx[np.argsort(-lp[idx], kind="stable")]
                choice.top_logprobs = [(int(i), float(lp[i])) for i in idx]
        self._record(token)
        return choice

    def draw(self, probs: np.ndarray, ids: np.ndarray) -> Choice:
        """The token among a device head's candidates (most likely first; probabilities after
        penalty, temperature and top-k): the host's top-p and the seeded draw, as `choose`
        makes them from the full logits (it never applies logit_bias, presence/frequency
        penalties, masks or logprobs: `device_plan` keeps those requests on the host)."""
        p = self.p
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if p.greedy or ids.size == 1:
            token = int(ids[0])
        else:
            k = min(ids.size, p.top_k)
            probs = np.asarray(probs, dtype=np.float64).reshape(-1)[:k]
            token = self._draw(ids[:k], probs / probs.sum())
        self._record(token)
        return Choice(token)

    def _bias(self, x: np.ndarray) -> None:
        ids = np.fromiter((t for t, _ in self.p.logit_bias), dtype=np.int64)
        keep = ids < x.size
        x[ids[keep]] += np.fromiter((b for _, b in self.p.logit_bias), dtype=np.float32)[keep]

    def _penalise(self, x: np.ndarray) -> None:
        p = self.p
        if p.repetition_penalty != 1.0:
            ids = self._seen_ids()
            vals = x[ids]
            x[ids] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and self._counts:
            ids = np.fromiter(self._counts.keys(), dtype=np.int64)
            counts = np.fromiter(self._counts.values(), dtype=np.float32)
            x[ids] -= p.presence_penalty + p.frequency_penalty * counts

    def _seen_ids(self) -> np.ndarray:
        assert self._seen is not None  # set whenever repetition_penalty is on
        if not self._counts:
            return self._seen
        return np.union1d(self._seen, np.fromiter(self._counts.keys(), dtype=np.int64))

    def _record(self, token: int) -> None:
        self._counts[token] = self._counts.get(token, 0) + 1

    def _sample(self, x: np.ndarray) -> int:
        p = self.p
        k = p.top_k if p.top_k and p.top_k > 0 else x.size
        if k < x.size:
            cand = _top_k(x, k)
            probs = _softmax(x[cand])
        elif p.top_p < 1.0:
            cand, probs = _nucleus_head(x, p.top_p)
        else:  # nothing to cut: no order needed (sorting 152k logits cost ~20 ms a token)
            return int(self.rng.choice(x.size, p=_softmax(x)))
        return self._draw(cand, probs)

    def _draw(self, cand: np.ndarray, probs: np.ndarray) -> int:
        """Top-p over candidates most likely first (the nucleus keeps the token that crosses
        top_p), then one seeded draw."""
        if self.p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), self.p.top_p) + 1)
            cand, probs = cand[:keep], probs[:keep] / probs[:keep].sum()
        return int(cand[self.rng.choice(len(cand), p=probs)])


_F32 = np.finfo(np.float32)


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    """The `k` largest logits' ids, most likely first; equal logits in id order, and at the
    cut the lowest ids among equal logits (what a stable sort keeps)."""
    cand = np.argpartition(-x, k - 1)[:k]
    edge = x[cand].min()
    if np.count_nonzero(x >= edge) > k:  # logits equal to the k-th straddle the cut
        above = np.flatnonzero(x > edge)
        cand = np.concatenate([above, np.flatnonzero(x == edge)[: k - above.size]])
    return cand[np.lexsort((cand, -x[cand]))]


def _nucleus_head(x: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The most likely tokens, most likely first, with their probabilities over the whole
    vocabulary: enough of them to hold more than `top_p` of the mass, so the nucleus is a
    prefix.  Only that head is sorted.  Every token at least 1e-3 (else 1e-6) times as
    likely as the likeliest is a prefix of the sorted order, ties included; a trained
    model's peaked distribution has its nucleus in the first, a few dozen tokens (sorting
    all 152k cost ~17 ms a token); a flat one falls back to the full sort."""
    probs = _softmax(x)
    top = probs.max()
    for floor in (1e-3, 1e-6):
        head = np.flatnonzero(probs >= top * floor)
        if probs[head].sum() > top_p + 1e-9:
            break
    else:
        head = np.arange(x.size)
    head = head[np.argsort(-x[head], kind="stable")]
    return head, probs[head]


def _finite(x: np.ndarray) -> np.ndarray:
    """Clamp in place what extreme but valid parameters overflow to (a repetition_penalty of
    5e-324 divides logits to inf, and inf - inf is NaN in the softmax: a 500, found by fuzzing)."""
    if not np.isfinite(x).all():
        np.nan_to_num(x, copy=False, nan=float(_F32.min), posinf=float(_F32.max), neginf=float(_F32.min))
    return x


def _restrict(x: np.ndarray, allowed: np.ndarray) -> None:
    """-inf for every token the mask forbids (ids past the mask's end included)."""
    n = min(x.size, allowed.size)
    np.copyto(x[:n], np.float32(-np.inf), where=~allowed[:n])
    x[n:] = -np.inf


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp((x - x.max()).astype(np.float64))
    return e / e.sum()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())
