"""Tools through the real server and the official client.  Random weights never call a
tool on their own, so the round trips force the call (tool_choice required / named),
which constrained decoding guarantees; `auto` parsing is unit-tested on text."""

from __future__ import annotations

import json

import openai
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome"]},
                "unit": {"type": "string", "enum": ["C", "F"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 99},
                "b": {"type": "integer", "minimum": 0, "maximum": 99},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

MODEL = "qwen3-vl-instruct"  # the served name (another name is a 404)


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


def _check_call(call, names=("get_weather", "add")):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert args["city"] in ("Paris", "Rome") and args["unit"] in ("C", "F")
    else:
        assert set(args) == {"a", "b"} and all(0 <= v <= 99 for v in args.values())


def test_round_trip_non_stream(client):
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=80, seed=3
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    _check_call(call)
    history = ASK + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 18})},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=8, seed=3
    )
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.tool_calls is None
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result reached the prompt


def test_named_function_is_called(client):
    out = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        max_tokens=60,
        seed=1,
        tool_choice={"type": "function", "function": {"name": "add"}},
    )
    calls = out.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["add"]
    _check_call(calls[0], ("add",))


def test_round_trip_stream_deltas_reassemble(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120, seed=5, stream=True
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        assert not delta.content  # a forced call has no text around it
        for tc in delta.tool_calls or []:
            if tc.index not in calls:
                assert tc.id and tc.function.name  # index, id and name come first
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            calls[tc.index]["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls and sorted(calls) == list(range(len(calls)))
    for c in calls.values():
        json.loads(c["arguments"])
    history = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls.values()
            ],
        }
    ]
    history += [{"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in calls.values()]
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in client.chat.completions.create(
            model=MODEL, messages=history, tools=TOOLS, max_tokens=6, seed=5, stream=True
        )
        if ch.choices
    )
    assert text


def test_parallel_calls_when_allowed(client):
    counts = set()
    for seed in range(6):
        out = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=150, seed=seed, temperature=1.0
        )
        if out.choices[0].finish_reason == "tool_calls":
            for c in out.choices[0].message.tool_calls:
                _check_call(c)
            counts.add(len(out.choices[0].message.tool_calls))
    assert counts and min(counts) >= 1


@pytest.mark.parametrize(
    "body, param",
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
                "tool_choice": "required",
            },
            "tools",
        ),
    ],
)
def test_bad_tool_requests_are_400(server, body, param):
    r = server.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param)


@pytest.mark.parametrize(
    "msg, param",
    [
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "user", "content": "x", "tool_calls": []}, None),
        ({"role": "assistant"}, "content"),
    ],
)
def test_bad_tool_messages_are_400(server, msg, param):
    r = server.post("/v1/chat/completions", json={"messages": ASK + [msg], "max_tokens": 2})
    if param is None:  # an empty tool_calls list on a user turn is harmless
        assert r.status_code == 200
        return
    assert r.status_code == 400, r.text
    assert param in r.json()["error"]["param"]


def test_tool_choice_none_and_auto_answer_in_text(client):
    for choice in ("none", "auto"):
        out = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=5, seed=1
        )
        assert out.choices[0].message.content and out.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=ASK, tool_choice="auto", max_tokens=1)


def test_parse_with_pydantic_function_tool(client):
    from typing import Literal

    from pydantic import BaseModel, Field

    class Lookup(BaseModel):
        """Look a word up."""

        word: Literal["cat", "dog"]
        limit: int = Field(ge=1, le=5)

    out = client.chat.completions.parse(
        model=MODEL,
        messages=ASK,
        tools=[openai.pydantic_function_tool(Lookup)],
        tool_choice="required",
        max_tokens=60,
        seed=2,
    )
    call = out.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, Lookup)
    with client.chat.completions.stream(
        model=MODEL,
        messages=ASK,
        tools=[openai.pydantic_function_tool(Lookup)],
        tool_choice="required",
        max_tokens=60,
        seed=4,
    ) as s:
        final = s.get_final_completion()
    assert isinstance(final.choices[0].message.tool_calls[0].function.parsed_arguments, Lookup)
