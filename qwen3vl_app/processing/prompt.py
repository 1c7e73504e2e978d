"""OpenAI messages -> `Prompt`: chat template, tokens, vision placeholders, positions.

Media parts arrive here already resolved and preprocessed (`VisionInput`, in message
order); the template renders one placeholder block per part, and `vision_prompt` expands
each block to the right number of pad tokens and computes the M-RoPE rows.
"""
from __future__ import annotations

import numpy as np

from ..engine.base import Prompt, VisionInput
from ..tokenizer import IMAGE_PAD, VIDEO_PAD, ChatTokenizer


class PromptError(ValueError):
    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message)
        self.param = param


def build_prompt(tokenizer: ChatTokenizer, messages: list[dict], vision: list[VisionInput] = ()) -> Prompt:
    ids = tokenizer.encode(tokenizer.render(messages, add_generation_prompt=True))
    if vision:
        from .vision_prompt import expand_vision, mrope_positions

        ids = expand_vision(ids, list(vision), tokenizer.encode)
        return Prompt(ids, mrope_positions(ids, list(vision)), list(vision))
    if IMAGE_PAD in ids or VIDEO_PAD in ids:
        raise PromptError("The text contains image/video placeholder tokens but the request has no media.")
    return Prompt(ids, np.tile(np.arange(len(ids), dtype=np.int64), (3, 1)))


def check_length(prompt: Prompt, limits, max_prompt_tokens: int = 0) -> None:
    n = len(prompt.input_ids)
    limit = min(limits.max_input_tokens, limits.max_context - 1)
    if max_prompt_tokens:
        limit = min(limit, max_prompt_tokens)
    if n > limit:
        raise PromptError(f"The prompt is {n} tokens; this model accepts at most {limit}.")
