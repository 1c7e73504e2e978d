"""A Thinking checkpoint served for real (gunicorn, torch engine, the tiny Thinking model):
the official openai client reads the reasoning from `model_extra` and streams it, LiteLLM
shows it apart from the answer, the thinking budget closes the thinking on time, and the
loop guard stops a repetition loop.

The tiny model's random weights never close `</think>` by themselves, which makes the
budget visible: whatever the answer, the thinking is cut at the budget, and with the
same seed its text is exactly the first `budget` tokens of an unbounded run.  Greedy
decoding makes the model repeat a newline forever: a real repetition loop."""

from __future__ import annotations

import json

import openai
import pytest

from qwen3vl_app.engine.steering import CLOSE_TEXT, THINK_END
from qwen3vl_app.tokenizer import ChatTokenizer
from tests.support.live import API_KEY

MODEL = "qwen3-vl-instruct"  # the default served name
DEFAULT_BUDGET = 6
ASK = [{"role": "user", "content": "What is 2 + 2?"}]
UNBOUNDED = 10**6


@pytest.fixture(scope="module")
def thinking_dir():
    from qwen3vl_app.devtools.tiny_thinking import ensure_tiny_thinking_checkpoint

    return ensure_tiny_thinking_checkpoint()


@pytest.fixture(scope="module")
def close_len(thinking_dir) -> int:
    """Tokens of the forced closing up to and including </think> (counted as reasoning)."""
    ids = ChatTokenizer(thinking_dir).encode(CLOSE_TEXT)
    return ids.index(THINK_END) + 1


@pytest.fixture(scope="module")
def srv(server_factory, thinking_dir):
    with server_factory("--default-thinking-budget", str(DEFAULT_BUDGET), model_dir=thinking_dir, api_key=API_KEY) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    return srv.openai()


def ask(client, **kw):
    extra = kw.pop("extra_body", {})
    kw.setdefault("max_tokens", 16)
    return client.chat.completions.create(model=MODEL, messages=ASK, temperature=1.0, seed=7, extra_body=extra, **kw)


def test_reasoning_apart_from_the_answer_and_cut_at_the_budget(client, close_len):
    full = ask(client, max_tokens=4, extra_body={"thinking_budget": UNBOUNDED})
    msg = full.choices[0].message
    thought = msg.model_extra["reasoning_content"]
    assert thought and msg.model_extra["reasoning"] == thought  # both names
    assert msg.content == "" and full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens_details.reasoning_tokens == 4  # never closed: all thinking

    cut = ask(client, max_tokens=16, extra_body={"thinking_budget": 4})
    msg = cut.choices[0].message
    assert msg.model_extra["reasoning_content"] == thought  # the same 4 tokens, then </think>
    assert "</think>" not in msg.content and msg.content  # and the model answered
    assert cut.usage.completion_tokens_details.reasoning_tokens == 4 + close_len
    assert cut.usage.completion_tokens == 16

    default = ask(client, max_tokens=16)  # --default-thinking-budget 6
    assert default.usage.completion_tokens_details.reasoning_tokens == DEFAULT_BUDGET + close_len

    zero = ask(client, max_tokens=8, extra_body={"thinking_budget": 0})
    assert zero.choices[0].message.model_extra["reasoning_content"] == ""
    assert zero.usage.completion_tokens_details.reasoning_tokens == close_len


def test_stream_sends_reasoning_deltas_before_content(client, close_len):
    whole = ask(client, extra_body={"thinking_budget": 5})
    stream = ask(client, stream=True, stream_options={"include_usage": True}, extra_body={"thinking_budget": 5})
    kinds, reasoning, content, usage = [], "", "", None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning_content"):
                assert extra["reasoning"] == extra["reasoning_content"]
                reasoning += extra["reasoning_content"]
                kinds.append("r")
            if choice.delta.content:
                content += choice.delta.content
                kinds.append("c")
    assert kinds and kinds == sorted(kinds, reverse=True)  # every "r" before the first "c"
    assert reasoning == whole.choices[0].message.model_extra["reasoning_content"]
    assert content == whole.choices[0].message.content
    assert usage.completion_tokens_details.reasoning_tokens == 5 + close_len


