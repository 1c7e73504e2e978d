"""What a chat request asks of the output (tools, tool_choice, response_format) -> prompt
tools, parsing and grammar; and the 400s on an engine without host logits."""

from __future__ import annotations

import pytest

from qwen3vl_app.errors import APIError
from qwen3vl_app.model_constants import TOOL_CALL_START
from qwen3vl_app.protocol import ChatRequest, ToolChoice
from qwen3vl_app.structured import plan_output as _plan

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
SCHEMA_FMT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def test_plain_request_has_no_plan():
    plan = plan_output({}, host_logits=True)
    assert plan.tools is None and plan.grammar is None and not plan.parses_tools and not plan.logit_bias


def test_auto_renders_and_parses_without_grammar():
    plan = plan_output({"tools": [TOOL]}, host_logits=True)
    assert plan.tools == [TOOL] and plan.tool_names == {"f"} and plan.grammar is None


def test_none_keeps_tools_in_prompt_but_bans_the_call_token():
    plan = plan_output({"tools": [TOOL], "tool_choice": ToolChoice("none")}, host_logits=True)
    assert plan.tools == [TOOL] and not plan.parses_tools and plan.logit_bias == {TOOL_CALL_START: float("-inf")}


@pytest.mark.parametrize(
    "req",
    [
        {"tools": [TOOL], "tool_choice": ToolChoice("required")},
        {"tools": [TOOL], "tool_choice": ToolChoice("function", "f")},
        {"response_format": {"type": "json_object"}},
        {"response_format": SCHEMA_FMT},
        {"tools": [TOOL], "response_format": SCHEMA_FMT},
    ],
)
def test_constrained_requests_get_a_grammar_and_are_400_without_host_logits(req):
    assert plan_output(req, host_logits=True).grammar is not None
    with pytest.raises(APIError) as e:
        plan_output(req, host_logits=False)
    assert e.value.status == 400 and e.value.code == "unsupported_parameter"
    assert e.value.param in ("tool_choice", "response_format")


def test_logit_bias_without_host_logits_is_a_400_and_auto_tools_still_work():
    with pytest.raises(APIError) as e:
        plan_output({"logit_bias": {5: 1.0}}, host_logits=False)
    assert e.value.param == "logit_bias"
    plan = plan_output({"tools": [TOOL]}, host_logits=False)
    assert plan.parses_tools and plan.grammar is None
    assert not plan_output({"tools": [TOOL], "tool_choice": ToolChoice("none")}, host_logits=False).logit_bias


def test_objects_with_declared_properties_are_closed_others_stay_open():
    from qwen3vl_app.engine.constraints import close_objects

    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}, "free": {"type": "object"}},
        "$defs": {"X": {"properties": {"y": {"type": "integer"}}}},
        "anyOf": [{"properties": {}}, {"type": "object", "additionalProperties": True, "properties": {}}],
    }
    closed = close_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]
    assert closed["$defs"]["X"]["additionalProperties"] is False
    assert closed["anyOf"][0]["additionalProperties"] is False and closed["anyOf"][1]["additionalProperties"] is True
    assert "additionalProperties" not in schema  # the request's schema is not modified


def plan_output(fields: dict, **kw):
    """structured.plan_output over the typed request these fields make."""
    typed = {k: tuple(v.items()) if k == "logit_bias" else tuple(v) if k == "tools" else v for k, v in fields.items()}
    return _plan(ChatRequest(messages=(), **typed), **kw)
