"""Hardening round 3 through a real server: huge request bodies refused by their counts
before anything walks them, with the event loop free meanwhile (a /health probe runs
beside each request), and tool parameters nested deeper than the template's encoder goes.

One server for the module.  The probe's bound is generous (a loaded 2-core machine);
bench/hardening.py (r3_items, r3_ids) prints the real figures.
"""

from __future__ import annotations

import json

import pytest
import requests

from tests.support.checks import openai_error
from tests.support.health_probe import while_probing

# Seconds: generous (a shared 2-core machine; reading a 55 MB body alone keeps /health
# waiting ~0.4 s, before any endpoint code).  These requests blocked it 13-18 s before.
STALL_BOUND = 2.5


@pytest.fixture(scope="module")
def srv(server_factory):
    with server_factory() as s:
        assert s.chat(max_tokens=1).status_code == 200  # engine loaded: the counts use its limit
        yield s


def _post_json(srv, path: str, body: bytes):
    return requests.post(srv.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=300)


def test_200k_empty_input_items_are_refused_without_stalling(srv):
    """6.6 MB: was a 400 after 4.6-7.4 s of a blocked loop and +687 MiB."""
    body = json.dumps({"input": [{"role": "user", "content": ""}] * 200_000}).encode()
    r, stall, _ = while_probing(srv.url, lambda: _post_json(srv, "/v1/responses", body))
    err = openai_error(r, 413, "too_many_values")
    assert "JSON values" in err["message"]
    assert stall < STALL_BOUND, stall


def test_more_items_than_tokens_are_an_overflow(srv):
    """Under the value budget (parsed on the hub) but more items than the prompt's tokens."""
    body = json.dumps({"input": [{"role": "user", "content": ""}] * 5000}).encode()
    err = openai_error(_post_json(srv, "/v1/responses", body), 400, "context_length_exceeded", "input")
    assert "5000 input items" in err["message"]
    body = json.dumps({"messages": [{"role": "user", "content": ""}] * 5000}).encode()
    openai_error(_post_json(srv, "/v1/chat/completions", body), 400, "context_length_exceeded", "messages")


def test_8m_token_ids_are_refused_without_stalling(srv):
    """55 MB of ids: the loop was blocked 1.8-4.2 s."""
    body = json.dumps({"prompt": list(range(100_000)) * 80, "max_tokens": 1}).encode()
    r, stall, _ = while_probing(srv.url, lambda: _post_json(srv, "/v1/completions", body))
    openai_error(r, 413, "too_many_values")
    assert stall < STALL_BOUND, stall
    # Under the budget: refused from its length, as the overflow it is.
    body = json.dumps({"prompt": list(range(50_000)), "max_tokens": 1}).encode()
    err = openai_error(_post_json(srv, "/v1/completions", body), 400, "context_length_exceeded", "prompt")
    assert "your prompt resulted in 50000 tokens" in err["message"]


def test_a_large_valid_body_is_still_served_off_the_hub(srv):
    """2 MB of text in 200 messages: parsed, validated and tokenized off the hub, then served
    (it fits: most of it is one repeated character the tokenizer merges)."""
    messages = [{"role": "user", "content": "hi"}] * 199 + [{"role": "user", "content": " " * 2_000_000}]
    r = _post_json(srv, "/v1/chat/completions", json.dumps({"messages": messages, "max_tokens": 1}).encode())
    assert r.status_code in (200, 400), r.text[:300]
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "context_length_exceeded"
    # Checked in the other thread, the request's context is still there: the model is checked.
    body = json.dumps({"messages": messages, "max_tokens": 1, "model": "gpt-4o"}).encode()
    openai_error(_post_json(srv, "/v1/chat/completions", body), 404, "model_not_found")
    items = [{"role": "user", "content": "x" * 1000}] * 100
    body = json.dumps({"input": items, "max_output_tokens": 1, "model": "gpt-4o"}).encode()
    openai_error(_post_json(srv, "/v1/responses", body), 404, "model_not_found")
    assert srv.get("/health").status_code == 200


@pytest.mark.parametrize("depth", [945, 949])
def test_tool_parameters_nested_past_the_encoder_are_a_400(srv, depth):
    """They passed the JSON parser and broke the chat template's tojson: a 500."""
    levels = (depth - 1) // 2
    schema = '{"type":"object","properties":{"x":' * levels + '{"type":"string"}' + "}}" * levels
    body = (
        '{"messages":[{"role":"user","content":"hi"}],"max_tokens":1,'
        f'"tools":[{{"type":"function","function":{{"name":"f","parameters":{schema}}}}}]}}'
    )
    err = openai_error(_post_json(srv, "/v1/chat/completions", body.encode()), 400, "invalid_value")
    assert err["param"] == "tools.0.function.parameters"


def test_logit_bias_superscript_id_is_a_400(srv):
    """ "²" is a digit to str.isdigit but not to int(): a 500 on both endpoints."""
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
    ):
        r = srv.post(path, json={**body, "max_tokens": 1, "logit_bias": {"²": 1, "1" * 5000: 1}})
        openai_error(r, 400, "invalid_value", "logit_bias")
