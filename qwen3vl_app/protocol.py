"""The typed requests serving consumes: what a client asked for, after validation.

The api layer loads each request body with its marshmallow schema (`api/*_schema.py`),
whose `post_load` returns one of these frozen objects; serving reads them and never
changes them (a derived value is a new object or a local).  Wire spellings stay in the
schemas: the legacy completions' integer `logprobs` arrives here as the `logprobs` /
`top_logprobs` pair, `max_completion_tokens` as `max_tokens`, `stop` always as a tuple,
`stream_options.include_usage` as `include_usage`.  No Flask, no marshmallow.

Sampling fields are None when the request did not set them: the model folder's
generation_config.json decides then (`serving.sampling_params`).  `messages` holds the
validated OpenAI messages as loaded; `prompt.messages.split_messages` copies what it
renders and never writes to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .grounding import Grounding

# GenerationRequest's sampling fields (None: unset).
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


@dataclass(frozen=True)
class ToolChoice:
    """A request's `tool_choice`: "none", "auto", "required", or "function" with `name`."""

    mode: str
    name: str | None = None

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "function")


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """What the chat and the legacy completions requests share."""

    model: str | None = None  # the served model's id once the schema has checked it
    max_tokens: int | None = None  # None: the server's --max-tokens-default
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    cache_salt: str | None = None  # vLLM's extension: scopes cached work further than the API key
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says
    speculative_tokens: int | None = None  # extension: draft tokens per step (None: the server's)
    prediction: str | None = None  # OpenAI's predicted output (chat): drafted first
    loop_guard: bool | Mapping | None = None  # None: --loop-guard; a mapping: {"span", "max_period"}
    thinking_budget: int | None = None  # Thinking models: tokens of thinking (None: the server's default)
    chat_template_kwargs: Mapping | None = None  # switches for the chat template (enable_thinking)


@dataclass(frozen=True, kw_only=True)
class ChatRequest(GenerationRequest):
    """/v1/chat/completions, and /v1/responses translated to it."""

    messages: tuple[Mapping, ...]
    tools: tuple[Mapping, ...] = ()  # OpenAI tool objects
    tool_choice: ToolChoice | None = None  # None: "auto" with tools, "none" without
    parallel_tool_calls: bool = True
    response_format: Mapping | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    mm_processor_kwargs: Mapping | None = None  # vLLM's: defaults for every media part's budget
    grounding: Grounding | None = None  # extension: detections as JSON, mapped to the image's pixels


@dataclass(frozen=True, kw_only=True)
class CompletionRequest(GenerationRequest):
    """/v1/completions: raw prompts (text or token ids), one choice each, no chat template."""

    prompts: tuple[str | tuple[int, ...], ...]
    echo: bool = False


@dataclass(frozen=True, kw_only=True)
class TokenizeRequest:
    """/tokenize: chat `messages` (with `tools`, the media budget) or a raw `prompt`."""

    model: str | None = None
    messages: tuple[Mapping, ...] | None = None
    prompt: str | None = None
    tools: tuple[Mapping, ...] = ()
    mm_processor_kwargs: Mapping | None = None
    return_token_strs: bool = False


@dataclass(frozen=True, kw_only=True)
class DetokenizeRequest:
    model: str | None = None
    tokens: tuple[int, ...]
