"""POST /v1/completions (legacy) through the real server and the official client."""

from __future__ import annotations

import openai
import pytest

MODEL = "qwen3-vl-instruct"  # the served name (another name is a 404)


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


def test_create_raw_prompt_no_chat_template(client):
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0.0)
    assert out.object == "text_completion" and len(out.choices) == 1
    choice = out.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length" and choice.text
    # raw text: the prompt is exactly its tokens (no <|im_start|> turn around it)
    assert out.usage.prompt_tokens == 5 and out.usage.completion_tokens == 5
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "The capital of France is"}], max_tokens=1
    )
    assert chat.usage.prompt_tokens > out.usage.prompt_tokens


def test_list_of_prompts_one_choice_each_and_stream_matches(client):
    prompts = ["Once upon a time", "def main():", "1, 2, 3,"]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, temperature=0.0)
    assert [c.index for c in out.choices] == [0, 1, 2]
    single = [
        client.completions.create(model=MODEL, prompt=p, max_tokens=4, temperature=0.0).choices[0].text for p in prompts
    ]
    assert [c.text for c in out.choices] == single
    texts, finishes, usage = {}, {}, None
    for ev in client.completions.create(
        model=MODEL, prompt=prompts, max_tokens=4, temperature=0.0, stream=True, stream_options={"include_usage": True}
    ):
        if ev.usage:
            usage = ev.usage
        for c in ev.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert [texts[i] for i in range(3)] == single and finishes == {0: "length", 1: "length", 2: "length"}
    assert usage.completion_tokens == 12 and usage.prompt_tokens == out.usage.prompt_tokens


def test_echo_stop_logprobs_and_token_prompts(client):
    base = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0.0)
    echo = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0.0, echo=True)
    assert echo.choices[0].text == "Hello" + base.choices[0].text
    lp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0.0, logprobs=2).choices[0]
    assert len(lp.logprobs.tokens) == 3 and len(lp.logprobs.token_logprobs) == 3
    assert all(len(t) == 2 for t in lp.logprobs.top_logprobs)
    assert "".join(lp.logprobs.tokens) == lp.text and lp.logprobs.text_offset[0] == 0
    ids = client.completions.create(model=MODEL, prompt=[9707], max_tokens=6, temperature=0.0)  # 9707 = "Hello"
    assert ids.choices[0].text == base.choices[0].text
    stop_at = base.choices[0].text[2:4]
    stopped = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0.0, stop=[stop_at])
    assert stopped.choices[0].finish_reason == "stop" and stop_at not in stopped.choices[0].text


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": "a", "n": 2}, "n"),
        ({"prompt": "a", "logprobs": 9}, "logprobs"),
        ({"prompt": "a", "echo": True, "logprobs": 1}, "echo"),
        ({"prompt": ["a"] * 17}, "prompt"),
        ({"prompt": [151655]}, "prompt"),
    ],
)
def test_bad_requests_are_400(server, body, param):
    r = server.post("/v1/completions", json={"max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_fields_named(server):
    r = server.post("/v1/completions", json={"prompt": "a", "max_tokens": 1, "suffix": "x", "zzz": 1})
    assert r.status_code == 200 and set(r.headers["X-Ignored-Params"].split(",")) == {"suffix", "zzz"}
    with pytest.raises(openai.BadRequestError):
        server.openai().completions.create(model=MODEL, prompt="a", max_tokens=0)
