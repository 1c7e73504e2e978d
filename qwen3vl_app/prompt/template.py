"""OpenAI messages -> `Prompt`: chat template, tokens, vision placeholders, positions.

Media parts arrive here already resolved and preprocessed (`VisionInput`, in message
order); the template renders one placeholder block per part, and `vision` expands
each block to the right number of pad tokens and computes the M-RoPE rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..engine.base import Prompt, VisionInput
from ..errors import PromptError
from ..model_constants import END_OF_TEXT, IMAGE_PAD, VIDEO_PAD
from ..tokenizer import ChatTokenizer
from .vision import expand_vision, mrope_positions

# Typed into a message these would only confuse the placeholder expansion; refuse them
# clearly (other control tokens in client text are tokenized as plain text).
VISION_TOKEN_TEXTS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def build_prompt(
    tokenizer: ChatTokenizer,
    messages: list[dict],
    vision: Sequence[VisionInput] = (),
    tools: list[dict] | None = None,
    template_kwargs: dict | None = None,
) -> Prompt:
    _refuse_typed_vision_tokens(messages)
    ids = tokenizer.encode_chat(messages, add_generation_prompt=True, tools=tools, template_kwargs=template_kwargs)
    if vision:
        ids = expand_vision(ids, list(vision), tokenizer.encode)
        return Prompt(ids, mrope_positions(ids, list(vision)), list(vision))
    if IMAGE_PAD in ids or VIDEO_PAD in ids:
        raise PromptError("The chat template produced media placeholders but the request has no media.")
    return Prompt(ids, np.tile(np.arange(len(ids), dtype=np.int64), (3, 1)))


def _refuse_typed_vision_tokens(messages: list[dict]) -> None:
    for i, msg in enumerate(messages):
        content = msg["content"]
        texts = [content] if isinstance(content, str) else [p.get("text", "") for p in content]
        for text in texts:
            for token in VISION_TOKEN_TEXTS:
                if token in text:
                    raise PromptError(
                        f"Message {i} contains the reserved token {token}; send images and "
                        "videos as image_url/video_url parts instead.",
                        f"messages[{i}].content",
                        "placeholder_mismatch",
                    )


def prompt_limit(limits, max_prompt_tokens: int = 0) -> int:
    """The most tokens a prompt may have: what one prefill takes, one token left for the
    reply, and --max-prompt-tokens when set."""
    limit = min(limits.max_input_tokens, limits.max_context - 1)
    return min(limit, max_prompt_tokens) if max_prompt_tokens else limit


def context_overflow(limit: int, tokens: int, what: str = "messages", lower_bound: str = "") -> PromptError:
    """A prompt longer than the model takes, worded as OpenAI and vLLM word it (code
    `context_length_exceeded`, "This model's maximum context length is ..."): clients
    recognise an overflow only by such words, and a router falls back to a model with a
    larger context only when it does.  LiteLLM matches "This model's maximum context
    length is", pydantic-ai the code or "maximum context length"; langchain-openai looks
    for the code in the exception's text, which the openai client (3.x) fills with the
    message alone, so the message also says "prompt is too long", its other marker.
    `what` is "messages" (chat, responses) or "prompt" (legacy completions); `lower_bound`
    says why `tokens` is at least the count, when the prompt was refused before tokenizing."""
    count = f"at least {tokens} tokens ({lower_bound})" if lower_bound else f"{tokens} tokens"
    return PromptError(
        f"This model's maximum context length is {limit} tokens. However, your {what} resulted in {count}. "
        f"Please reduce the length of the {what} (prompt is too long).",
        what,
        "context_length_exceeded",
    )


def check_length(prompt: Prompt, limits, max_prompt_tokens: int = 0, what: str = "messages") -> None:
    n = len(prompt.input_ids)
    limit = prompt_limit(limits, max_prompt_tokens)
    if n > limit:
        raise context_overflow(limit, n, what)


def text_prompt(tokenizer: ChatTokenizer, prompt: str | Sequence[int]) -> Prompt:
    """A raw prompt (legacy completions): no chat template.  The client writes the whole
    prompt, so control-token text in it is tokenized as those tokens, as raw-completion
    servers do; vision placeholders are refused (there is no media to put there)."""
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        ids = [END_OF_TEXT]  # an empty prompt starts from a document boundary
    if IMAGE_PAD in ids or VIDEO_PAD in ids:
        raise PromptError(
            "The prompt contains image/video placeholder tokens; this endpoint takes text only.",
            "prompt",
            "placeholder_mismatch",
        )
    return Prompt(ids, np.tile(np.arange(len(ids), dtype=np.int64), (3, 1)))
