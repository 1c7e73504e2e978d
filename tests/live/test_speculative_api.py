"""Speculative decoding through the real server and the official openai client: OpenAI's
`prediction` and the `speculative_tokens` extension change how many tokens an engine step
yields, never the answer; usage reports accepted/rejected draft tokens, /metrics the
acceptance, the request log the tokens per step; bad values are a 400."""

from __future__ import annotations

import openai
import pytest

from tests.support.polling import wait_for
from tests.support.prometheus import scrape, total

MESSAGES = [{"role": "user", "content": "Copy the plate number KA-01-AB-1234 and the colour dark blue."}]
BASE = {
    "model": "qwen3-vl-instruct",
    "messages": MESSAGES,
    "temperature": 0,
    "max_tokens": 24,
    "frequency_penalty": 1.5,
}


def test_prediction_gives_the_same_answer_in_fewer_steps(server):
    client = server.openai()
    plain = client.chat.completions.create(**BASE)
    text = plain.choices[0].message.content
    assert plain.usage.completion_tokens_details is None  # nothing speculative: no details
    raw = client.chat.completions.with_raw_response.create(
        **BASE, prediction={"type": "content", "content": text}, extra_headers={"X-Request-Id": "spec-pred-1"}
    )
    assert "prediction" not in raw.headers["X-Ignored-Params"]
    spec = raw.parse()
    assert spec.choices[0].message.content == text
    details = spec.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0
    assert details.rejected_prediction_tokens >= 0
    assert spec.usage.completion_tokens == plain.usage.completion_tokens
    line = wait_for(lambda: next((ln for ln in server.log().splitlines() if "id=spec-pred-1" in ln), None))
    tps = float(line.split("tokens_per_step=")[1].split()[0])
    assert tps > 1.5, line
    assert f"draft_accepted={details.accepted_prediction_tokens}" in line
    samples = scrape(server)
    assert total(samples, "qwen3vl_draft_tokens_total", result="accepted") >= details.accepted_prediction_tokens
    assert 0 < total(samples, "qwen3vl_draft_acceptance_ratio") <= 1


def test_speculative_tokens_in_a_stream_with_usage(server):
    client = server.openai()
    plain = client.chat.completions.create(**BASE)
    stream = client.chat.completions.create(
        **BASE, stream=True, stream_options={"include_usage": True}, extra_body={"speculative_tokens": 6}
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == plain.choices[0].message.content
    assert usage is not None and usage.completion_tokens_details is not None
    d = usage.completion_tokens_details
    assert d.accepted_prediction_tokens + d.rejected_prediction_tokens >= 0


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"speculative_tokens": 99}, "speculative_tokens"),
        ({"speculative_tokens": -1}, "speculative_tokens"),
        ({"prediction": {"type": "text", "content": "x"}}, "prediction"),
        ({"prediction": {"type": "content", "content": [{"type": "image_url"}]}}, "prediction"),
        ({"prediction": "plain string"}, "prediction"),
    ],
)
def test_bad_speculative_fields_are_a_400_naming_them(server, extra, field):
    r = server.post("/v1/chat/completions", json={**BASE, **extra})
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["param"], r.json()


def test_prediction_as_text_parts(server):
    client = server.openai()
    text = client.chat.completions.create(**BASE).choices[0].message.content
    half = len(text) // 2
    parts = [{"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}]
    spec = client.chat.completions.create(**BASE, prediction={"type": "content", "content": parts})
    assert spec.choices[0].message.content == text
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**BASE, prediction={"type": "content", "content": 3})
