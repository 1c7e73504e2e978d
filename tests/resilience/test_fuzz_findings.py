"""Bugs the fuzzing work found, each pinned: they were 500s (see docs/api-contract.md).
The HTTP ones run in-process, over the FakeEngine."""

from __future__ import annotations

import numpy as np
import pytest

from qwen3vl_app.engine.sampling import Sampler, SamplingParams
from tests.support.checks import openai_error

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "kw",
    [
        {"repetition_penalty": 5e-324},  # schemathesis: logits / 5e-324 = inf, inf - inf = NaN -> rng.choice raised
        {"repetition_penalty": 5e-324, "temperature": 2.0, "top_p": 0.5},
        {"repetition_penalty": 10.0, "temperature": 1.1e-5},  # tiny temperature overflows float32
        {"presence_penalty": -2.0, "frequency_penalty": -2.0, "logprobs": True, "top_logprobs": 20},
    ],
)
def test_sampler_survives_extreme_valid_parameters(kw):
    rng = np.random.default_rng(0)
    sampler = Sampler(SamplingParams(seed=3, **kw), [1, 2, 3, 5, 8])
    for _ in range(10):
        logits = (rng.standard_normal(500) * 30).astype(np.float32)
        logits[[2, 5]] = [3e38, -3e38]
        choice = sampler.choose(logits)
        assert 0 <= choice.token_id < 500
        if kw.get("logprobs"):
            assert np.isfinite(choice.logprob) or choice.logprob == -np.inf


def test_extreme_repetition_penalty_is_served(inproc):
    r = inproc.post(
        "/v1/chat/completions",
        json={"messages": MSG, "max_tokens": 3, "repetition_penalty": 5e-324, "temperature": 1.0},
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100000 + "]" * 100000,  # RecursionError in the JSON parser
        '{"messages": ' + "[" * 50000 + "]" * 50000 + "}",
    ],
)
def test_deeply_nested_json_is_a_400(inproc, body):
    r = inproc.post("/v1/chat/completions", data=body, headers={**inproc.headers, "Content-Type": "application/json"})
    assert openai_error(r, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\udfffb"'])
def test_lone_surrogate_is_a_400(inproc, text):
    for body in (
        '{"messages": [{"role": "user", "content": ' + text + '}], "max_tokens": 2}',
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": ' + text + '}]}], "max_tokens": 2}',
    ):
        r = inproc.post(
            "/v1/chat/completions", data=body, headers={**inproc.headers, "Content-Type": "application/json"}
        )
        err = openai_error(r, 400)
        assert err["code"] == "invalid_json" and "surrogate" in err["message"]


def test_surrogate_pair_is_fine(inproc):
    body = '{"messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}], "max_tokens": 2}'
    r = inproc.post("/v1/chat/completions", data=body, headers={**inproc.headers, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/responses", {"input": "hi"}),
    ],
)
def test_unknown_field_with_control_characters_is_named_header_safe(server, path, body):
    # schemathesis sent {"z\u00b3\u000e": null, ...} with a value: the raw name in X-Ignored-Params
    # made gunicorn refuse the response header (a traceback and a dropped reply)
    r = server.post(path, json={**body, "max_tokens": 1, "max_output_tokens": 1, "z\u00b3\u000e": 1})
    assert r.status_code == 200, r.text
    assert "z%C2%B3%0E" in r.headers["X-Ignored-Params"].split(",")
