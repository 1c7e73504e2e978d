"""Helpers of the operations tests: Prometheus text, long requests, SSE reading."""
from __future__ import annotations

import json
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

MSG = [{"role": "user", "content": "Tell me a long story."}]


def scrape(server, headers=None) -> dict:
    """{(sample name, frozenset(labels)): value} from GET /metrics."""
    r = requests.get(server.url + "/metrics", headers=headers if headers is not None else server.headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def wait_for(fn, timeout: float = 10, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(every)


def chat(server, max_tokens: int = 4, stream: bool = False, timeout: float = 120, **kw):
    body = {"messages": MSG, "max_tokens": max_tokens, "temperature": 0, "stream": stream, **kw}
    return requests.post(server.url + "/v1/chat/completions", json=body, headers=server.headers,
                         timeout=timeout, stream=stream)


def sse_events(resp):
    """(arrival time, parsed chunk or '[DONE]') for every data: line of a stream."""
    out = []
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            data = line[6:]
            out.append((time.monotonic(), data if data == "[DONE]" else json.loads(data)))
    return out


def wait_running(server, n: int = 1, timeout: float = 30) -> None:
    def check():
        h = requests.get(server.url + "/health", headers={**server.headers, "Connection": "close"}, timeout=10)
        return h.json()["running"] >= n

    wait_for(check, timeout)
