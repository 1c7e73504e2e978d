"""langchain-openai against the real server: bind_tools + a ToolMessage loop, and
with_structured_output in its json_schema and function-calling modes (Chat Completions,
and json_schema over the Responses API).  Random weights never call a tool unprompted,
so the loops force the call with tool_choice."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

langchain_openai = pytest.importorskip("langchain_openai")
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

MODEL = "qwen3-vl-instruct"  # the served name (another name is a 404)


@tool
def get_weather(city: Literal["Paris", "Rome"], unit: Literal["C", "F"]) -> str:
    """Current weather of a city."""
    return json.dumps({"city": city, "temp": 18 if unit == "C" else 64})


class Verdict(BaseModel):
    """Whether the statement is true."""

    answer: Literal["yes", "no"]
    confidence: int = Field(ge=0, le=100)


@pytest.fixture(scope="module")
def llm(server):
    return langchain_openai.ChatOpenAI(
        base_url=server.url + "/v1",
        api_key=server.api_key,
        model=MODEL,
        max_tokens=80,
        temperature=0.7,
        seed=11,
        use_responses_api=False,
    )


def _tool_loop(llm, stream: bool):
    forced = llm.bind_tools([get_weather], tool_choice="get_weather")
    messages = [HumanMessage("What's the weather in Paris?")]
    if stream:
        ai = None
        for chunk in forced.stream(messages):
            ai = chunk if ai is None else ai + chunk
    else:
        ai = forced.invoke(messages)
    assert isinstance(ai, AIMessage) and len(ai.tool_calls) == 1
    call = ai.tool_calls[0]
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "Rome") and call["id"]
    result = get_weather.invoke(call["args"])
    messages += [ai, ToolMessage(result, tool_call_id=call["id"])]
    final = llm.bind_tools([get_weather], tool_choice="none").bind(max_tokens=6).invoke(messages)
    assert isinstance(final, AIMessage) and final.content and not final.tool_calls


def test_bind_tools_tool_message_loop(llm):
    _tool_loop(llm, stream=False)


def test_bind_tools_tool_message_loop_streaming(llm):
    _tool_loop(llm, stream=True)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(llm, method):
    out = llm.with_structured_output(Verdict, method=method).invoke("Is water wet? Answer as JSON.")
    assert isinstance(out, Verdict)


def test_with_structured_output_over_responses_api(server):
    llm = langchain_openai.ChatOpenAI(
        base_url=server.url + "/v1", api_key=server.api_key, model=MODEL, max_tokens=80, use_responses_api=True
    )
    out = llm.with_structured_output(Verdict, method="json_schema").invoke("Is water wet?")
    assert isinstance(out, Verdict)
