"""POST /v1/responses through the real server and the official client (create, stream,
function tools round trip, structured text.format, stateless behaviour)."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}

MODEL = "qwen3-vl-instruct"  # the served name (another name is a 404)


class Answer(BaseModel):
    verdict: Literal["yes", "no"]
    confidence: int = Field(ge=0, le=100)


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


def test_create_text(client):
    r = client.responses.create(
        model=MODEL, input="Say hello.", instructions="Be brief.", max_output_tokens=6, temperature=0.0
    )
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].type == "message" and r.output_text == r.output[0].content[0].text != ""
    assert r.usage.output_tokens == 6 and r.usage.input_tokens > 5 and r.store is False


def test_stream_event_sequence_matches_create(client):
    kw = dict(
        model=MODEL,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}],
        max_output_tokens=8,
        temperature=0.0,
    )
    whole = client.responses.create(**kw)
    types, text = [], ""
    for ev in client.responses.create(stream=True, **kw):
        types.append(ev.type)
        if ev.type == "response.output_text.delta":
            text += ev.delta
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert text == whole.output_text
    with client.responses.stream(**kw) as s:
        deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
    assert deltas == whole.output_text


def test_structured_text_format_parses(client):
    r = client.responses.parse(
        model=MODEL, input="Is the sky blue?", text_format=Answer, max_output_tokens=60, temperature=1.0
    )
    assert r.status == "completed" and isinstance(r.output_parsed, Answer)
    with client.responses.stream(model=MODEL, input="Is it?", text_format=Answer, max_output_tokens=60) as s:
        final = s.get_final_response()
    assert isinstance(final.output_parsed, Answer)


def test_function_call_round_trip_stream_and_not(client):
    first = client.responses.create(
        model=MODEL,
        input="Weather in Paris?",
        tools=[TOOL],
        tool_choice="required",
        max_output_tokens=60,
        parallel_tool_calls=False,
    )
    assert first.status == "completed"
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["city"] in ("Paris", "Rome") and calls[0].call_id.startswith("call_")
    follow = [
        {"role": "user", "content": "Weather in Paris?"},
        calls[0].model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C and sunny"},
    ]
    answer = client.responses.create(model=MODEL, input=follow, tools=[TOOL], max_output_tokens=5)
    assert answer.output_text and answer.usage.input_tokens > first.usage.input_tokens
    args, done = "", None
    with client.responses.stream(
        model=MODEL,
        input="Weather?",
        tools=[TOOL],
        max_output_tokens=60,
        tool_choice={"type": "function", "name": "get_weather"},
    ) as s:
        for ev in s:
            if ev.type == "response.function_call_arguments.delta":
                args += ev.delta
            if ev.type == "response.function_call_arguments.done":
                done = ev.arguments
        final = s.get_final_response()
    assert args == done and json.loads(done)["city"] in ("Paris", "Rome")
    assert [o.type for o in final.output] == ["function_call"]


def test_stateless_previous_response_id_is_a_400_and_store_is_named(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_123", max_output_tokens=2)
    assert e.value.body["param"] == "previous_response_id"
    r = server.post("/v1/responses", json={"input": "x", "max_output_tokens": 2, "store": True})
    assert r.status_code == 200 and r.json()["store"] is False
    assert r.headers["X-Ignored-Params"] == "store"
    assert (
        "[DONE]" not in server.post("/v1/responses", json={"input": "x", "max_output_tokens": 2, "stream": True}).text
    )


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": []}, "input"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0]"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "schema": {"type": "bogus"}, "name": "n"}}},
            "text.format",
        ),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        (
            {
                "instructions": "be brief",
                "input": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
                ],
            },
            "input[1].content[0]",
        ),
        (
            {"instructions": "x", "input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
            "input[0].content.0.text",
        ),
    ],
)
def test_bad_requests_are_400(server, body, param):
    r = server.post("/v1/responses", json={"max_output_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
