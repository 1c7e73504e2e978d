"""The one interface both engines implement, and the data they exchange.

An engine knows how to run the model over numbered slots, each a sequence with its own
KV cache: a prefill of a whole `Prompt` into a slot, then decode steps that advance
several slots by one token each.  One sequence is a batch of one (slot 0).  Everything
else -- sampling, penalties, stop conditions, constraints, cancellation -- lives in
`engine.scheduler` and is written once, so every engine behaves the same for the same
logits.  Engines do no HTTP and never see a request.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .sampling import DevicePlan


@dataclass
class VisionInput:
    """One preprocessed image or video, ready for the vision encoder."""

    kind: str  # "image" or "video"
    pixel_values: np.ndarray  # float32 [grid_t*grid_h*grid_w, 3*2*16*16], merge-group order
    grid_thw: tuple[int, int, int]
    timestamps: list[float] = field(default_factory=list)  # video: one per temporal patch
    # Where it came from (for /tokenize and grounding; engines ignore these): the original
    # image's or video frame's (width, height) as displayed (EXIF orientation applied), and
    # for a video the frames sampled from it (before padding to an even count).
    source_size: tuple[int, int] | None = None
    frames: int = 0

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
    # Who may reuse this prompt's cached work (prefix KV, vision-encoder outputs): only a
    # prompt of the same scope (serving.cache_scope: the API key and cache_salt).
    cache_scope: bytes = b""

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
    """What the engine can honour.  `logits`: its steps return full-vocabulary logits, so
    the host samples (temperature, penalties, logprobs, grammars); False means the device
    picks each token itself (greedy) and the API names the sampling fields it ignored."""

    logits: bool = True
    prefix_cache: bool = False  # reuses the KV of a previous prompt's leading tokens
    verify: bool = False  # verify_batch/commit_slot: several tokens per step (speculative decoding)
    # Device heads (BM1684X --do_sample builds): the engine can choose the tokens of a request
    # `sampling.device_plan` accepts on the device, giving up to this many candidates per
    # step (0: none; the host samples from the logits)
    device_candidates: int = 0


@dataclass
class StepOutput:
    """Result of a prefill or decode step: full-vocabulary logits, the token the device
    already chose (greedy-only engines), or a device head's candidates for a slot with a
    device plan (`Engine.plan_slot`)."""

    logits: np.ndarray | None = None  # float32 [vocab]
    token_id: int | None = None
    cached_tokens: int = 0  # prefill only: prompt tokens whose KV was reused, not computed
    # (probabilities, token ids), most likely first: the host draws one (Sampler.draw)
    candidates: tuple[np.ndarray, np.ndarray] | None = None


class Engine(abc.ABC):
    """A loaded model.  Not thread-safe: one OS thread per worker drives it (the scheduler's).

    The seam is three methods over slots `0 .. max_batch-1`:
    - `prefill_slot(slot, prompt)` runs a prompt into that slot's KV cache.  A slot keeps
      its KV after its sequence ends; an engine with `capabilities.prefix_cache` reuses the
      leading tokens it still holds (`reuse.reusable_prefix`) and reports how many in
      `StepOutput.cached_tokens`.
    - `decode_batch({slot: token})` feeds each slot its next token at its next position,
      all in one device step, and returns each slot's next distribution.
    - `release_slot(slot)` forgets what the slot holds (after a failed step, or when its
      tokens must not be reused).
    An engine with `capabilities.verify` also runs speculative steps (`engine.speculative`):
    - `verify_batch({slot: [token, *draft]})` feeds each slot several tokens at its next
      positions in one step and returns one distribution per fed token (after it);
    - `commit_slot(slot, keep)` then keeps the first `keep` fed tokens of that slot's last
      verify step (at least 1) and drops the KV of the rest.  Every slot of a verify step
      is committed before the next step.
    - `plan_slot(slot, plan)` (engines with device heads) says, before a prefill, whether
      the slot's steps end in a device head's candidates instead of logits.
    """

    name: str = "?"
    device: str = "?"
    limits: Limits
    capabilities: Capabilities = Capabilities()
    max_batch: int = 1  # slots one decode step can advance
    max_draft: int = 32  # draft tokens one verify step can take (with `capabilities.verify`)

    @abc.abstractmethod
    def prefill_slot(self, slot: int, prompt: Prompt) -> StepOutput:
        """Run the whole prompt (vision included) into `slot`'s KV cache, keeping the prefix
        it can reuse; the next-token distribution after the prompt."""

    @abc.abstractmethod
    def decode_batch(self, tokens: dict[int, int]) -> dict[int, StepOutput]:
        """One decode step over several slots: feed each slot its token at its next position."""

    def verify_batch(self, tokens: dict[int, list[int]]) -> dict[int, list[StepOutput]]:
        """One step feeding each slot its list of tokens (its next token, then a draft);
        one output per fed token.  Only with `capabilities.verify`."""
        raise NotImplementedError(f"engine {self.name} cannot verify drafts")

    def commit_slot(self, slot: int, keep: int) -> None:
        """Keep the first `keep` tokens `slot` was fed by the last `verify_batch`."""
        raise NotImplementedError(f"engine {self.name} cannot verify drafts")

    def release_slot(self, slot: int) -> None:  # noqa: B027 -- optional: engines that reuse nothing keep nothing
        """Forget the tokens `slot` holds, so nothing of them is reused."""

    def plan_slot(self, slot: int, plan: DevicePlan | None) -> None:  # noqa: B027 -- optional: only engines with device heads
        """How `slot`'s next sequence ends its steps, set before its prefill: a device head
        (`StepOutput.candidates`) or None (logits).  Called for every admission; a plan only
        when `capabilities.device_candidates` > 0."""

    def close(self) -> None:  # noqa: B027 -- optional hook: engines without resources need none
        """Release weights and device memory."""


class ModelFolderError(Exception):
    """A model folder that no engine can serve, or that its engine finds incomplete."""


@dataclass(frozen=True)
class EngineSpec:
    """What an engine package exports as `SPEC` (light: importing it loads no model code).

    - `settings`: a frozen dataclass of the engine's own options, each field made with
      `options.opt`; its flags and `QWEN3VL_<option_prefix><FIELD>` variables join the
      server's, and `Settings.engine_settings(name)` hands the object to `load`.
    - `claims(model_dir)`: True when the folder is this engine's kind (the registry asks
      the engines in its order); raise `ModelFolderError` for a folder of its kind that
      cannot work.
    - `load(model_dir, engine_settings, settings)`: build the engine (imports its heavy
      module here, so a worker imports only the engine it runs).
    """

    name: str
    settings: type
    claims: Callable[[Path], bool]
    load: Callable[[Path, Any, Any], Engine]
    option_prefix: str = ""
