"""GET /v1/models and /v1/models/<id> (OpenAI list/retrieve), with what the engine honours."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from marshmallow import Schema, fields, validate

from ..errors import APIError
from ..processing import reasoning
from ..protocol import SAMPLING_FIELDS
from .auth import auth
from .routedoc import route_doc

bp = Blueprint("models", __name__)


class ThinkingCapabilitySchema(Schema):
    supported = fields.Boolean(
        required=True, metadata={"description": "a Thinking checkpoint: replies carry reasoning_content"}
    )
    can_disable = fields.Boolean(
        required=True, metadata={"description": "chat_template_kwargs.enable_thinking: false is honoured"}
    )
    default_budget = fields.Integer(
        required=True, allow_none=True, metadata={"description": "--default-thinking-budget (null: unbounded)"}
    )


class ModelCapabilitiesSchema(Schema):
    sampling = fields.Boolean(required=True)
    logprobs = fields.Boolean(required=True)
    prefix_cache = fields.Boolean(
        required=True,
        metadata={
            "description": "a follow-up turn reuses the KV of the conversation's earlier turns "
            "(usage.prompt_tokens_details.cached_tokens)"
        },
    )
    speculative_decoding = fields.Boolean(
        metadata={
            "description": "several tokens per engine step from drafts (prediction, speculative_tokens; "
            "docs/speculative.md); the output is unchanged"
        },
    )
    structured_outputs = fields.Boolean(
        required=True,
        metadata={"description": "response_format json_object / json_schema enforced by constrained decoding"},
    )
    tool_choice = fields.List(
        fields.String(),
        required=True,
        metadata={
            "description": "tool_choice values honoured ('function' = a named function); required and named "
            "calls are enforced by constrained decoding, so they need host logits"
        },
    )
    parameters = fields.List(fields.String(), required=True)
    thinking = fields.Nested(ThinkingCapabilitySchema)


class ModelSchema(Schema):
    """One model card (OpenAI's fields, plus what this server's engine honours)."""

    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["model"]))
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)
    engine = fields.String(required=True)
    demo = fields.Boolean(required=True)
    description = fields.String()
    max_context = fields.Integer()
    capabilities = fields.Nested(ModelCapabilitiesSchema)


class ModelListSchema(Schema):
    object = fields.String(required=True, validate=validate.OneOf(["list"]))
    data = fields.List(fields.Nested(ModelSchema), required=True)


def check_served(state, name: str | None, param: str = "model") -> str:
    """The served name a request asked for (the first one when it names none); any other
    name is a 404 `model_not_found`, as OpenAI and vLLM answer."""
    if name is None or name == "":
        return state.model_id
    if name not in state.served_names:
        raise APIError(
            f"The model '{name}' does not exist; this server serves {', '.join(repr(n) for n in state.served_names)}.",
            404,
            param,
            "model_not_found",
        )
    return name


def model_card(state, name: str | None = None) -> dict:
    engine = state.runner.engine
    card = {
        "id": name or state.model_id,
        "object": "model",
        "created": state.created,
        "owned_by": "qwen3vl-server",
        "engine": state.engine_kind,
        "demo": state.demo,
    }
    if state.demo:
        card["description"] = state.demo_notice
    if engine is not None:
        caps = engine.capabilities
        thinking = reasoning.support(state.tokenizer) if state.tokenizer is not None else reasoning.ThinkingSupport()
        card["max_context"] = engine.limits.max_context
        card["capabilities"] = {
            "sampling": caps.logits,
            "logprobs": caps.logits,
            "prefix_cache": caps.prefix_cache,
            "speculative_decoding": caps.logits and caps.verify,
            "structured_outputs": caps.logits,
            "tool_choice": ["none", "auto"] + (["required", "function"] if caps.logits else []),
            "parameters": (
                ([*SAMPLING_FIELDS, "logprobs", "top_logprobs"] if caps.logits else [])
                + (["response_format", "logit_bias", "grounding"] if caps.logits else [])
                + ["max_tokens", "max_completion_tokens", "stop", "stream", "stream_options"]
                + ["tools", "tool_choice", "parallel_tool_calls", "loop_guard", "mm_processor_kwargs"]
                + (["prediction", "speculative_tokens"] if caps.logits and caps.verify else [])
                + (["thinking_budget", "chat_template_kwargs"] if thinking.thinks else [])
            ),
            "thinking": thinking.describe(state.settings.default_thinking_budget),
        }
    return card


@bp.get("/v1/models")
@route_doc(
    tag="models",
    summary="List models (one)",
    operation_id="listModels",
    responses={200: ("the served model", ModelListSchema)},
)
@auth.login_required
def list_models():
    state = current_app.extensions["qwen3vl"]
    return jsonify({"object": "list", "data": [model_card(state, name) for name in state.served_names]})


@bp.get("/v1/models/<path:model_id>")
@route_doc(
    tag="models",
    summary="Retrieve a model",
    operation_id="retrieveModel",
    path_examples={"model_id": "qwen3-vl-instruct"},
    responses={200: ("the model", ModelSchema)},
    errors=(404,),
)
@auth.login_required
def get_model(model_id):
    state = current_app.extensions["qwen3vl"]
    return jsonify(model_card(state, check_served(state, model_id)))
