"""The bm1684x engine behind real gunicorn + gevent: while a generation runs on the
simulator (seconds), /health on the same worker keeps answering -- the native calls
release the GIL and the engine runs on its own OS thread."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import run_server

pytestmark = pytest.mark.bm1684x


def test_health_answers_while_the_tpu_generates(native_module, tiny_bmodel_dir, tmp_path):
    with run_server(tiny_bmodel_dir, tmp_path, workers=1) as s:
        h = s.get("/health").json()
        assert "bm1684x" in str(h), h
        result = {}

        def chat():
            r = s.post(
                "/v1/chat/completions",
                timeout=300,
                json={"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 3, "temperature": 0},
            )
            result["status"], result["body"] = r.status_code, r.json()

        t = threading.Thread(target=chat)
        start = time.monotonic()
        t.start()
        latencies = []
        while t.is_alive():
            t0 = time.monotonic()
            r = s.get("/health", timeout=10)
            assert r.status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.05)
        t.join()
        elapsed = time.monotonic() - start
        assert result["status"] == 200, result
        assert result["body"]["usage"]["completion_tokens"] >= 1
        assert elapsed > 1.0, "generation too quick to tell"
        assert len(latencies) >= 5
        # a held GIL would block /health for the whole generation; allow for a loaded machine
        assert max(latencies) < min(1.5, 0.5 * elapsed), (
            f"/health stalled {max(latencies):.2f}s during a {elapsed:.1f}s generation"
        )
