"""The one interface both engines implement, and the data they exchange.

An engine knows how to run the model: a prefill over a whole `Prompt`, then one decode
step per token.  Everything else -- sampling, stop conditions, cancellation, time limits --
lives in `engine.decode` and is shared, so the torch and bm1684x engines behave the
same for the same logits.  Engines do no HTTP and never see a request.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np


@dataclass
class VisionInput:
    """One preprocessed image or video, ready for the vision encoder."""

    kind: str  # "image" or "video"
    pixel_values: np.ndarray  # float32 [grid_t*grid_h*grid_w, 3*2*16*16], merge-group order
    grid_thw: tuple[int, int, int]
    timestamps: list[float] = field(default_factory=list)  # video: one per temporal patch

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w // 4


@dataclass
class Prompt:
    """Token ids with the vision placeholders already expanded, and M-RoPE positions."""

    input_ids: list[int]
    position_ids: np.ndarray  # int64 [3, len(input_ids)]
    vision: list[VisionInput] = field(default_factory=list)  # in prompt order

    @property
    def next_position(self) -> int:
        """Position of the first generated token (the same on all three rows)."""
        if len(self.input_ids) == 0:
            return 0
        return int(self.position_ids.max()) + 1


@dataclass(frozen=True)
class Limits:
    max_context: int  # prompt + generated tokens
    max_input_tokens: int  # longest prompt one prefill accepts
    max_pixels: int | None = None  # per image, when the vision encoder is compiled for a size


@dataclass(frozen=True)
class Capabilities:
    """What the engine can honour.  `logits` False means the device picks tokens itself
    (greedy), so sampling parameters cannot be applied and the API says so."""

    logits: bool = True
    prefix_cache: bool = False  # reuses the KV of a previous prompt's leading tokens

    @property
    def sampling(self) -> bool:
        return self.logits


@dataclass
class StepOutput:
    """Result of a prefill or decode step: full-vocabulary logits, or the token the
    device already chose."""

    logits: np.ndarray | None = None  # float32 [vocab]
    token_id: int | None = None
    cached_tokens: int = 0  # prefill only: prompt tokens whose KV was reused, not computed


class Engine(abc.ABC):
    """A loaded model.  Not thread-safe: one OS thread per worker drives it.

    `prefill`/`decode` serve one sequence at a time.  An engine that can run several
    sequences in one decode step declares `max_batch > 1` and implements the slot methods
    beside them (`engine.scheduler` drives those): each slot index owns its own KV cache,
    kept after its sequence ends until the next `prefill_slot` into that slot replaces it.
    """

    name: str = "?"
    device: str = "?"
    limits: Limits
    capabilities: Capabilities = Capabilities()
    max_batch: int = 1  # sequences one decode step can advance (slots)

    @abc.abstractmethod
    def prefill(self, prompt: Prompt) -> StepOutput:
        """Run the whole prompt (vision included); reset any previous KV cache."""

    @abc.abstractmethod
    def decode(self, token_id: int) -> StepOutput:
        """Feed one token at the next position; return the next distribution."""

    def prefill_slot(self, slot: int, prompt: Prompt) -> StepOutput:
        """Run the whole prompt into `slot`'s KV cache (replacing what it held)."""
        raise NotImplementedError(f"engine {self.name} serves one sequence at a time")

    def decode_batch(self, tokens: dict[int, int]) -> dict[int, StepOutput]:
        """One decode step over several slots: feed each slot its token at its next position."""
        raise NotImplementedError(f"engine {self.name} serves one sequence at a time")

    def close(self) -> None:  # noqa: B027 -- optional hook: engines without resources need none
        """Release weights and device memory."""