def test_grammar_shapes_the_answer_not_the_thinking(client):
    """response_format on a Thinking model: the model thinks freely, the grammar applies
    from the answer on, so the content parses."""
    out = ask(client, max_tokens=60, response_format={"type": "json_object"}, extra_body={"thinking_budget": 3})
    msg = out.choices[0].message
    assert msg.model_extra["reasoning_content"]
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(msg.content), dict)
    else:
        assert msg.content.lstrip().startswith("{")


def test_thinking_cannot_be_turned_off_here(client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert "always thinks" in str(e.value) and e.value.body["param"] == "chat_template_kwargs.enable_thinking"
    with pytest.raises(openai.BadRequestError):
        ask(client, extra_body={"thinking_budget": -1})


def test_models_card_says_it_thinks(client):
    card = client.models.retrieve(MODEL).model_extra
    assert card["capabilities"]["thinking"] == {"supported": True, "can_disable": False, "default_budget": 6}
    assert "thinking_budget" in card["capabilities"]["parameters"]


def test_responses_reasoning_item(client, close_len):
    resp = client.responses.create(
        model=MODEL, input="What is 2 + 2?", max_output_tokens=16, extra_body={"thinking_budget": 4}
    )
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    assert resp.output[0].content[0].type == "reasoning_text" and resp.output[0].content[0].text
    assert resp.output_text and "</think>" not in resp.output_text
    assert resp.usage.output_tokens_details.reasoning_tokens == 4 + close_len
    events = [
        ev.type
        for ev in client.responses.create(
            model=MODEL, input="Hi", max_output_tokens=12, stream=True, extra_body={"thinking_budget": 3}
        )
    ]
    assert "response.reasoning_text.delta" in events
    assert events.index("response.reasoning_text.done") < events.index("response.output_text.delta")


def test_litellm_shows_reasoning_separately(srv, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
    litellm = pytest.importorskip("litellm")
    kw = dict(
        model=f"hosted_vllm/{MODEL}",
        api_base=srv.url + "/v1",
        api_key=API_KEY,
        messages=ASK,
        max_tokens=16,
        temperature=1.0,
        seed=7,
        thinking_budget=4,
    )
    out = litellm.completion(**kw)
    msg = out.choices[0].message
    assert msg.reasoning_content and "</think>" not in msg.content
    streamed = [c.choices[0].delta for c in litellm.completion(stream=True, **kw) if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in streamed) == msg.reasoning_content
    assert "".join(d.content or "" for d in streamed) == msg.content


def test_loop_guard_stops_a_repetition_loop(srv):
    """Greedy, the tiny model falls into a loop (one short cycle, forever): with the guard
    the reply ends once the cycle covers the span, finish_reason stop and the stopped_by
    marker; without it (the server's default) it burns max_tokens.  (The default span,
    512 tokens, and text that must not trigger it: tests/unit/test_loop_guard.py.)"""
    body = {"max_tokens": 160, "thinking_budget": 0}
    guard = {"span": 48}
    guarded = srv.chat(ASK, loop_guard=guard, **body).json()
    choice = guarded["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stopped_by"] == "loop_guard"
    assert guarded["usage"]["completion_tokens"] < 160
    plain = srv.chat(ASK, **body).json()
    assert plain["choices"][0]["finish_reason"] == "length" and "stopped_by" not in plain["choices"][0]
    assert plain["choices"][0]["message"]["content"].startswith(choice["message"]["content"])  # the same loop
    stream = srv.chat(ASK, loop_guard=guard, stream=True, **body)
    last = [json.loads(line[6:]) for line in stream.iter_lines(decode_unicode=True) if line.startswith("data: {")][-1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["choices"][0]["stopped_by"] == "loop_guard"
