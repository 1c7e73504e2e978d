"""Serving core through a real gunicorn (gevent workers) with the official openai client."""
import json
import threading
import time

import openai
import pytest
import requests

from tests.conftest import API_KEY

MSG = [{"role": "user", "content": "Say hello in 中文 🤖"}]


def test_non_stream_completion_with_real_usage(server):
    client = server.openai()
    r = client.chat.completions.create(model="qwen3-vl-instruct", messages=MSG, max_tokens=7, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7
    # prompt tokens counted by the real tokenizer over the rendered ChatML prompt
    from qwen3vl_app.tokenizer import ChatTokenizer

    tok = ChatTokenizer(server.get("/health").json()["model_dir"])
    assert r.usage.prompt_tokens == len(tok.encode(tok.render(MSG)))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_stream_roles_finish_done_and_headers(server):
    r = server.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 6, "stream": True}, stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Accel-Buffering"] == "no"
    lines = [l for l in r.iter_lines(decode_unicode=True) if l]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(l[6:]) for l in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert all(d for d in deltas), "no empty deltas"


def test_openai_client_stream_matches_non_stream(server):
    client = server.openai()
    kw = dict(model="qwen3-vl-instruct", messages=MSG, max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw) if c.choices]
    assert "".join(parts) == full


def test_conversation_turns_are_honoured(server):
    """System prompt and earlier turns change the prompt the model sees (token count)."""
    client = server.openai()
    short = client.chat.completions.create(model="qwen3-vl-instruct", messages=MSG, max_tokens=1)
    long = client.chat.completions.create(model="qwen3-vl-instruct", max_tokens=1, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        *MSG,
    ])
    assert long.usage.prompt_tokens > short.usage.prompt_tokens + 10


def test_text_parts_list(server):
    r = server.post("/v1/chat/completions", json={"max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert r.status_code == 200, r.text


def test_health_fields(server):
    h = server.get("/health").json()
    for key in ("status", "details", "model", "model_dir", "max_concurrent", "api_auth_enabled", "timestamp",
                "version", "engine", "device"):
        assert key in h
    assert h["status"] == "healthy" and h["model"] == "qwen3-vl-instruct" and h["api_auth_enabled"] is True
    assert h["engine"] == "torch" and h["demo"] is True and "DEMO" in h["details"]


def test_models_list_and_retrieve(server):
    client = server.openai()
    models = client.models.list()
    assert [m.id for m in models.data] == ["qwen3-vl-instruct"]
    assert client.models.retrieve("qwen3-vl-instruct").id == "qwen3-vl-instruct"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    r = server.get("/v1/models/gpt-4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# --- auth -------------------------------------------------------------------------------

def _assert_error(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code:
        assert err["code"] == code
    return err


def test_auth_missing_wrong_prefix_wrong_key(server):
    _assert_error(requests.get(server.url + "/health"), 401, "invalid_api_key")
    _assert_error(requests.get(server.url + "/health", headers={"Authorization": f"Token {API_KEY}"}), 401)
    _assert_error(requests.get(server.url + "/health", headers={"Authorization": "Bearer nope"}), 401)
    _assert_error(requests.get(server.url + "/health", headers={"Authorization": API_KEY}), 401)
    assert requests.get(server.url + "/health", headers={"Authorization": f"bearer {API_KEY}"}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        server.openai(max_retries=0).with_options(api_key="wrong").models.list()


def test_custom_header_bare_key_and_several_keys(server_factory, tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("second-key-abcdef\n")
    with server_factory("--api-header", "X-API-Key", "--api-key-file", str(keyfile), api_key="first-key-123456") as s:
        for key in ("first-key-123456", "second-key-abcdef", "Bearer first-key-123456"):
            assert requests.get(s.url + "/health", headers={"X-API-Key": key}).status_code == 200, key
        _assert_error(requests.get(s.url + "/health", headers={"X-API-Key": "nope"}), 401)
        _assert_error(requests.get(s.url + "/health", headers={"Authorization": "Bearer first-key-123456"}), 401)
        log = s.log()
        assert "first-key-123456" not in log and "second-key-abcdef" not in log
        assert "firs…3456" in log


def test_auth_disabled_and_default_key_warning(server_factory):
    with server_factory("--disable-api-auth") as s:
        assert requests.get(s.url + "/v1/models").status_code == 200
        assert "DISABLED" in s.log()


def test_default_old_key_still_works_with_warning(server_factory):
    with server_factory(api_key="abc@123") as s:
        assert requests.get(s.url + "/health", headers={"Authorization": "Bearer abc@123"}).status_code == 200
        assert "public default API key" in s.log()


# --- error shapes -----------------------------------------------------------------------

@pytest.mark.parametrize("body,param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": MSG, "temperature": 5}, "temperature"),
    ({"messages": MSG, "temperature": "hot"}, "temperature"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "n": 2}, "n"),
    ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": MSG, "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
])
def test_validation_errors_name_the_param(server, body, param):
    err = _assert_error(server.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_malformed_bodies(server):
    h = {**server.headers, "Content-Type": "application/json"}
    _assert_error(requests.post(server.url + "/v1/chat/completions", data="{nope", headers=h), 400, "invalid_json")
    _assert_error(requests.post(server.url + "/v1/chat/completions", data="[1]", headers=h), 400, "invalid_json")
    _assert_error(requests.post(server.url + "/v1/chat/completions", data="x",
                                headers={**server.headers, "Content-Type": "text/plain"}), 415)
    _assert_error(server.get("/v1/nothing"), 404)
    _assert_error(server.get("/v1/chat/completions"), 405)


def test_unknown_fields_ignored(server):
    r = server.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1, "frobnicate": True})
    assert r.status_code == 200


def test_prompt_over_context_is_400(server):
    r = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "word " * 3000}]})
    err = _assert_error(r, 400, "invalid_prompt")
    assert "at most" in err["message"]


