"""Soak: a bounded mixed workload against a real 2-worker server, then leak checks.

QWEN3VL_SOAK_REQUESTS requests (default 1200, at least 1000) from 4 client threads, with a
time cap (QWEN3VL_SOAK_SECONDS, default 240): text and image (small data: URIs) chat
completions, streams, image/video uploads to /v1/media/describe (videos go through a temp
file), bad input of every kind, and clients that vanish mid-stream, right after sending or
mid-body.  At the end, with the workers idle:
  - zero files left in the server's temp dir (TMPDIR of the server; torch's own cache
    folder made at start-up is the only entry allowed, and it is there before the soak),
  - open fds per worker within FD_SLACK of the count after warm-up,
  - RSS growth per worker from the end of warm-up under RSS_BOUND_MIB, and over the second
    half alone under RSS_LATE_BOUND_MIB (allocator arenas settle early; a leak keeps going),
  - the same worker pids (no crash), no 5xx, no traceback in the log.
The numbers are printed (`make soak` runs only this test, with -s).
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.live import API_KEY, wait_idle
from tests.support.media_samples import data_uri, png_bytes, write_video
from tests.support.polling import wait_for
from tests.support.procfs import accepted_connections, fd_count, rss_kib

pytestmark = pytest.mark.slow

N_REQUESTS = max(1000, int(os.environ.get("QWEN3VL_SOAK_REQUESTS", "1200")))
TIME_CAP = float(os.environ.get("QWEN3VL_SOAK_SECONDS", "240"))
WARMUP = 300
THREADS = 4
FD_SLACK = 4
RSS_BOUND_MIB = 64  # growth from the end of warm-up to the end
RSS_LATE_BOUND_MIB = 32  # growth over the second half alone (a leak keeps growing there)

IMAGES = [data_uri(png_bytes(w, h, seed=i)) for i, (w, h) in enumerate([(16, 16), (32, 24), (64, 48), (40, 72)])]


def text_msg(rng):
    words = " ".join(
        rng.choice(["hello", "world", "中文", "🤖", "describe", "tokens", "edge"]) for _ in range(rng.randint(1, 40))
    )
    return [{"role": "user", "content": words}]


def image_msg(rng):
    parts = [{"type": "image_url", "image_url": {"url": rng.choice(IMAGES)}} for _ in range(rng.randint(1, 2))]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "What is this?"}]}]


class Workload:
    def __init__(self, server, video: bytes):
        self.s, self.video = server, video
        self.h = {**server.headers, "Connection": "close"}
        self.outcomes: Counter = Counter()
        self.unexpected: list = []
        self.lock = threading.Lock()

    def record(self, kind: str, status, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.outcomes[(kind, status)] += 1
            if not ok:
                self.unexpected.append((kind, status, detail[:300]))

    def chat(self, body, **kw):
        return requests.post(self.s.url + "/v1/chat/completions", json=body, headers=self.h, timeout=60, **kw)

    # --- the request kinds -------------------------------------------------------------
    def text(self, rng):
        r = self.chat({"messages": text_msg(rng), "max_tokens": rng.randint(1, 6), "temperature": rng.random()})
        self.record("text", r.status_code, r.status_code == 200 and r.json()["object"] == "chat.completion", r.text)

    def stream(self, rng):
        body = {
            "messages": rng.choice([text_msg, image_msg])(rng),
            "max_tokens": rng.randint(1, 6),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with self.chat(body, stream=True) as r:
            lines = [l for l in r.iter_lines() if l]
        self.record("stream", r.status_code, r.status_code == 200 and lines[-1] == b"data: [DONE]", str(lines[-2:]))

    def image(self, rng):
        r = self.chat({"messages": image_msg(rng), "max_tokens": rng.randint(1, 4)})
        self.record("image", r.status_code, r.status_code == 200, r.text)

    def upload(self, rng):
        video = rng.random() < 0.5
        blob, name = (self.video, "clip.mp4") if video else (png_bytes(48, 32, seed=rng.randint(0, 9)), "a.png")
        r = requests.post(
            self.s.url + "/v1/media/describe",
            files={"file": (name, blob)},
            headers=self.h,
            data={"max_tokens": "3", "stream": rng.choice(["true", "false"])},
            timeout=60,
        )
        self.record("video upload" if video else "image upload", r.status_code, r.status_code == 200, r.text)

    def bad(self, rng):
        case = rng.randint(0, 7)
        if case == 0:
            r = requests.post(
                self.s.url + "/v1/chat/completions",
                data="{not json",
                timeout=30,
                headers={**self.h, "Content-Type": "application/json"},
            )
        elif case == 1:
            r = self.chat({"messages": [{"role": "wizard", "content": "x"}]})
        elif case == 2:
            r = self.chat({"messages": text_msg(rng), "temperature": 9})
        elif case == 3:  # a data: URI that is not an image
            r = self.chat(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8gd29ybGQ="}}
                            ],
                        }
                    ]
                }
            )
        elif case == 4:  # truncated image
            r = self.chat(
                {
                    "messages": [
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGES[2][:200]}}]}
                    ]
                }
            )
        elif case == 5:
            r = requests.get(self.s.url + "/v1/models/nope", headers=self.h, timeout=30)
        elif case == 6:
            r = requests.get(self.s.url + "/v1/models", headers={"Connection": "close"}, timeout=30)
        else:
            r = requests.post(
                self.s.url + "/v1/media/describe", files={"file": ("x.mp4", b"\x00" * 5000)}, headers=self.h, timeout=30
            )
        good = 400 <= r.status_code < 500 and set(r.json().get("error", {})) == {"message", "type", "param", "code"}
        self.record(f"bad input {case}", r.status_code, good, r.text)

    def disconnect(self, rng):
        case = rng.randint(0, 2)
        body = json.dumps({"messages": text_msg(rng), "max_tokens": 200, "stream": case == 0}).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", self.s.port), timeout=30) as sock:
            if case == 0:  # stream: read up to the first event, then vanish
                sock.sendall(head + body)
                got = b""
                while b"data:" not in got:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                self.record("disconnect mid-stream", got[9:12].decode(), got.startswith(b"HTTP/1.1 200"), got[:200])
                return
            if case == 1:  # whole request, then gone before the answer
                sock.sendall(head + body)
                time.sleep(0.02)
            else:  # gone mid-body
                sock.sendall(head + body[: len(body) // 2])
        self.record("disconnect after send" if case == 1 else "disconnect mid-body", "-", True)

    def light(self, rng):
        path = rng.choice(["/health", "/v1/models", "/openapi.json"])
        r = requests.get(self.s.url + path, headers=self.h, timeout=30)
        self.record("GET " + path, r.status_code, r.status_code == 200, r.text)

    MIX = [("text", 30), ("stream", 15), ("image", 15), ("upload", 6), ("bad", 16), ("disconnect", 10), ("light", 8)]

    def one(self, i: int) -> None:
        rng = random.Random(i)
        kind = rng.choices([k for k, _ in self.MIX], [w for _, w in self.MIX])[0]
        try:
            getattr(self, kind)(rng)
        except Exception as e:  # a client-side failure is a finding too
            self.record(kind, type(e).__name__, False, repr(e))


def snapshot(pids):
    return {p: (fd_count(p), rss_kib(p)) for p in pids}


def run_batch(load: Workload, start: int, stop: int, deadline: float) -> int:
    done = [0]

    def task(i):
        if time.monotonic() < deadline:
            load.one(i)
            done[0] += 1

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(task, range(start, stop)))
    return done[0]


def settle(server, pids):
    """Idle workers that have closed every client connection, so fds and RSS compare like for like."""
    wait_idle(server, pids)
    wait_for(
        lambda: all(accepted_connections(p, server.port) == 0 for p in pids),
        timeout=30,
        what="every client connection closed by the workers",
    )


@pytest.fixture(scope="module")
def soak_server(server_factory, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("soak-tmp")
    with server_factory("--max-tokens-default", "8", api_key=API_KEY, workers=2, env={"TMPDIR": str(tmp)}) as s:
        s.tmp = tmp
        yield s


def test_soak(soak_server, tmp_path):
    s = soak_server
    video = write_video(tmp_path / "clip.mp4", frames=12, fps=6.0, h=48, w=64).read_bytes()
    load = Workload(s, video)
    pids = sorted(s.worker_pids())
    assert len(pids) == 2
    t0 = time.monotonic()
    deadline = t0 + TIME_CAP

    warm = run_batch(load, 0, WARMUP, deadline)
    settle(s, pids)
    base = snapshot(pids)
    base_tmp = sorted(os.listdir(s.tmp))

    half = (WARMUP + N_REQUESTS) // 2
    done = warm + run_batch(load, WARMUP, half, deadline)
    settle(s, pids)
    mid = snapshot(pids)
    done += run_batch(load, half, N_REQUESTS, deadline)
    elapsed = time.monotonic() - t0
    settle(s, pids)
    end = snapshot(pids)
    leftover = sorted(os.listdir(s.tmp))
    video_uploads = sum(n for (kind, st), n in load.outcomes.items() if kind == "video upload" and st == 200)

    print(f"\nsoak: {done} requests in {elapsed:.1f} s ({done / elapsed:.1f}/s), {THREADS} clients, 2 workers")
    for (kind, status), n in sorted(load.outcomes.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"  {kind:24s} {status!s:>22s}  {n}")
    for p in pids:
        (fd0, rss0), (fdm, rssm), (fd1, rss1) = base[p], mid[p], end[p]
        print(
            f"  worker {p}: fds {fd0} -> {fdm} -> {fd1}; RSS {rss0 / 1024:.1f} -> {rssm / 1024:.1f} -> "
            f"{rss1 / 1024:.1f} MiB after warm-up/half/end: {(rss1 - rss0) / 1024:+.1f} MiB (bound "
            f"{RSS_BOUND_MIB}), second half {(rss1 - rssm) / 1024:+.1f} MiB (bound {RSS_LATE_BOUND_MIB})"
        )
    print(
        f"  temp dir: {base_tmp} after warm-up, {leftover} at the end "
        f"({len(set(leftover) - set(base_tmp))} new; {video_uploads} video uploads went through temp files)"
    )

    assert done >= 1000, f"only {done} requests within {TIME_CAP:.0f} s"
    assert not load.unexpected, load.unexpected[:10]
    assert sorted(s.worker_pids()) == pids, "a worker died during the soak"
    assert not any(isinstance(st, int) and st >= 500 for _, st in load.outcomes)
    # torch keeps a cache folder (torchinductor_<user>) there from start-up; nothing else may appear
    leaked = sorted(set(leftover) - set(base_tmp)) + [f for f in leftover if f.startswith("qwen3vl")]
    assert leaked == [], f"leaked temp files: {leaked[:20]}"
    for p in pids:
        assert end[p][0] - base[p][0] <= FD_SLACK, f"fd growth on {p}: {base[p][0]} -> {end[p][0]}"
        assert (end[p][1] - base[p][1]) / 1024 < RSS_BOUND_MIB, f"RSS growth on {p}: {base[p]} -> {end[p]}"
        assert (end[p][1] - mid[p][1]) / 1024 < RSS_LATE_BOUND_MIB, f"RSS still growing on {p}: {mid[p]} -> {end[p]}"
        assert end[p][0] - mid[p][0] <= FD_SLACK
    assert "Traceback" not in s.log(), s.log()[-3000:]
