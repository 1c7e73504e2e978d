"""Generation through a real server: sampling with the real model's logits, end to end with
the openai client, and a client that hangs up mid-generation freeing the worker.  The
sampling/stop/limit semantics themselves are tested in-process: tests/inprocess/test_chat.py."""

import json
import socket
import time

from tests.support.live import wait_running
from tests.support.polling import wait_for

MSG = [{"role": "user", "content": "Tell me a story about 世界 and 🤖."}]


def test_seed_reproducible_stream_and_non_stream(server):
    client = server.openai()

    def create(**kw):
        return client.chat.completions.create(model="qwen3-vl-instruct", messages=MSG, **kw)

    kw = dict(max_tokens=12, temperature=1.0, top_p=0.95, seed=1234)
    a = create(**kw).choices[0].message.content
    assert create(**kw).choices[0].message.content == a
    assert "".join(c.choices[0].delta.content or "" for c in create(stream=True, **kw) if c.choices) == a
    others = {create(**{**kw, "seed": s}).choices[0].message.content for s in range(5)}
    assert len(others) > 1, "different seeds should sample different text"


def _raw_post(s, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def test_disconnect_frees_the_worker(server_factory):
    # One worker, no queue: while it generates, any other request is refused at once.
    with server_factory("--max-queue", "0", workers=1) as s:
        for stream in (True, False):
            sock = _raw_post(s, {"messages": MSG, "max_tokens": 1900, "temperature": 0, "stream": stream})
            wait_running(s, timeout=20)
            if stream:
                sock.recv(4096)  # the stream has begun
            busy = s.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1})
            assert busy.status_code == 503 and busy.headers["Retry-After"]
            sock.close()
            t0 = time.monotonic()
            wait_for(lambda: s.health()["running"] == 0, timeout=10, what="the worker freed after the client left")
            freed = time.monotonic() - t0
            assert s.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1}).status_code == 200
            print(f"worker free again {freed * 1000:.0f} ms after disconnect (stream={stream})")
        assert "client disconnected" in s.log()  # the non-stream case notices it between tokens
