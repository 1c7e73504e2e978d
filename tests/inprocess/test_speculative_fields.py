"""An engine that cannot verify drafts (the fake one here, like the bm1684x one today)
answers requests with `prediction` / `speculative_tokens` as usual and names both in
X-Ignored-Params; no usage details claim a speculation that did not happen."""

from __future__ import annotations

MSG = [{"role": "user", "content": "Copy: alpha beta gamma"}]


def test_engine_without_verify_names_the_speculative_fields(inproc):
    r = inproc.chat(
        MSG, max_tokens=4, temperature=0, prediction={"type": "content", "content": "alpha beta"}, speculative_tokens=4
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.headers["X-Ignored-Params"] == "speculative_tokens,prediction"
    assert "completion_tokens_details" not in r.get_json()["usage"]
    plain = inproc.chat(MSG, max_tokens=4, temperature=0)
    assert plain.headers["X-Ignored-Params"] == ""
    assert plain.get_json()["choices"][0]["message"] == r.get_json()["choices"][0]["message"]


def test_completions_endpoint_takes_speculative_tokens(inproc):
    r = inproc.post("/v1/completions", json={"prompt": "alpha beta", "max_tokens": 3, "speculative_tokens": 2})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.headers["X-Ignored-Params"] == "speculative_tokens"
    bad = inproc.post("/v1/completions", json={"prompt": "alpha", "max_tokens": 3, "speculative_tokens": 33})
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "speculative_tokens"
