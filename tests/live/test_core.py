"""The serving core through a real gunicorn (gevent workers, tiny torch model): the official
openai client end to end, streaming through real sockets, the CLI's auth and logging flags,
and concurrency within and across workers.  The HTTP contract itself (validation, auth
variants, error shapes) is tested in-process: tests/inprocess."""

import threading
import time

import requests

from tests.support.live import wait_running
from tests.support.sse import sse_events

MSG = [{"role": "user", "content": "Say hello in 中文 🤖"}]


def test_non_stream_completion_with_real_usage(server, tiny_tokenizer):
    client = server.openai()
    r = client.chat.completions.create(model="qwen3-vl-instruct", messages=MSG, max_tokens=7, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7
    # prompt tokens counted by the real tokenizer over the rendered ChatML prompt
    assert r.usage.prompt_tokens == len(tiny_tokenizer.encode(tiny_tokenizer.render(MSG)))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_stream_roles_finish_done_and_headers(server):
    r = server.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 6, "stream": True}, stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in r.headers
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)


def test_openai_client_stream_matches_non_stream(server):
    client = server.openai()
    kw = dict(model="qwen3-vl-instruct", messages=MSG, max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw) if c.choices]
    assert "".join(parts) == full


# --- the CLI's auth and logging flags ------------------------------------------------------


def test_keys_from_flag_and_file_custom_header_masked_log(server_factory, tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("second-key-abcdef\nabc@123\n")
    with server_factory("--api-header", "X-API-Key", "--api-key-file", str(keyfile), api_key="first-key-123456") as s:
        for key in ("first-key-123456", "second-key-abcdef", "abc@123", "Bearer first-key-123456"):
            assert requests.get(s.url + "/health", headers={"X-API-Key": key}).status_code == 200, key
        assert requests.get(s.url + "/health", headers={"X-API-Key": "nope"}).status_code == 401
        assert requests.get(s.url + "/health", headers={"Authorization": "Bearer first-key-123456"}).status_code == 401
        log = s.log()
        assert "first-key-123456" not in log and "second-key-abcdef" not in log
        assert "firs…3456" in log
        assert "public default API key" in log  # abc@123, the old service's key, is in the file


def test_auth_off_and_log_level(server_factory):
    with server_factory("--disable-api-auth", "-l", "WARNING") as s:
        assert requests.get(s.url + "/v1/models").status_code == 200
        r = requests.post(s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
        log = s.log()
        assert "DISABLED" in log  # a WARNING
        assert "request id=" not in log  # INFO lines are below -l WARNING


# --- concurrency ------------------------------------------------------------------------

LONG = dict(messages=MSG, max_tokens=1500, temperature=0)


def test_health_answers_while_same_worker_generates(server_factory):
    with server_factory(workers=1) as s:
        done = {}

        def long_request():
            r = s.post("/v1/chat/completions", json=LONG, timeout=300)
            done["status"], done["pid"] = r.status_code, r.headers["X-Worker-Pid"]

        t = threading.Thread(target=long_request)
        t.start()
        pid = wait_running(s)["worker_pid"]
        answers = []
        while t.is_alive() and len(answers) < 10:
            t0 = time.monotonic()
            h = s.get("/health", timeout=10)
            answers.append(time.monotonic() - t0)
            # Answered by the same worker while its generation was still running.
            assert h.status_code == 200 and h.json()["running"] == 1 and h.json()["worker_pid"] == pid
        t.join()
        assert done["status"] == 200 and str(pid) == done["pid"]
        assert len(answers) >= 5, "generation too short to prove anything"
        print(f"/health during generation: {len(answers)} answers, slowest {max(answers) * 1000:.0f} ms")


def test_two_workers_generate_at_the_same_time(server_factory):
    # With no queue, the busy worker refuses at once (503); retried at once, a short request
    # soon lands on the idle worker and completes there while the long one still runs.
    with server_factory("--max-queue", "0", workers=2) as s:
        long_run = {}

        def long_request():
            r = s.post("/v1/chat/completions", json=LONG, timeout=300)
            long_run.update(status=r.status_code, pid=r.headers.get("X-Worker-Pid"), end=time.monotonic())

        t = threading.Thread(target=long_request)
        t.start()
        busy = wait_running(s)["worker_pid"]
        refused = 0
        while t.is_alive():
            r = s.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2}, timeout=60)
            if r.status_code == 200:
                short_pid, short_end = int(r.headers["X-Worker-Pid"]), time.monotonic()
                break
            assert r.status_code == 503 and r.json()["error"]["type"], r.text
            refused += 1
            time.sleep(0.02)
        else:
            raise AssertionError(f"the long generation ended before another worker took a request ({refused} refused)")
        t.join()
        assert long_run["status"] == 200 and int(long_run["pid"]) == busy
        assert short_pid != busy and short_end < long_run["end"]
