"""What an engine may reuse from earlier requests: vision-encoder outputs and a prompt prefix.

A chat client re-sends the whole conversation every turn.  Two things make the follow-up
cheap, and both must never serve the wrong data:

- `VisionCache`: encoder outputs per image/video, keyed by a SHA-256 of the preprocessed
  pixels, the grid and the kind (so two images that differ in one pixel never share an
  entry) and by the prompt's cache scope (`scoped_vision_key`), LRU-bounded in bytes.
- `reusable_prefix`: how many leading tokens of a new prompt have KV an engine still
  holds.  Token ids alone are not enough -- every image's placeholder tokens look the same
  -- so each vision block also carries its key; a block that differs, or that the
  boundary would cut, is recomputed from its start.

Both are scoped (`Prompt.cache_scope`): work cached for one API key (and `cache_salt`) is
never reused for another, so neither `cached_tokens` nor a faster answer tells one client
what another sent.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import metrics
from ..model_constants import IMAGE_PAD, VIDEO_PAD
from .base import Prompt, VisionInput


def vision_key(item: VisionInput) -> bytes:
    """Identity of one preprocessed media item (computed once, kept on the item)."""
    cached = getattr(item, "_reuse_key", None)
    if cached is None:
        h = hashlib.sha256()
        h.update(item.kind.encode())
        h.update(repr(tuple(item.grid_thw)).encode())
        h.update(repr(item.pixel_values.shape).encode())
        h.update(np.ascontiguousarray(item.pixel_values).data)
        cached = h.digest()
        item._reuse_key = cached  # type: ignore[attr-defined]
    return cached


def scoped_vision_key(item: VisionInput, scope: bytes) -> bytes:
    """The vision cache's key: the item's identity within one cache scope."""
    return vision_key(item) + scope


class VisionCache:
    """LRU of encoder outputs, bounded by `max_bytes` (what the caller says an entry
    weighs).  0 turns it off.  Used from the engine thread only; the lock makes stray
    calls from elsewhere safe, not fast."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Any | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
        metrics.vision_cache(hit is not None)
        return None if hit is None else hit[0]

    def put(self, key: bytes, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            while self._entries and self.bytes + nbytes > self.max_bytes:
                _, (_, size) = self._entries.popitem(last=False)
                self.bytes -= size
            self._entries[key] = (value, nbytes)
            self.bytes += nbytes
        metrics.VISION_CACHE_BYTES.set(self.bytes)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class VisionSpan:
    """Tokens [start, end) of the prompt that carry one media item's embeddings."""

    start: int
    end: int
    key: bytes


def vision_spans(input_ids: Sequence[int], vision: Sequence[VisionInput]) -> list[VisionSpan]:
    """One span per media item, in prompt order: from its first to its last placeholder
    (a video's timestamp text between its blocks is inside; those are compared as ids)."""
    spans = []
    i = 0
    n = len(input_ids)
    for item in vision:
        pad = IMAGE_PAD if item.kind == "image" else VIDEO_PAD
        while i < n and input_ids[i] != pad:
            i += 1
        start, left = i, item.num_tokens
        while i < n and left:
            if input_ids[i] == pad:
                left -= 1
            i += 1
        spans.append(VisionSpan(start, i, vision_key(item)))
    return spans


@dataclass
class CachedSequence:
    """Tokens whose KV an engine holds, with the vision spans among them."""

    ids: list[int]
    spans: list[VisionSpan]
    scope: bytes = b""  # the cache scope of the prompt that filled it

    @classmethod
    def of(cls, prompt: Prompt) -> CachedSequence:
        return cls(list(prompt.input_ids), vision_spans(prompt.input_ids, prompt.vision), prompt.cache_scope)


def reusable_prefix(cached: CachedSequence | None, prompt: Prompt, spans: list[VisionSpan]) -> int:
    """How many leading prompt tokens can keep their cached KV.  At least one token is
    always left to run, so the prefill yields the next-token logits.  Nothing is reused
    across cache scopes."""
    if cached is None or cached.scope != prompt.cache_scope:
        return 0
    limit = min(len(cached.ids), len(prompt.input_ids) - 1)
    p = 0
    ids = prompt.input_ids
    while p < limit and cached.ids[p] == ids[p]:
        p += 1
    held = {(s.start, s.end): s.key for s in cached.spans}
    for span in spans:
        if span.start >= p:
            break
        if span.end > p or held.get((span.start, span.end)) != span.key:
            return span.start  # cut inside a block, or another image: run the block again
    return p
