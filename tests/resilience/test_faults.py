"""Engine failures that take a worker process with them, inside a real server: the client
sees the connection end (no hang) and gunicorn replaces the worker; a model folder that
disappears does not stop the server from booting a replacement.  (A failing engine step
answered with a 500 / an error event is tested in-process: tests/inprocess/test_errors.py.)

The fault comes from the test-only hook in qwen3vl_app/fault_injection.py (QWEN3VL_FAULT_INJECT
names a trigger file; writing a step name into it makes that engine step fail once).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import pytest
import requests

from tests.support.checks import openai_error
from tests.support.live import API_KEY, wait_healthy
from tests.support.polling import wait_for

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
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    with server_factory(api_key=API_KEY, workers=2, model_dir=model) as s:
        old = set(s.worker_pids())
        model.rename(tmp_path / "moved")
        victim = sorted(old)[0]
        os.kill(victim, signal.SIGKILL)

        def replaced():
            assert s.proc.poll() is None, "gunicorn halted:\n" + s.log()[-3000:]
            pids = set(s.worker_pids())
            return (pids - old).pop() if len(pids) == 2 and victim not in pids else None

        new = wait_for(replaced, timeout=60, every=0.2, what="a replacement worker")
        # The replacement boots with the folder gone and says so (it used to fail to boot).
        wait_for(
            lambda: re.search(rf" {new} ERROR qwen3vl: model folder .* is unusable", s.log()),
            timeout=60,
            every=0.2,
            what="the replacement reporting the unusable folder",
        )
        assert s.proc.poll() is None, "gunicorn halted:\n" + s.log()[-3000:]
        seen = {}
        for _ in range(40):  # fresh connections land on either worker
            r = requests.post(
                s.url + "/v1/chat/completions",
                json={"messages": MSG, "max_tokens": 2},
                headers={**s.headers, "Connection": "close"},
                timeout=30,
            )
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

        def all_replaced():
            pids = set(s.worker_pids())
            return pids if len(pids) == 2 and not pids & (old | {new}) else None

        fresh = wait_for(all_replaced, timeout=120, every=0.2, what="every worker replaced after HUP")
        wait_healthy(s, 2, 120)
        assert set(s.worker_pids()) == fresh
