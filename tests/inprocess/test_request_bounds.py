"""Hardening round 3, request parsing (in-process, FakeEngine): client input that was a 500
or silently accepted, the context overflow in OpenAI's words, and the counts refused
before the schema walks them.  The live-server side (large bodies, the event loop) is
tests/resilience/test_huge_requests.py."""

from __future__ import annotations

import json

import pytest

from qwen3vl_app.api import common
from tests.support.checks import openai_error

MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def _nested(depth: int) -> str:
    """A JSON Schema nesting objects `depth` levels deep, as JSON text (json.dumps would
    recurse that deep)."""
    levels = (depth - 1) // 2  # each level is an object and its properties object
    return '{"type":"object","properties":{"x":' * levels + '{"type":"string"}' + "}}" * levels


def _post_raw(app, path: str, text: str):
    return app.post(path, data=text, content_type="application/json")


@pytest.fixture
def warm(inproc):
    """The app with its engine loaded (the early counts need the engine's limit)."""
    assert inproc.chat(MSG, max_tokens=1).status_code == 200
    return inproc


# ------------------------------------------------------------------------ logit_bias ids


@pytest.mark.parametrize("key", ["²", "١٢", "1" * 5000, "12\n", " 12", "+12", "-1"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_logit_bias_ids_are_ascii_digits(inproc, key, endpoint):
    """ "²" passed str.isdigit and failed int() (500); "١٢" was token 12; 5000 digits
    broke Python's int-string limit (500)."""
    body = {"max_tokens": 1, "logit_bias": {key: 1}}
    if endpoint == "chat":
        r = inproc.post("/v1/chat/completions", json={"messages": MSG, **body})
    else:
        r = inproc.post("/v1/completions", json={"prompt": "hi", **body})
    err = openai_error(r, 400, "invalid_value", "logit_bias")
    assert "invalid token id" in err["message"] and len(err["message"]) < 200


def test_logit_bias_ascii_ids_still_work(inproc):
    assert inproc.chat(MSG, max_tokens=1, logit_bias={"12": 5, "0042": -5}).status_code == 200
    openai_error(inproc.chat(MSG, max_tokens=1, logit_bias={"151936": 1}), 400, "invalid_value")  # past the vocabulary
    many = {str(i): 1 for i in range(301)}
    err = openai_error(inproc.chat(MSG, max_tokens=1, logit_bias=many), 400, "invalid_value")
    assert "at most 300" in err["message"]


# ------------------------------------------------------------------------ tools


def test_deeply_nested_tool_parameters_are_a_400(inproc):
    """Over 64 levels: a 400 naming the field.  (945 levels, which passed the JSON parser
    and broke the template's tojson with a 500, need a live server's shallower stack:
    tests/resilience/test_huge_requests.py.)"""
    for depth in (65, 301):
        body = '{"messages":[{"role":"user","content":"hi"}],"max_tokens":1,"tools":[{"type":"function",'
        body += f'"function":{{"name":"f","parameters":{_nested(depth)}}}}}]}}'
        err = openai_error(_post_raw(inproc, "/v1/chat/completions", body), 400, "invalid_value")
        assert err["param"] == "tools.0.function.parameters" and "64 levels" in err["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": json.loads(_nested(64))}}
    assert inproc.chat(MSG, max_tokens=1, tools=[tool]).status_code == 200


def test_responses_tool_parameters_are_bounded_too(inproc):
    body = '{"input":"hi","max_output_tokens":1,"tools":[{"type":"function","name":"f",'
    body += f'"parameters":{_nested(301)}}}]}}'
    openai_error(_post_raw(inproc, "/v1/responses", body), 400, "invalid_value")


@pytest.mark.parametrize("name", ["get_weather\n", "get weather", "", "x" * 65])
def test_function_names_match_whole(inproc, name):
    """`^...$` let a trailing newline through."""
    tool = {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    err = openai_error(inproc.chat(MSG, max_tokens=1, tools=[tool]), 400, "invalid_value")
    assert err["param"] == "tools.0.function.name"


def test_function_names_on_responses(inproc):
    r = inproc.post(
        "/v1/responses",
        json={"input": "hi", "max_output_tokens": 1, "tools": [{"type": "function", "name": "get_weather\n"}]},
    )
    openai_error(r, 400, "invalid_value")
    assert inproc.chat(MSG, max_tokens=1, tools=[TOOL]).status_code == 200


# ------------------------------------------------------------------------ metadata


@pytest.mark.parametrize(
    "metadata,why",
    [
        ({f"k{i}": "v" for i in range(17)}, "at most 16"),
        ({"k" * 65: "v"}, "64 characters"),
        ({"k": "v" * 513}, "512 characters"),
        ({"k": 5}, "must be a string"),
        (["k"], "must be an object"),
    ],
)
def test_responses_metadata_has_openai_limits(inproc, metadata, why):
    """2000 keys of 512 characters were accepted and repeated in every stream event."""
    r = inproc.post("/v1/responses", json={"input": "hi", "max_output_tokens": 1, "metadata": metadata})
    err = openai_error(r, 400, "invalid_value", "metadata")
    assert why in err["message"]


def test_responses_metadata_at_the_limits_is_echoed(inproc):
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    r = inproc.post("/v1/responses", json={"input": "hi", "max_output_tokens": 1, "metadata": metadata})
    assert r.status_code == 200 and r.get_json()["metadata"] == metadata


# ------------------------------------------------------------------------ context overflow


def test_overflow_is_context_length_exceeded_on_every_endpoint(warm):
    long = "word " * 3000
    err = openai_error(warm.chat([{"role": "user", "content": long}]), 400, "context_length_exceeded", "messages")
    assert err["message"].startswith("This model's maximum context length is 2047 tokens. However, your messages")
    r = warm.post("/v1/responses", json={"input": long})
    err = openai_error(r, 400, "context_length_exceeded", "input")
    assert "maximum context length is 2047 tokens" in err["message"]
    r = warm.post("/v1/completions", json={"prompt": long})
    err = openai_error(r, 400, "context_length_exceeded", "prompt")
    assert "However, your prompt resulted in" in err["message"]
    assert err["message"].endswith("length of the prompt (prompt is too long).")
    r = warm.post("/v1/completions", json={"prompt": [[1, 2], [5] * 2048]})
    err = openai_error(r, 400, "context_length_exceeded", "prompt[1]")
    assert "resulted in 2048 tokens" in err["message"]
    # other prompt errors keep invalid_prompt
    bad = [{"role": "user", "content": "<|image_pad|>"}]
    assert openai_error(warm.chat(bad), 400)["code"] == "placeholder_mismatch"


def test_more_messages_than_tokens_are_refused_before_the_schema(warm, monkeypatch):
    from qwen3vl_app.api import chat_schema

    monkeypatch.setattr(chat_schema.MessageSchema, "load", lambda *a, **k: pytest.fail("walked"))
    err = openai_error(warm.chat([{"role": "user", "content": ""}] * 3000), 400, "context_length_exceeded")
    assert "at least 3000 tokens (3000 messages of one token or more each)" in err["message"]
    items = [{"role": "user", "content": ""}] * 3000
    r = warm.post("/v1/responses", json={"input": items})
    openai_error(r, 400, "context_length_exceeded", "input")
    r = warm.post("/v1/completions", json={"prompt": list(range(5000))})
    err = openai_error(r, 400, "context_length_exceeded", "prompt")
    assert "resulted in 5000 tokens" in err["message"]


def test_reasoning_items_are_not_counted(warm):
    """They make no token: 3000 of them and one message still fit."""
    items = [{"type": "reasoning", "summary": []}] * 3000 + [{"role": "user", "content": "hi"}]
    r = warm.post("/v1/responses", json={"input": items, "max_output_tokens": 1})
    assert r.status_code == 200, r.get_data(as_text=True)[:300]


def test_every_message_makes_a_token(tiny_tokenizer):
    """The count rule's premise: each message, whatever its role, renders one token or more."""
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    roles = [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": ""},
        {"role": "developer", "content": ""},
    ]
    for msg in roles:
        for n in (1, 2, 5):
            base = [{"role": "user", "content": ""}]
            ids = tiny_tokenizer.encode_chat(base + [msg] * n, add_generation_prompt=False)
            alone = tiny_tokenizer.encode_chat(base, add_generation_prompt=False)
            assert len(ids) - len(alone) >= n, (msg, n)


# ------------------------------------------------------------------------ counted parse


@pytest.mark.parametrize(
    "doc",
    [
        '{"a": [1, 2.5, -3e2, "x\\u00e9", {"b": null, "c": [true, false]}], "d": {}}',
        '{"a": 1, "a": 2}',
        '{"x": "\\ud800"}',
        '  {"k": [[], {}, [[[]]]]}  ',
    ],
)
def test_counted_parse_is_json_loads(doc):
    assert common._parse_counted(doc.encode(), 100) == json.loads(doc)
    assert common._parse_counted(b"\xef\xbb\xbf" + doc.encode(), None) == json.loads(doc)  # BOM, as json.loads(bytes)


def test_counted_parse_stops_at_the_budget():
    assert common._parse_counted(b'{"a": [1, 2, 3]}', 4) == {"a": [1, 2, 3]}
    assert common._parse_counted(b'{"a": [1, 2, 3]}', 3) is common._TOO_MANY
    assert common._parse_counted(b'{"a": [1, 2', None) is None
    assert common._parse_counted(b'{"a": 1} x', None) is None
