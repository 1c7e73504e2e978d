"""Continuous batching (--max-batch) through the real server: every slot's output equals the
same request run alone on a --max-batch 1 server, token for token, while other requests
join and leave mid-generation.  Tiny random-weight model, float32 on CPU."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

PROMPTS = [
    "Tell me a story about a lighthouse.",
    "List three colours and a number: 世界 🤖",
    "Why is the sky blue? Answer briefly.",
    "Write a haiku about batching.",
    "Translate 'good morning' into French, German and Spanish.",
]


@pytest.fixture(scope="module")
def batch_server(server_factory):
    with server_factory("--max-batch", "4", "--max-queue", "4", workers=1) as s:
        yield s


def body(i: int, **kw) -> dict:
    b = {
        "model": "qwen3-vl-instruct",
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "temperature": 0,
        "max_tokens": 40,
        "ignore_eos": True,
        "logprobs": True,
        "top_logprobs": 2,
    }
    b.update(kw)
    return b


def run_alone(server, b: dict) -> dict:
    r = server.post("/v1/chat/completions", json=b)
    assert r.status_code == 200, r.text
    return summary(r.json())


def summary(resp: dict) -> dict:
    ch = resp["choices"][0]
    lp = ch.get("logprobs") or {}
    return {
        "text": ch["message"]["content"],
        "finish": ch["finish_reason"],
        "tokens": [t["token"] for t in lp.get("content") or []],
        "top": [[a["token"] for a in t["top_logprobs"]] for t in lp.get("content") or []],
        "logprobs": [t["logprob"] for t in lp.get("content") or []],
        "completion_tokens": resp["usage"]["completion_tokens"],
    }


class Stream(threading.Thread):
    """One streamed request in a thread; `first` is set at its first content chunk."""

    def __init__(self, server, b: dict, close_after: int | None = None):
        super().__init__(daemon=True)
        self.server, self.b, self.close_after = (
            server,
            {**b, "stream": True, "stream_options": {"include_usage": True}},
            close_after,
        )
        self.first = threading.Event()
        self.text, self.tokens, self.logprobs, self.top = [], [], [], []
        self.chunks = 0  # content chunks received
        self.errors: list[dict] = []  # OpenAI error events (a failure after the stream started)
        self.finish = None
        self.usage = None
        self.status = None
        self.started = self.ended = None

    def run(self):
        self.started = time.monotonic()
        with requests.post(
            self.server.url + "/v1/chat/completions", json=self.b, headers=self.server.headers, stream=True, timeout=120
        ) as r:
            self.status = r.status_code
            if r.status_code != 200:
                self.first.set()
                return
            for line in r.iter_lines():
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    self.errors.append(chunk["error"])
                if chunk.get("usage"):
                    self.usage = chunk["usage"]
                if not chunk.get("choices"):
                    continue
                c = chunk["choices"][0]
                if c["delta"].get("content"):
                    self.text.append(c["delta"]["content"])
                    self.chunks += 1
                for t in (c.get("logprobs") or {}).get("content") or []:
                    self.tokens.append(t["token"])
                    self.logprobs.append(t["logprob"])
                    self.top.append([a["token"] for a in t["top_logprobs"]])
                if c.get("finish_reason"):
                    self.finish = c["finish_reason"]
                if self.chunks:
                    self.first.set()
                if self.close_after is not None and self.chunks >= self.close_after:
                    break  # hang up mid-generation
        self.ended = time.monotonic()
        self.first.set()


def staggered(server, bodies: list[dict], close_after: dict[int, int] | None = None) -> list[Stream]:
    """Start each stream after the previous one produced its first token, so every later
    request joins a batch that is mid-generation."""
    streams = []
    for i, b in enumerate(bodies):
        s = Stream(server, b, (close_after or {}).get(i))
        s.start()
        assert s.first.wait(60), f"stream {i} produced nothing"
        streams.append(s)
    for s in streams:
        s.join(120)
        assert not s.is_alive()
    return streams


def assert_same(stream: Stream, alone: dict, label: str) -> None:
    assert stream.status == 200, label
    assert stream.tokens == alone["tokens"], f"{label}: tokens differ from the request run alone"
    assert "".join(stream.text) == alone["text"], label
    assert stream.finish == alone["finish"], label
    assert stream.top == alone["top"], label
    # float32: the batched forward may differ from the unbatched one in the last bits
    assert stream.logprobs == pytest.approx(alone["logprobs"], abs=1e-4), label


def wait_idle(server, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = server.get("/health").json()
        if h["slots_in_use"] == 0 and h["queued"] == 0:
            return h
        assert time.monotonic() < deadline, h
        time.sleep(0.1)


def test_slots_equal_alone_while_joining_and_leaving(server, batch_server):
    # different lengths: slots finish at different steps while later ones are mid-way;
    # six requests for four slots: the last two wait, then join as slots free
    lengths = [60, 25, 45, 10, 35, 20]
    bodies = [body(i, max_tokens=n) for i, n in enumerate(lengths)]
    alone = [run_alone(server, b) for b in bodies]  # --max-batch 1: the single-sequence path
    streams = staggered(batch_server, bodies)
    for i, (s, a) in enumerate(zip(streams, alone, strict=True)):
        assert_same(s, a, f"request {i}")
        assert s.usage["completion_tokens"] == lengths[i]
    # they really overlapped: request 1 started before request 0 ended, and so on
    assert all(streams[i + 1].started < streams[i].ended for i in range(3))
    h = wait_idle(batch_server)
    assert h["max_batch"] == 4


def test_seeded_sampling_and_penalties_per_slot(server, batch_server):
    bodies = [
        body(0, temperature=1.0, top_p=0.9, seed=11, max_tokens=30),
        body(1, temperature=0.8, top_k=20, seed=12, max_tokens=30, frequency_penalty=1.0),
        body(2, temperature=0, max_tokens=30, repetition_penalty=1.3),
        body(0, temperature=1.0, top_p=0.9, seed=99, max_tokens=30),
    ]
    alone = [run_alone(server, b) for b in bodies]
    streams = staggered(batch_server, bodies)
    for i, (s, a) in enumerate(zip(streams, alone, strict=True)):
        assert_same(s, a, f"request {i}")
    assert streams[0].tokens != streams[3].tokens  # same prompt, other seed


def test_stop_strings_per_slot(server, batch_server):
    sampled = {"temperature": 1.0, "seed": 77, "max_tokens": 30}  # greedy tiny-model text is mostly blank
    ref = run_alone(server, body(3, **sampled))
    text = ref["text"]
    mid = len(text) // 2
    stop = next(
        text[i : i + 2]
        for i in range(mid, len(text) - 1)
        if text[i : i + 2].strip() and "\ufffd" not in text[i : i + 2]
    )
    bodies = [body(3, **sampled, stop=[stop]), body(1, max_tokens=30), body(2, max_tokens=30, stop=["\x00zz"])]
    alone = [run_alone(server, b) for b in bodies]
    assert alone[0]["finish"] == "stop" and alone[0]["text"] == text[: text.index(stop)]
    streams = staggered(batch_server, bodies)
    for i, (s, a) in enumerate(zip(streams, alone, strict=True)):
        assert "".join(s.text) == a["text"] and s.finish == a["finish"], f"request {i}"


def test_cancelled_slot_never_disturbs_the_others(server, batch_server):
    bodies = [body(0, max_tokens=60), body(1, max_tokens=200), body(2, max_tokens=50), body(4, max_tokens=40)]
    alone = [run_alone(server, b) for i, b in enumerate(bodies) if i != 1]
    streams = staggered(batch_server, bodies, close_after={1: 5})
    assert len(streams[1].tokens) < 200  # it hung up
    for s, a, i in zip([streams[0], streams[2], streams[3]], alone, (0, 2, 3), strict=True):
        assert_same(s, a, f"request {i}")
    wait_idle(batch_server)  # the abandoned slot was freed
    # and the server still serves
    assert run_alone(batch_server, body(0, max_tokens=60))["tokens"] == alone[0]["tokens"]


def test_admission_counts_slots_plus_queue(server_factory):
    with server_factory("--max-batch", "2", "--max-queue", "1", workers=1) as s:
        long = body(0, max_tokens=3000, logprobs=False, top_logprobs=None)
        streams = [Stream(s, long) for _ in range(2)]
        for st in streams:
            st.start()
        for st in streams:
            assert st.first.wait(60)
        queued = Stream(s, long)
        queued.start()
        deadline = time.monotonic() + 30
        while s.get("/health").json()["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        h = s.get("/health").json()
        assert (h["max_batch"], h["slots_in_use"], h["queued"]) == (2, 2, 1)
        r = s.post("/v1/chat/completions", json={**long, "max_tokens": 5}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy", r.text
        metrics = s.get("/metrics").text
        assert "qwen3vl_engine_slots 2.0" in metrics
        assert "qwen3vl_requests_running 2.0" in metrics
        assert "2 slot(s) (--max-batch)" in s.log()
        for st in streams + [queued]:
            st.close_after = 0  # hang up at the next chunk; their slots free, the queued one runs
        for st in streams + [queued]:
            st.join(60)
            assert not st.is_alive()
        assert queued.status == 200
        wait_idle(s)


def test_ignore_eos_generates_max_tokens(server):
    r = server.post("/v1/chat/completions", json=body(0, max_tokens=33, logprobs=False, top_logprobs=None))
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 33 and r.json()["choices"][0]["finish_reason"] == "length"
    bad = server.post("/v1/chat/completions", json=body(0, ignore_eos="sometimes"))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ignore_eos"


def test_max_batch_one_is_one_slot(server):
    h = server.get("/health").json()
    assert h["max_batch"] == 1 and h["slots_in_use"] == 0


def test_engine_faults_with_several_slots_busy(server, server_factory, tmp_path):
    """A failing prefill fails only the request that joined; a failing batched decode step
    fails every slot in it (each gets an error event); the worker then serves as before."""
    trigger = tmp_path / "trigger"
    with server_factory("--max-batch", "4", workers=1, env={"QWEN3VL_FAULT_INJECT": str(trigger)}) as s:
        bodies = [body(0, max_tokens=400), body(1, max_tokens=400)]
        streams = [Stream(s, b) for b in bodies]
        for st in streams:
            st.start()
            assert st.first.wait(60)
        trigger.write_text("prefill")
        r = s.post("/v1/chat/completions", json=body(2, max_tokens=5))
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert all(st.is_alive() for st in streams), "a failed join disturbed the running slots"
        trigger.write_text("decode")
        for st in streams:
            st.join(60)
            assert not st.is_alive()
            assert st.status == 200 and st.finish is None and st.errors, "expected an error event mid-stream"
        assert not trigger.exists()
        alone = run_alone(server, body(3, max_tokens=20))
        assert run_alone(s, body(3, max_tokens=20))["tokens"] == alone["tokens"]
        wait_idle(s)


def test_follow_up_turns_reuse_their_slot_kv(server, batch_server):
    """Two conversations interleaved on one worker: each follow-up turn finds the slot
    that still holds its previous turn and prefills only the new suffix; the reply is
    the same as on the single-sequence path."""
    convs = [
        [{"role": "system", "content": "You are terse. " * 20}, {"role": "user", "content": p}] for p in PROMPTS[:2]
    ]
    replies = []
    for conv in convs:
        r = batch_server.post("/v1/chat/completions", json={**body(0, max_tokens=12), "messages": conv})
        assert r.status_code == 200
        replies.append(r.json()["choices"][0]["message"]["content"])
    for conv, reply in zip(convs, replies, strict=True):
        follow = [*conv, {"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
        b = {**body(0, max_tokens=12), "messages": follow}
        r = batch_server.post("/v1/chat/completions", json=b)
        usage = r.json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] > usage["prompt_tokens"] // 2, usage
        assert summary(r.json())["tokens"] == run_alone(server, b)["tokens"]
