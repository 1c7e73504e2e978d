"""Generation semantics through the real server and the openai client (issue 5)."""
import json
import socket
import time

import openai
import pytest

MSG = [{"role": "user", "content": "Tell me a story about 世界 and 🤖."}]


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


def _create(client, **kw):
    kw.setdefault("model", "qwen3-vl-instruct")
    kw.setdefault("messages", MSG)
    return client.chat.completions.create(**kw)


def _stream_text(client, **kw):
    chunks = list(_create(client, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish, chunks


def test_seed_reproducible_stream_and_non_stream(client):
    kw = dict(max_tokens=12, temperature=1.0, top_p=0.95, seed=1234)
    a = _create(client, **kw).choices[0].message.content
    b = _create(client, **kw).choices[0].message.content
    assert a == b
    assert _stream_text(client, **kw)[0] == a
    others = {_create(client, **{**kw, "seed": s}).choices[0].message.content for s in range(5)}
    assert len(others) > 1, "different seeds should sample different text"


def test_temperature_zero_is_greedy_and_deterministic(client):
    outs = {_create(client, max_tokens=8, temperature=0).choices[0].message.content for _ in range(2)}
    assert len(outs) == 1


def test_max_completion_tokens_wins_over_max_tokens(client):
    r = _create(client, max_tokens=9, max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_top_k_one_equals_greedy(client):
    greedy = _create(client, max_tokens=8, temperature=0).choices[0].message.content
    assert _create(client, max_tokens=8, temperature=1.5, seed=3, extra_body={"top_k": 1}).choices[0].message.content == greedy


def test_penalties_change_greedy_output(client):
    base = _create(client, max_tokens=16, temperature=0).choices[0].message.content
    for kw in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"repetition_penalty": 3.0}):
        extra = {"extra_body": kw} if "repetition_penalty" in kw else kw  # not in the openai signature
        r = _create(client, max_tokens=16, temperature=0, **extra)
        assert r.choices[0].message.content != base, kw


def _tokens_with_text(client, **kw):
    r = _create(client, logprobs=True, **kw)
    return r.choices[0].message.content, [t.token for t in r.choices[0].logprobs.content]


def test_stop_string_split_across_tokens(client):
    kw = dict(max_tokens=24, temperature=1.0, seed=77)
    full, tokens = _tokens_with_text(client, **kw)
    # A stop string made of the end of one token and the start of the next: it can only
    # be found by matching across the token boundary.
    for i in range(1, len(tokens) - 1):
        left, right = tokens[i], tokens[i + 1]
        if left.strip() and right.strip() and "\ufffd" not in left + right:
            stop = left[-1] + right[0]
            break
    else:
        pytest.skip("no usable token boundary in this sample")
    expected = full[: full.index(stop)]
    r = _create(client, stop=stop, **kw)
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    text, finish, _ = _stream_text(client, stop=[stop, "never-seen-stop"], **kw)
    assert text == expected and finish == ["stop"]


def test_logprobs_and_top_logprobs(client):
    r = _create(client, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3
        lps = [t.logprob for t in entry.top_logprobs]
        assert lps == sorted(lps, reverse=True) and entry.logprob == pytest.approx(lps[0])
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the most likely


def test_include_usage_final_chunk(client):
    text, finish, chunks = _stream_text(client, max_tokens=5, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 5
    assert last.usage.total_tokens == last.usage.prompt_tokens + 5
    assert all(c.usage is None for c in chunks[:-1])


def test_n_other_than_one_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        _create(client, n=2, max_tokens=2)
    assert e.value.body["param"] == "n"


def test_user_field_accepted(client):
    assert _create(client, max_tokens=1, user="alice").usage.completion_tokens == 1


def test_unique_ids(client):
    ids = {_create(client, max_tokens=1).id for _ in range(3)}
    assert len(ids) == 3


def test_keepalive_pings_during_prefill(server_factory):
    with server_factory("--sse-keepalive", "0.001") as s:
        long_prompt = [{"role": "user", "content": "lorem ipsum " * 800}]
        r = s.post("/v1/chat/completions", json={"messages": long_prompt, "max_tokens": 2, "stream": True},
                   stream=True)
        lines = [l for l in r.iter_lines(decode_unicode=True) if l]
        assert ": ping" in lines
        assert lines[-1] == "data: [DONE]"
        data = [json.loads(l[6:]) for l in lines if l.startswith("data: {")]
        assert data[-1]["choices"][0]["finish_reason"] == "length"


def test_time_limit_ends_with_length(server_factory):
    with server_factory("--request-timeout", "1") as s:
        t0 = time.monotonic()
        r = s.openai().chat.completions.create(model="qwen3-vl-instruct", messages=MSG, max_tokens=1900, temperature=0)
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens < 1900
        assert time.monotonic() - t0 < 30


def _raw_post(s, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_frees_the_worker(server_factory, stream):
    # One worker, no queue: while it generates, any other request is refused at once.
    with server_factory("--max-queue", "0", workers=1) as s:
        sock = _raw_post(s, {"messages": MSG, "max_tokens": 1900, "temperature": 0, "stream": stream})
        deadline = time.monotonic() + 20
        while s.get("/health").json()["running"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        if stream:
            sock.recv(4096)  # the stream has begun
        busy = s.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1})
        assert busy.status_code == 503 and busy.headers["Retry-After"]
        sock.close()
        t0 = time.monotonic()
        while True:
            r = s.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1})
            if r.status_code == 200:
                break
            assert time.monotonic() - t0 < 10, "worker still busy after the client left"
            time.sleep(0.05)
        freed = time.monotonic() - t0
        print(f"worker free again {freed*1000:.0f} ms after disconnect (stream={stream})")
        assert "client disconnected" in s.log() or stream
