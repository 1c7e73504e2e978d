"""--max_concurrent across workers: a burst beyond capacity gets fast 503s with Retry-After,
then the server recovers; tickets held by a worker that dies are given back."""

import os
import signal
import threading
import time

import requests

from tests.support.live import API_KEY, LONG_STORY, wait_running
from tests.support.polling import wait_for
from tests.support.prometheus import scrape, total, value


def _assert_busy(r, code="server_busy"):
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err


def test_burst_beyond_capacity_fast_503_then_recovery(server_factory):
    with server_factory("-c", "2", "--max-queue", "4", workers=2, api_key=API_KEY) as s:
        results = []
        lock = threading.Lock()

        def one():
            t0 = time.monotonic()
            r = s.chat(max_tokens=400)
            with lock:
                results.append((r, t0, time.monotonic()))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [(r, t0, t1) for r, t0, t1 in results if r.status_code == 200]
        busy = [(r, t0, t1) for r, t0, t1 in results if r.status_code != 200]
        assert len(ok) == 2, [r.status_code for r, _, _ in results]  # two tickets server-wide, not per worker
        for r, _, _ in busy:
            _assert_busy(r)
        # Refused at once: every refusal came back before either admitted request was done
        # (a refusal that waited for a ticket would come after one).
        last_refusal, first_success = max(t1 for _, _, t1 in busy), min(t1 for _, _, t1 in ok)
        assert last_refusal < first_success
        print(
            f"refusals within {max(t1 - t0 for _, t0, t1 in busy) * 1000:.0f} ms; "
            f"admitted requests took >= {min(t1 - t0 for _, t0, t1 in ok):.2f} s"
        )

        # Recovery: the tickets are free again, and clients that honour Retry-After all get through.
        assert s.chat().status_code == 200
        client = s.openai(max_retries=30)
        done = []

        def retrying():
            done.append(
                client.chat.completions.create(
                    model="qwen3-vl-instruct", messages=LONG_STORY, max_tokens=30
                ).usage.completion_tokens
            )

        threads = [threading.Thread(target=retrying) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert done == [30] * 5

        m = wait_for(lambda: (lambda m: m if value(m, "qwen3vl_requests_in_flight") == 0 else None)(scrape(s)))
        assert value(m, "qwen3vl_max_concurrent") == 2
        assert value(m, "qwen3vl_requests_rejected_total", reason="server_full") >= 6
        assert total(m, "qwen3vl_requests_total", endpoint="/v1/chat/completions", status="503") >= 6
        assert value(m, "qwen3vl_requests_running") == 0 and value(m, "qwen3vl_requests_queued") == 0


def test_worker_queue_bound_still_applies(server_factory):
    # Plenty of server-wide tickets, one worker without a queue: the second request is refused.
    with server_factory("-c", "10", "--max-queue", "0", workers=1) as s:
        holder = threading.Thread(target=lambda: s.chat(max_tokens=600))
        holder.start()
        wait_running(s)
        _assert_busy(s.chat())
        holder.join()
        m = scrape(s)
        assert value(m, "qwen3vl_requests_rejected_total", reason="worker_queue_full") == 1


def test_tickets_of_a_killed_worker_are_given_back(server_factory):
    with server_factory("-c", "1", workers=1) as s:
        pid = s.worker_pids()[0]
        stream = s.chat(max_tokens=1900, stream=True, timeout=60)
        wait_running(s)
        _assert_busy(s.chat())
        os.kill(pid, signal.SIGKILL)  # dies holding the only ticket
        stream.close()

        def new_worker_ready():
            try:
                h = requests.get(s.url + "/health", headers={"Connection": "close"}, timeout=5).json()
            except requests.RequestException:
                return False
            return h["status"] == "healthy" and h["worker_pid"] != pid

        wait_for(new_worker_ready, timeout=120, every=0.2)
        assert s.chat().status_code == 200  # without the master freeing the ticket: 503 forever
        assert "died holding 1 admission ticket" in s.log()
