"""Thinking and loop-guard request fields in-process (FakeEngine): the 400s a model that
cannot honour them answers, and `enable_thinking: false` where the template has the
switch.  The generation side (budget, reasoning split, loop stop) runs on real engines in
tests/agent/test_thinking.py and tests/native/test_bm1684x_thinking.py."""

from __future__ import annotations

import pytest

from tests.support.checks import openai_error
from tests.support.inprocess import build

MSG = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    "body,param,words",
    [
        ({"thinking_budget": 100}, "thinking_budget", "Thinking models only"),
        ({"chat_template_kwargs": {"enable_thinking": True}}, "chat_template_kwargs.enable_thinking", "no thinking"),
        ({"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs", "only enable_thinking"),
        ({"thinking_budget": -3}, "thinking_budget", ""),
        ({"loop_guard": "yes"}, "loop_guard", "true, false"),
        ({"loop_guard": {"span": 4}}, "loop_guard", "span must be"),
        ({"loop_guard": {"period": 4}}, "loop_guard", "unknown key"),
    ],
)
def test_instruct_model_refuses_what_it_cannot_do(inproc, body, param, words):
    err = openai_error(inproc.chat(MSG, max_tokens=4, **body), 400, param=param)
    assert words in err["message"]


def test_instruct_model_accepts_thinking_off_and_the_loop_guard(inproc):
    body = inproc.chat(MSG, max_tokens=4, chat_template_kwargs={"enable_thinking": False}, loop_guard=True).json
    msg = body["choices"][0]["message"]
    assert "reasoning_content" not in msg and "completion_tokens_details" not in body["usage"]
    card = inproc.get("/v1/models").json["data"][0]["capabilities"]
    assert card["thinking"] == {"supported": False, "can_disable": False, "default_budget": None}
    assert "thinking_budget" not in card["parameters"] and "loop_guard" in card["parameters"]


@pytest.fixture
def hybrid():
    from qwen3vl_app.devtools.tiny_thinking import ensure_tiny_thinking_checkpoint
    from qwen3vl_app.tokenizer import ChatTokenizer

    folder = ensure_tiny_thinking_checkpoint(hybrid=True)
    app = build(folder, ChatTokenizer(folder), None)
    yield app
    app.close()


def test_thinking_off_where_the_template_allows_it(hybrid):
    on = hybrid.chat(MSG, max_tokens=6).json
    assert on["choices"][0]["message"]["reasoning_content"] is not None  # the prompt opened <think>
    assert on["usage"]["completion_tokens_details"]["reasoning_tokens"] == 6  # never closed by the fake model
    off = hybrid.chat(MSG, max_tokens=6, chat_template_kwargs={"enable_thinking": False}).json
    assert "reasoning_content" not in off["choices"][0]["message"]
    assert off["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert off["usage"]["prompt_tokens"] > on["usage"]["prompt_tokens"]  # the empty <think></think> block
    card = hybrid.get("/v1/models").json["data"][0]["capabilities"]["thinking"]
    assert card == {"supported": True, "can_disable": True, "default_budget": None}


def test_describe_keeps_the_thinking_out_of_the_description(hybrid):
    """/v1/media/describe on a Thinking model: `description` is the answer; the thinking
    comes apart under `reasoning` (whole, in the last event of a stream)."""
    import io
    import json

    from tests.support.media_host import PNG

    def form(**extra):
        return {"file": (io.BytesIO(PNG), "a.png", "image/png"), "max_tokens": "5", "temperature": "0", **extra}

    body = hybrid.post("/v1/media/describe", data=form()).json
    assert body["status"] == "success" and body["reasoning"] and body["description"] == ""  # still thinking
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5
    r = hybrid.post("/v1/media/describe", data=form(stream="true"))
    events = [json.loads(line[6:]) for line in r.get_data(as_text=True).splitlines() if line.startswith("data: {")]
    assert events[-1]["reasoning"] == body["reasoning"] and events[-1]["description"] == ""
    assert all(e["status"] == "success" for e in events)  # no description deltas while it thinks


def test_loop_guard_on_every_generation_endpoint(inproc):
    """The FakeEngine, greedy, repeats its last word: a loop the guard ends, on chat
    completions and on legacy completions (stream and not), with the stopped_by marker."""
    guard = {"span": 16, "max_period": 8}
    chat = inproc.chat(MSG, max_tokens=100, temperature=0, loop_guard=guard).json
    assert chat["choices"][0]["finish_reason"] == "stop" and chat["choices"][0]["stopped_by"] == "loop_guard"
    assert chat["usage"]["completion_tokens"] < 100
    body = {"prompt": "Count:", "max_tokens": 100, "temperature": 0, "loop_guard": guard}
    legacy = inproc.post("/v1/completions", json=body).json
    assert legacy["choices"][0]["finish_reason"] == "stop" and legacy["choices"][0]["stopped_by"] == "loop_guard"
    r = inproc.post("/v1/completions", json={**body, "stream": True})
    import json

    events = [json.loads(line[6:]) for line in r.get_data(as_text=True).splitlines() if line.startswith("data: {")]
    assert events[-1]["choices"][0]["stopped_by"] == "loop_guard"
    unguarded = inproc.post("/v1/completions", json={**body, "loop_guard": None}).json
    assert unguarded["choices"][0]["finish_reason"] == "length" and "stopped_by" not in unguarded["choices"][0]