def test_request_id_echoed_or_created(server):
    r = server.get("/health", headers={**server.headers, "X-Request-Id": "abc-123"})
    assert r.headers["X-Request-Id"] == "abc-123"
    assert server.get("/health").headers["X-Request-Id"].startswith("req-")


# --- concurrency ------------------------------------------------------------------------

LONG = dict(messages=MSG, max_tokens=1500, temperature=0)


def test_health_answers_while_same_worker_generates(server_factory):
    with server_factory(workers=1) as s:
        done = {}

        def long_request():
            t0 = time.monotonic()
            r = s.post("/v1/chat/completions", json=LONG, timeout=300)
            done["status"], done["elapsed"] = r.status_code, time.monotonic() - t0
            done["pid"] = r.headers["X-Worker-Pid"]

        t = threading.Thread(target=long_request)
        t.start()
        _wait_running(s)
        latencies = []
        while t.is_alive() and len(latencies) < 10:
            t0 = time.monotonic()
            h = s.get("/health", timeout=10)
            latencies.append(time.monotonic() - t0)
            assert h.status_code == 200 and h.json()["running"] == 1
            pid = h.json()["worker_pid"]
            time.sleep(0.05)
        t.join()
        assert done["status"] == 200 and str(pid) == done["pid"]
        assert len(latencies) >= 5, "generation too short to prove anything"
        print(f"/health during generation: max {max(latencies)*1000:.0f} ms, generation {done['elapsed']:.1f} s")
        # Answers came back while the generation was still running; each well before it ended.
        assert max(latencies) < done["elapsed"] / 4


def test_two_workers_generate_at_the_same_time(server_factory):
    # With no queue, a busy worker refuses at once; the openai client retries until an idle
    # worker takes the request.  Two overlapping successes therefore ran on two workers.
    with server_factory("--max-queue", "0", workers=2) as s:
        client = s.openai(max_retries=50)
        spans = []

        def one():
            t0 = time.monotonic()
            raw = client.chat.completions.with_raw_response.create(model="qwen3-vl-instruct", **LONG)
            spans.append((raw.headers["X-Worker-Pid"], t0, time.monotonic()))

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (p1, s1, e1), (p2, s2, e2) = spans
        assert p1 != p2
        assert max(s1, s2) < min(e1, e2)


def _wait_running(s, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.get("/health").json()["running"]:
            return
        time.sleep(0.05)
    raise AssertionError("generation never started")
