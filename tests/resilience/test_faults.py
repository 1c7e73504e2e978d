"""Engine failures inside a real server: the failing request gets a 500 in OpenAI format
(or, once a stream has started, an error event and the end of the stream) carrying the
request id; the worker recovers, or is replaced when the failure kills it.

Faults come from the test-only hook in qwen3vl_app/engine/faults.py (QWEN3VL_FAULT_INJECT
names a trigger file; writing a step name into it makes that engine step fail once).
"""
from __future__ import annotations

import os
import signal
import time

import openai
import pytest
import requests

from tests.conftest import API_KEY, wait_healthy

from .helpers import openai_error, png_bytes, sse_events

MSG = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def faulty(server_factory, tmp_path_factory):
    trigger = tmp_path_factory.mktemp("fault") / "trigger"
    with server_factory(api_key=API_KEY, workers=1, env={"QWEN3VL_FAULT_INJECT": str(trigger)}) as s:
        s.trigger = trigger
        yield s


def arm(server, step: str) -> None:
    server.trigger.write_text(step)


def ok(server, **kw):
    r = server.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 4, **kw})
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("step", ["prefill", "decode"])
def test_non_stream_engine_failure_is_a_500_with_request_id(faulty, step):
    pid = ok(faulty).headers["X-Worker-Pid"]
    arm(faulty, step)
    rid = f"fault-{step}-1"
    r = faulty.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 8},
                    headers={**faulty.headers, "X-Request-Id": rid})
    err = openai_error(r, 500)
    assert err["type"] == "server_error" and err["code"] == "internal_error"
    assert rid in err["message"] and r.headers["X-Request-Id"] == rid
    assert "injected" not in r.text.lower() and "Traceback" not in r.text  # no exception text leaks
    assert not faulty.trigger.exists(), "the fault did not fire"
    # The same worker keeps serving, and its engine works.
    for _ in range(3):
        assert ok(faulty).headers["X-Worker-Pid"] == pid
    h = faulty.get("/health").json()
    assert h["status"] == "healthy" and h["running"] == 0 and h["queued"] == 0
    assert rid in faulty.log()  # the traceback is logged under the request id


def test_stream_engine_failure_is_an_error_event_then_the_end(faulty):
    arm(faulty, "decode")
    rid = "fault-stream-1"
    r = faulty.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 8, "stream": True},
                    headers={**faulty.headers, "X-Request-Id": rid}, stream=True)
    assert r.status_code == 200  # headers were sent before the engine failed
    events = sse_events(r)
    assert "[DONE]" not in events
    last = events[-1]
    assert set(last) == {"error"} and last["error"]["code"] == "internal_error" and rid in last["error"]["message"]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"

    # The official client turns that event into an exception instead of hanging or returning silently.
    arm(faulty, "prefill")
    client = faulty.openai(max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="qwen3-vl-instruct", messages=MSG, max_tokens=8, stream=True):
            pass
    ok(faulty, stream=True)


def test_media_describe_engine_failure(faulty):
    arm(faulty, "prefill")
    files = {"file": ("a.png", png_bytes(), "image/png")}
    r = faulty.post("/v1/media/describe", files=files, data={"max_tokens": "4"})
    openai_error(r, 500)
    r = faulty.post("/v1/media/describe", files=files, data={"max_tokens": "4", "stream": "true"}, stream=True)
    events = sse_events(r)
    assert r.status_code == 200 and events[-1] == "[DONE]" and events[-2]["status"] == "success"  # one-shot fault
    arm(faulty, "decode")
    r = faulty.post("/v1/media/describe", files=files, data={"max_tokens": "4", "stream": "true"}, stream=True)
    events = sse_events(r)
    assert "error" in events[-1] and "[DONE]" not in events


def test_worker_dying_in_the_engine_is_replaced(faulty):
    old = set(faulty.worker_pids())
    arm(faulty, "exit")
    t0 = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        faulty.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 4}, timeout=60)
    assert time.monotonic() - t0 < 30, "the client was left hanging"
    wait_healthy(faulty, 1, 120)
    new = set(faulty.worker_pids())
    assert new and not (new & old), (old, new)
    assert ok(faulty).headers["X-Worker-Pid"] in {str(p) for p in new}


def test_model_folder_gone_then_a_worker_crash(server_factory, tiny_model_dir, tmp_path):
    """The folder disappears under a running server and a worker dies: the replacement must
    boot anyway and answer 503 (it used to fail to boot, and gunicorn then halted the whole
    server, healthy worker included).  With the folder back, a HUP brings every worker back."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    with server_factory(api_key=API_KEY, workers=2, model_dir=model) as s:
        old = set(s.worker_pids())
        model.rename(tmp_path / "moved")
        victim = sorted(old)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(s.worker_pids()) < 2 or victim in s.worker_pids()):
            assert s.proc.poll() is None, "gunicorn halted:\n" + s.log()[-3000:]
            time.sleep(0.2)
        time.sleep(2)
        assert s.proc.poll() is None, "gunicorn halted:\n" + s.log()[-3000:]
        new = (set(s.worker_pids()) - old).pop()
        seen = {}
        for _ in range(40):  # fresh connections land on either worker
            r = requests.post(s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2},
                              headers={**s.headers, "Connection": "close"}, timeout=30)
            pid = int(r.headers["X-Worker-Pid"])
            seen.setdefault(pid, set()).add(r.status_code)
            if r.status_code != 200:
                err = openai_error(r, 503)
                assert err["code"] == "model_unavailable" and r.headers.get("Retry-After")
            if len(seen) == 2:
                break
        assert seen.get(new) == {503} and seen.get(max(old)) == {200}, seen
        h = requests.get(s.url + "/health", headers={**s.headers, "Connection": "close"}, timeout=10)
        assert h.status_code in (200, 503) and h.json()["status"] in ("healthy", "unhealthy")
        # the folder is back: a reload (HUP) replaces every worker and all are healthy again
        (tmp_path / "moved").rename(model)
        os.kill(s.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (len(s.worker_pids()) != 2 or set(s.worker_pids()) & (old | {new})):
            time.sleep(0.2)
        fresh = set(s.worker_pids())
        assert len(fresh) == 2 and not fresh & (old | {new}), fresh
        healthy = set()
        while time.monotonic() < deadline and healthy != fresh:
            r = requests.get(s.url + "/health", headers={**s.headers, "Connection": "close"}, timeout=10)
            if r.status_code == 200 and r.json()["status"] == "healthy":
                healthy.add(r.json()["worker_pid"])
            time.sleep(0.05)
        assert healthy == fresh
