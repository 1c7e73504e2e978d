"""Structured outputs through the real server and the official client: constrained
decoding makes even the random-weight tiny model answer with JSON that validates."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "qwen3-vl-instruct"  # the served name (another name is a 404)


class Weather(BaseModel):
    city: Literal["Paris", "Rome", "Tokyo"]
    temperature_c: int = Field(ge=-60, le=60)
    sunny: bool
    note: str = Field(max_length=40)


class Report(BaseModel):
    days: list[Weather] = Field(min_length=1, max_length=3)
    summary: Literal["good", "bad"]


MSG = [{"role": "user", "content": "Weather report as JSON, please."}]


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parse_returns_a_validated_pydantic_object(client, seed):
    out = client.chat.completions.parse(
        model=MODEL, messages=MSG, response_format=Report, max_tokens=400, temperature=1.0, seed=seed
    )
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Report)
    assert Report.model_validate_json(choice.message.content) == choice.message.parsed


def test_parse_streamed(client):
    with client.chat.completions.stream(
        model=MODEL, messages=MSG, response_format=Weather, max_tokens=200, seed=7
    ) as s:
        final = s.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Weather)


def test_json_object_mode_gives_an_object(client):
    out = client.chat.completions.create(
        model=MODEL, messages=MSG, response_format={"type": "json_object"}, max_tokens=300, temperature=0.0
    )
    choice = out.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:  # an unconstrained object may run out of tokens; what was produced is still a JSON prefix
        assert choice.message.content.startswith("{")


def test_uncompilable_schema_is_a_400_naming_the_problem(client):
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "no-such-type"}}}},
    }
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSG, response_format=bad, max_tokens=5)
    err = e.value.body
    assert err["param"] == "response_format" and err["code"] == "invalid_schema"
    assert "no-such-type" in err["message"]


def test_logit_bias_forces_and_bans_tokens(client, tiny_model_dir):
    # +100 on one token: greedy output is that token over and over
    out = client.chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=4, temperature=0.0, logit_bias={"9707": 100}
    )
    assert out.choices[0].message.content == "Hello" * 4
    # -100 on whatever greedy picks first: it is never picked
    free = client.chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=2
    )
    first, second = free.choices[0].logprobs.content[0].top_logprobs
    banned = client.chat.completions.create(
        model=MODEL,
        messages=MSG,
        max_tokens=1,
        temperature=0.0,
        logprobs=True,
        logit_bias={str(_token_id(tiny_model_dir, first.bytes)): -100},
    )
    assert banned.choices[0].logprobs.content[0].bytes == second.bytes


def _token_id(model_dir, raw: list[int]) -> int:
    from qwen3vl_app.tokenizer import ChatTokenizer

    ids = ChatTokenizer(model_dir).encode(bytes(raw).decode("utf-8"))
    assert len(ids) == 1
    return ids[0]


@pytest.mark.parametrize("bias", [{"abc": 1}, {"5": 101}, {"999999": 1}, {"5": "x"}])
def test_bad_logit_bias_is_a_400(client, bias):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=1, logit_bias=bias)
    assert e.value.body["param"] == "logit_bias"


def test_unknown_and_unimplemented_fields_are_named(server):
    r = server.post(
        "/v1/chat/completions",
        json={
            "messages": MSG,
            "max_tokens": 2,
            "store": True,
            "metadata": {"a": "b"},
            "frobnicate": 1,
            "temperature": 0.5,
        },
    )
    assert r.status_code == 200
    assert set(r.headers["X-Ignored-Params"].split(",")) == {"store", "metadata", "frobnicate"}
    r = server.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
    assert r.headers["X-Ignored-Params"] == ""


def test_image_detail_low_costs_fewer_tokens(client):
    import base64

    from tests.support.media_samples import image_bytes

    url = "data:image/png;base64," + base64.b64encode(image_bytes("PNG", h=900, w=1200)).decode()

    def prompt_tokens(detail):
        part = {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}
        out = client.chat.completions.create(
            model=MODEL,
            max_tokens=1,
            messages=[{"role": "user", "content": [part, {"type": "text", "text": "What is this?"}]}],
        )
        return out.usage.prompt_tokens

    low, high, auto, unset = (prompt_tokens(d) for d in ("low", "high", "auto", None))
    assert high == auto == unset > low
    assert low < 300  # <= 256 vision tokens + the text


def test_constrained_slots_in_a_continuous_batch(server_factory):
    """--max-batch 2: constrained and free sequences share decode steps; each slot keeps its
    own grammar, so both structured answers validate and the free one is untouched."""
    from concurrent.futures import ThreadPoolExecutor

    with server_factory("--max-batch", "2", workers=1) as s:
        client = s.openai()

        def parsed(seed):
            out = client.chat.completions.parse(
                model=MODEL, messages=MSG, response_format=Weather, max_tokens=200, seed=seed, temperature=1.0
            )
            return out.choices[0].message.parsed

        def free():
            return client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=40, temperature=0.0)

        alone = free().choices[0].message.content
        with ThreadPoolExecutor(3) as pool:
            jobs = [pool.submit(parsed, 1), pool.submit(parsed, 2), pool.submit(free)]
            results = [j.result() for j in jobs]
        assert isinstance(results[0], Weather) and isinstance(results[1], Weather)
        assert results[2].choices[0].message.content == alone
