"""Graceful shutdown and reload with a generation in flight: it finishes (within
--graceful-timeout), new requests are refused with 503, the engine is released."""

import signal
import threading
import time

import requests

from tests.support.live import LONG_STORY as MSG
from tests.support.live import wait_running
from tests.support.polling import wait_for
from tests.support.sse import timed_sse_events


def _stream_in_background(s, max_tokens, **body):
    out = {}

    def run():
        r = s.chat(max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}, **body)
        out["pid"] = int(r.headers["X-Worker-Pid"])
        out["events"] = timed_sse_events(r)

    t = threading.Thread(target=run)
    t.start()
    wait_running(s)
    return t, out


def _finish(events):
    chunks = [e for _, e in events if e != "[DONE]"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    usage = chunks[-1]["usage"]
    return finish, usage, events[-1][1] == "[DONE]"


def test_sigterm_lets_the_stream_finish_and_refuses_new_requests(server_factory):
    with server_factory("--graceful-timeout", "30", workers=1) as s:
        session = requests.Session()  # a keep-alive connection opened before the signal
        assert session.get(s.url + "/health", timeout=10).status_code == 200
        t, out = _stream_in_background(s, 150)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "refusing new requests" in s.log(), timeout=5)
        r = session.post(s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2}, timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert r.json()["error"]["code"] == "server_shutting_down"
        t.join(60)
        finish, usage, done = _finish(out["events"])
        assert done and finish == ["length"] and usage["completion_tokens"] == 150  # ran to the end
        assert s.proc.wait(60) == 0
        log = s.log()
        assert "engine torch released" in log
        print(f"stream finished {time.monotonic() - t0:.1f} s after SIGTERM; server exited cleanly")


def test_graceful_timeout_bounds_the_drain(server_factory):
    # 6 s: the drain ends 1.5 s before the master's kill (a 3 s timeout left 0.75 s, which a
    # loaded machine came close to using up)
    with server_factory("--graceful-timeout", "6", workers=1) as s:
        # 1900 tokens must outlast the 4.5 s drain: plain greedy tokens on the tiny model take
        # ~2.6 ms each (the whole stream fit in the drain once), with 20 top logprobs ~3x that
        t, out = _stream_in_background(s, 1900, logprobs=True, top_logprobs=20)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        t.join(60)
        elapsed = time.monotonic() - t0
        finish, usage, done = _finish(out["events"])
        # Cut by the drain deadline, before the master's kill at --graceful-timeout: a proper end
        # (finish_reason, usage, [DONE]), not a broken stream.
        assert done and finish == ["length"] and 0 < usage["completion_tokens"] < 1900
        assert s.proc.wait(30) == 0
        assert "engine torch released" in s.log()
        print(f"long stream ended after {usage['completion_tokens']} tokens, {elapsed:.1f} s after SIGTERM")


def test_hup_reload_finishes_the_stream_on_the_old_worker(server_factory):
    with server_factory("--graceful-timeout", "30", workers=1) as s:
        old = s.worker_pids()
        t, out = _stream_in_background(s, 150)
        s.proc.send_signal(signal.SIGHUP)
        t.join(60)
        finish, usage, done = _finish(out["events"])
        assert done and finish == ["length"] and usage["completion_tokens"] == 150
        assert out["pid"] == old[0]

        def new_worker_serves():
            try:
                r = s.chat(max_tokens=2, timeout=30)
            except requests.RequestException:
                return False
            return r.status_code == 200 and int(r.headers["X-Worker-Pid"]) not in old

        wait_for(new_worker_serves, timeout=120, every=0.2)
        wait_for(lambda: old[0] not in s.worker_pids(), timeout=30)
        assert "engine torch released" in s.log()
        assert s.proc.poll() is None  # the master stays up across the reload
