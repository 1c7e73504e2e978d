"""Request and reply fields of thinking models and the loop guard, shared by the endpoint
schemas that take them (mixed into their request schemas, nested in their replies).

Rules: declarations only (types, ranges, descriptions); what they do is
`processing/reasoning.py`, `processing/steering_options.py` and `engine/steering.py`.
Documented in docs/thinking.md.
"""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate

from ..engine.loop_guard import MIN_SPAN

MAX_PERIOD_LIMIT = 512


class LoopGuardField(fields.Field):
    """`true` / `false`, or `{"span": tokens, "max_period": tokens}` (guard on, with these)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            return value
        if not isinstance(value, dict):
            raise ValidationError('must be true, false or {"span": tokens, "max_period": tokens}')
        unknown = sorted(set(value) - {"span", "max_period"})
        if unknown:
            raise ValidationError(f"unknown key(s) {', '.join(map(repr, unknown))}: only span and max_period")
        out = {}
        for key, low, high in (("span", MIN_SPAN, 1 << 20), ("max_period", 1, MAX_PERIOD_LIMIT)):
            v = value.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise ValidationError(f"{key} must be an integer in {low}..{high}")
            out[key] = v
        return out


class LoopGuardRequestFields(Schema):
    """The loop guard's request field (every generation endpoint's schema mixes it in)."""

    loop_guard = LoopGuardField(
        allow_none=True,
        metadata={
            "description": 'stop a repetition loop: true, false or {"span": tokens, "max_period": tokens}; '
            "ends with finish_reason stop and stopped_by loop_guard. Default: --loop-guard"
        },
    )


class ThinkingRequestFields(LoopGuardRequestFields):
    """Fields every chat-style request schema takes (mixed in)."""

    thinking_budget = fields.Integer(
        allow_none=True,
        validate=validate.Range(min=0),
        metadata={
            "description": "Thinking models: most tokens of thinking; when spent the server closes the "
            "thinking (</think>) and the model answers (0: answer at once). Default: --default-thinking-budget"
        },
    )
    chat_template_kwargs = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        metadata={
            "description": "switches for the chat template; only enable_thinking (true/false), where the "
            "model's template has it (400 otherwise)"
        },
    )


class ThinkingMessageFields(Schema):
    """An earlier assistant turn's reasoning, as this server (and vLLM) returned it."""

    reasoning_content = fields.String(allow_none=True)
    reasoning = fields.String(allow_none=True)


class ReasoningReplyFields(Schema):
    """The reasoning of a Thinking model's reply, under both names clients read."""

    reasoning_content = fields.String(
        allow_none=True, metadata={"description": "Thinking models: the thinking before the answer"}
    )
    reasoning = fields.String(allow_none=True, metadata={"description": "the same text as reasoning_content"})


class StoppedByFields(Schema):
    stopped_by = fields.String(
        validate=validate.OneOf(["loop_guard"]),
        metadata={"description": "extension: set when the loop guard ended the generation (finish_reason stop)"},
    )
