"""GET /metrics after known traffic, across two workers and a worker restart; the request
log line.  (--metrics-auth: tests/inprocess/test_auth.py; -l: tests/live/test_core.py.)"""

import json
import os
import re
import signal

import requests

from tests.support.live import API_KEY
from tests.support.live import LONG_STORY as MSG
from tests.support.polling import wait_for
from tests.support.prometheus import scrape, total, value

CHAT = "/v1/chat/completions"


def _post(s, body, **headers):
    return requests.post(s.url + CHAT, json=body, headers={**s.headers, "Connection": "close", **headers}, timeout=60)


def _healthy_pids(s, want: int) -> set:
    seen = set()

    def enough():
        h = requests.get(s.url + "/health", headers={**s.headers, "Connection": "close"}, timeout=5).json()
        if h["status"] == "healthy":
            seen.add(h["worker_pid"])
        return len(seen & set(s.worker_pids())) >= want

    wait_for(enough, timeout=120, every=0.1)
    return set(s.worker_pids())


def test_metrics_after_known_traffic_and_a_worker_restart(server_factory):
    with server_factory(workers=2, api_key=API_KEY) as s:
        pids, usage = set(), []
        for i in range(12):  # new connections: the requests spread over both workers
            r = _post(s, {"messages": MSG, "max_tokens": 5, "temperature": 0}, **{"X-Request-Id": f"ops-{i}"})
            assert r.status_code == 200
            pids.add(int(r.headers["X-Worker-Pid"]))
            usage.append(r.json()["usage"])
            if i >= 3 and len(pids) == 2:
                break
        n_plain = len(usage)
        for _ in range(2):
            r = _post(s, {"messages": MSG, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}})
            chunks = [json.loads(l[6:]) for l in r.text.splitlines() if l.startswith("data: {")]
            usage.append(chunks[-1]["usage"])
        bad_image = {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not-base64@@"}},
                        {"type": "text", "text": "what is this?"},
                    ],
                }
            ],
            "max_tokens": 3,
        }
        assert _post(s, bad_image).status_code == 400
        assert requests.get(s.url + "/v1/models", headers=s.headers).status_code == 200
        assert requests.get(s.url + "/v1/models").status_code == 401
        assert requests.get(s.url + "/metrics").status_code == 200  # open by default, no key

        def settled():
            m = scrape(s)
            return m if total(m, "qwen3vl_requests_total", endpoint=CHAT) == n_plain + 3 else None

        m = wait_for(settled)
        assert value(m, "qwen3vl_requests_total", endpoint=CHAT, status="200") == n_plain + 2
        assert value(m, "qwen3vl_requests_total", endpoint=CHAT, status="400") == 1
        assert value(m, "qwen3vl_requests_total", endpoint="/v1/models", status="200") == 1
        assert value(m, "qwen3vl_requests_total", endpoint="/v1/models", status="401") == 1
        assert value(m, "qwen3vl_completion_tokens_total", endpoint=CHAT) == sum(u["completion_tokens"] for u in usage)
        assert value(m, "qwen3vl_completion_tokens_total", endpoint=CHAT) == 5 * n_plain + 8
        assert value(m, "qwen3vl_prompt_tokens_total", endpoint=CHAT) == sum(u["prompt_tokens"] for u in usage)
        generations = n_plain + 2
        for name in (
            "qwen3vl_time_to_first_token_seconds_count",
            "qwen3vl_time_per_output_token_seconds_count",
            "qwen3vl_server_overhead_seconds_count",
        ):
            assert value(m, name, endpoint=CHAT) == generations, name
        assert value(m, "qwen3vl_queue_wait_seconds_count") == generations
        assert value(m, "qwen3vl_generations_total", finish_reason="length") == generations
        assert value(m, "qwen3vl_media_fetch_failures_total", reason="invalid_data_uri") == 1
        assert 0 < value(m, "qwen3vl_time_to_first_token_seconds_sum", endpoint=CHAT) < 60
        assert value(m, "qwen3vl_requests_in_flight") == 0 and value(m, "qwen3vl_requests_running") == 0
        assert value(m, "qwen3vl_engines_ready") == 2
        live = set(s.worker_pids())
        load = {int(dict(lab)["pid"]): v for (n, lab), v in m.items() if n == "qwen3vl_engine_load_seconds"}
        assert set(load) == live and all(v > 0 for v in load.values())
        print(f"requests spread over {len(pids)} worker(s); engine load seconds {load}")

        # One structured line per request, after the request ended, with the masked key.
        log = s.log()
        line = next(l for l in log.splitlines() if "id=ops-0 " in l)
        fields = dict(kv.split("=", 1) for kv in line.split("request ", 1)[1].split())
        assert fields["status"] == "200" and fields["path"] == CHAT and fields["completion_tokens"] == "5"
        assert fields["prompt_tokens"] == str(usage[0]["prompt_tokens"]) and fields["finish"] == "length"
        assert float(fields["ttft_ms"]) > 0 and float(fields["total_ms"]) >= float(fields["ttft_ms"])
        assert int(fields["pid"]) in live and fields["key"] == "test…6789" and API_KEY not in log
        assert len(re.findall(r"request id=ops-0 ", log)) == 1

        # A worker restart: its counters stay in the totals, its live gauges go.
        before = total(m, "qwen3vl_requests_total", endpoint=CHAT)
        victim = sorted(live)[0]
        os.kill(victim, signal.SIGTERM)
        wait_for(lambda: victim not in s.worker_pids(), timeout=60)
        now_live = _healthy_pids(s, 2)
        m2 = wait_for(lambda: (lambda m: m if value(m, "qwen3vl_engines_ready") == 2 else None)(scrape(s)), 60)
        assert total(m2, "qwen3vl_requests_total", endpoint=CHAT) == before
        assert value(m2, "qwen3vl_completion_tokens_total", endpoint=CHAT) == 5 * n_plain + 8
        load2 = {int(dict(lab)["pid"]) for (n, lab), v in m2.items() if n == "qwen3vl_engine_load_seconds"}
        assert load2 == now_live and victim not in load2
