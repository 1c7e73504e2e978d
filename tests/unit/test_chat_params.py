"""Request -> SamplingParams, and what a device-greedy engine reports it cannot honour."""

import pytest

from qwen3vl_app.errors import APIError
from qwen3vl_app.protocol import GenerationRequest
from qwen3vl_app.serving import ignored_params, sampling_params
from qwen3vl_app.settings import Settings

DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.0}


def test_generation_config_defaults_and_request_overrides():
    p = sampling_params(GenerationRequest(), DEFAULTS, Settings(), logits=True)
    assert (p.temperature, p.top_p, p.top_k, p.max_tokens) == (0.7, 0.8, 20, Settings().max_tokens_default)
    p = sampling_params(GenerationRequest(temperature=0, top_k=5, max_tokens=4), DEFAULTS, Settings(), logits=True)
    assert (p.temperature, p.top_k, p.max_tokens, p.greedy) == (0, 5, 4, True)
    p = sampling_params(GenerationRequest(logit_bias=((3, 1.0),)), DEFAULTS, Settings(), True, {7: float("-inf")})
    assert dict(p.logit_bias) == {3: 1.0, 7: float("-inf")}  # the output plan's bias joins the request's


def test_the_schema_loads_a_typed_frozen_request():
    import dataclasses

    from qwen3vl_app.api.chat_schema import ChatCompletionRequestSchema
    from qwen3vl_app.api.completions_schema import CompletionRequestSchema

    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
        "max_completion_tokens": 4,
        "stop": "x",
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {"5": 1},
        "tool_choice": "none",
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    req = ChatCompletionRequestSchema().load(body)
    assert (req.max_tokens, req.stop, req.stream, req.include_usage) == (4, ("x",), True, True)
    assert req.logit_bias == ((5, 1.0),) and req.tool_choice.mode == "none" and req.temperature is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.max_tokens = 5  # type: ignore[misc]
    legacy = CompletionRequestSchema().load({"prompt": [[1, 2]], "logprobs": 3})
    assert (legacy.prompts, legacy.logprobs, legacy.top_logprobs, legacy.max_tokens) == (((1, 2),), True, 3, 16)


def test_greedy_only_engine_names_ignored_params_and_refuses_logprobs():
    req = {"temperature": 0.9, "seed": 1, "top_p": None}
    assert ignored_params(req, logits=False) == ["temperature", "seed"]
    assert ignored_params(req, logits=True) == []
    with pytest.raises(APIError) as e:
        sampling_params(GenerationRequest(logprobs=True), DEFAULTS, Settings(), logits=False)
    assert e.value.param == "logprobs" and e.value.status == 400


def test_ignored_params_name_every_unhonoured_field_header_safe():
    from qwen3vl_app.serving import ignored_header

    body = {"messages": [], "store": True, "z\u00b3\x0e": 1, "temperature": 0.5, "user": None}
    names = ignored_params(body, logits=True, honoured=frozenset({"messages", "temperature"}))
    assert names == ["store", "z\u00b3\x0e"]  # null fields count as not set
    assert ignored_params(body, logits=False, honoured=frozenset({"messages", "temperature"}))[0] == "temperature"
    assert ignored_header(names) == {"X-Ignored-Params": "store,z%C2%B3%0E"}
    long = ignored_header([f"field{i}" for i in range(1000)])["X-Ignored-Params"]
    assert len(long) <= 2010 and long.endswith(",...")
