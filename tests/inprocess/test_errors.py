"""Bad requests and failures, in-process: every one is OpenAI's error body with the right
status, type, param and code -- never a 500 for bad input, never exception text."""

from __future__ import annotations

import logging

import openai
import pytest

from tests.support.checks import openai_error
from tests.support.sse import sse_events

MSG = [{"role": "user", "content": "Say hello in 中文 🤖"}]
CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    "body,param",
    [
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
    ],
)
def test_validation_errors_name_the_param(inproc, body, param):
    err = openai_error(inproc.post(CHAT, json=body), 400, "invalid_value", param)
    assert err["type"] == "invalid_request_error"
    assert inproc.engine.prompts == []


@pytest.mark.parametrize(
    "body,ctype,status,code",
    [
        ("{nope", "application/json", 400, "invalid_json"),
        ('{"messages": [', "application/json", 400, "invalid_json"),
        ("", "application/json", 400, "invalid_json"),
        ("[1, 2]", "application/json", 400, "invalid_json"),
        ('"text"', "application/json", 400, "invalid_json"),
        (b'{"messages": "\xff\xfe"}', "application/json", 400, "invalid_json"),
        ("messages=hi", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ('{"messages": []}', "text/plain", 415, "unsupported_media_type"),
        ('{"messages": []}', None, 415, "unsupported_media_type"),
    ],
)
def test_bad_chat_bodies(inproc, body, ctype, status, code):
    headers = dict(inproc.headers)
    if ctype:
        headers["Content-Type"] = ctype
    openai_error(inproc.post(CHAT, data=body, headers=headers), status, code)


def test_http_level_errors(inproc):
    openai_error(inproc.get("/v1/nothing"), 404, "not_found")
    openai_error(inproc.get(CHAT), 405, "method_not_allowed")
    openai_error(inproc.request("PUT", "/v1/models"), 405)
    openai_error(inproc.post("/v1/models/qwen3-vl-instruct"), 405)


def test_body_over_the_limit_is_413(inproc_factory):
    app = inproc_factory(max_body_bytes=65536)
    big = {"messages": [{"role": "user", "content": "x" * 131072}]}
    err = openai_error(app.post(CHAT, json=big), 413)
    assert err["type"] == "invalid_request_error"
    openai_error(app.post("/v1/media/describe", data={"file": (_bytes_io(b"\x89PNG" + b"0" * 131072), "a.png")}), 413)
    assert app.chat(MSG, max_tokens=1).status_code == 200  # under the limit: served


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def test_unknown_fields_ignored(inproc):
    assert inproc.chat(MSG, max_tokens=1, frobnicate=True).status_code == 200


def test_prompt_over_context_is_400(inproc):
    """Worded as OpenAI and vLLM word it, so clients recognise a context overflow."""
    err = openai_error(inproc.chat([{"role": "user", "content": "word " * 3000}]), 400, "context_length_exceeded")
    assert err["param"] == "messages"
    assert err["message"].startswith("This model's maximum context length is 2047 tokens. However, your messages ")
    # 2047: one position is left for the reply
    assert err["message"].endswith("Please reduce the length of the messages (prompt is too long).")
    assert inproc.engine.prompts == []


def test_max_prompt_tokens_setting(inproc_factory):
    app = inproc_factory(max_prompt_tokens=20)
    assert app.chat([{"role": "user", "content": "hi"}], max_tokens=1).status_code == 200
    err = openai_error(app.chat([{"role": "user", "content": "word " * 30}]), 400, "context_length_exceeded")
    assert "maximum context length is 20 tokens" in err["message"]


def test_server_full_is_a_503_with_retry_after(inproc_factory):
    """The server-wide admission limit: with every slot taken the next request is refused at once."""
    app = inproc_factory(max_concurrent=1)
    ticket = app.state.admission.try_acquire()  # another request holds the only slot
    try:
        r = app.chat(MSG, max_tokens=1)
        err = openai_error(r, 503, "server_busy")
        assert err["type"] == "server_overloaded" and int(r.headers["Retry-After"]) >= 1
    finally:
        ticket.release()
    assert app.chat(MSG, max_tokens=1).status_code == 200


def test_worker_queue_full_is_a_503_with_retry_after(inproc_factory):
    """This worker's engine is busy and its queue (--max-queue 0) is full: refused at once."""
    app = inproc_factory(max_queue=0)
    with app.state.runner.turn():  # another generation holds the engine
        r = app.chat(MSG, max_tokens=1)
        err = openai_error(r, 503, "server_busy")
        assert "capacity" in err["message"] and int(r.headers["Retry-After"]) >= 1
        assert app.get("/health").get_json()["running"] == 1
    assert app.chat(MSG, max_tokens=1).status_code == 200
    assert app.state.admission.in_use() == 0  # the refused request gave its slot back


def test_draining_worker_refuses_new_requests(inproc):
    inproc.state.runner.begin_drain(5)
    r = inproc.chat(MSG, max_tokens=1)
    openai_error(r, 503, "server_shutting_down")
    assert r.headers["Retry-After"]


def test_engine_that_fails_to_load_is_a_503(inproc_factory):
    def broken():
        raise RuntimeError("device 0 not found")

    app = inproc_factory(load_fn=broken)
    r = app.chat(MSG, max_tokens=1)
    err = openai_error(r, 503, "model_unavailable")
    assert "device 0 not found" in err["message"] and r.headers["Retry-After"]
    h = app.get("/health")
    assert h.status_code == 503 and h.get_json()["status"] == "unhealthy"


# ----------------------------------------------------------------------------- engine failures


@pytest.mark.parametrize("step", ["prefill", "decode"])
def test_engine_failure_is_a_500_with_the_request_id(inproc, caplog, step):
    assert inproc.chat(MSG, max_tokens=4).status_code == 200
    inproc.engine.fail_next = step
    rid = f"fault-{step}-1"
    r = inproc.chat(MSG, max_tokens=8, headers={"X-Request-Id": rid})
    err = openai_error(r, 500, "internal_error")
    assert err["type"] == "server_error" and rid in err["message"] and r.headers["X-Request-Id"] == rid
    assert "fake engine failure" not in r.text  # no exception text leaks
    assert inproc.engine.fail_next is None, "the failure did not happen"
    # The app keeps serving, its engine works, nothing is left running or queued.
    for _ in range(3):
        assert inproc.chat(MSG, max_tokens=4).status_code == 200
    h = inproc.get("/health").get_json()
    assert h["status"] == "healthy" and h["running"] == 0 and h["queued"] == 0
    assert any(rid in rec.getMessage() and rec.exc_info for rec in caplog.records)  # traceback, under the id


def test_stream_engine_failure_is_an_error_event_then_the_end(inproc):
    inproc.engine.fail_next = "decode"
    r = inproc.post(
        CHAT,
        json={"messages": MSG, "max_tokens": 8, "stream": True},
        headers={**inproc.headers, "X-Request-Id": "fault-stream-1"},
    )
    assert r.status_code == 200  # the headers went out before the engine failed
    events = sse_events(r)
    assert "[DONE]" not in events
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    last = events[-1]
    assert set(last) == {"error"} and last["error"]["code"] == "internal_error"
    assert "fault-stream-1" in last["error"]["message"]

    # The official client turns that event into an exception instead of returning silently.
    inproc.engine.fail_next = "prefill"
    with pytest.raises(openai.APIError):
        for _ in inproc.openai().chat.completions.create(
            model="qwen3-vl-instruct", messages=MSG, max_tokens=8, stream=True
        ):
            pass
    assert sse_events(inproc.post(CHAT, json={"messages": MSG, "max_tokens": 2, "stream": True}))[-1] == "[DONE]"


def test_media_describe_engine_failure(inproc):
    from tests.support.media_samples import png_bytes

    def upload(**form):
        return inproc.post("/v1/media/describe", data={"file": (_bytes_io(png_bytes()), "a.png"), **form})

    inproc.engine.fail_next = "prefill"
    openai_error(upload(max_tokens="4"), 500, "internal_error")
    inproc.engine.fail_next = "decode"
    events = sse_events(upload(max_tokens="4", stream="true"))
    assert "error" in events[-1] and "[DONE]" not in events
    events = sse_events(upload(max_tokens="4", stream="true"))
    assert events[-1] == "[DONE]" and events[-2]["status"] == "success"


def test_unexpected_errors_are_logged_not_shown(inproc, caplog, monkeypatch):
    """A bug outside the engine (here: building the prompt) is a generic 500 with the request id."""
    from qwen3vl_app.prompt import build as prompting

    def broken(*a, **kw):
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(prompting, "build_prompt", broken)
    caplog.set_level(logging.ERROR)
    r = inproc.chat(MSG, max_tokens=1, headers={"X-Request-Id": "bug-1"})
    err = openai_error(r, 500, "internal_error")
    assert "bug-1" in err["message"] and "secret detail" not in r.text
    assert "secret detail" in caplog.text
