"""A request's thinking budget and loop guard -> the slot's `engine.steering.Steering`.

Rules: request fields win over the server's defaults (`--default-thinking-budget`,
`--loop-guard`, `--loop-guard-span`); values were range-checked by the endpoint's schema.
`thinking_budget` counts thinking tokens; `loop_guard` is `true`/`false` or an object
`{"span": tokens, "max_period": tokens}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..engine import steering
from ..engine.loop_guard import DEFAULT_MAX_PERIOD, LoopConfig
from . import reasoning

if TYPE_CHECKING:
    from ..protocol import GenerationRequest
    from ..settings import Settings
    from ..tokenizer import ChatTokenizer


def loop_config(req: GenerationRequest, settings: Settings) -> LoopConfig | None:
    value = req.loop_guard
    if value is None:
        value = settings.loop_guard
    if value is False:
        return None
    if isinstance(value, Mapping):
        return LoopConfig(
            span=value.get("span") or settings.loop_guard_span, max_period=value.get("max_period") or DEFAULT_MAX_PERIOD
        )
    return LoopConfig(span=settings.loop_guard_span)


def thinking_budget(req: GenerationRequest, settings: Settings) -> int | None:
    budget = req.thinking_budget
    if budget is None and settings.default_thinking_budget > 0:
        budget = settings.default_thinking_budget
    return budget


def for_request(
    req: GenerationRequest, settings: Settings, tokenizer: ChatTokenizer, prompt_ids
) -> steering.Steering | None:
    model = reasoning.support(tokenizer)
    return steering.build(
        prompt_ids,
        model.thinks,
        thinking_budget(req, settings) if model.thinks else None,
        tuple(tokenizer.encode(steering.CLOSE_TEXT)) if model.thinks else (),
        loop_config(req, settings),
    )
