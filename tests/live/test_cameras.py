"""Cameras through a real gunicorn server (gevent worker, tiny torch model) and real RTSP
cameras on loopback (GStreamer's RTSP server, tests/support/rtsp_server.py): snapshots,
clips, one RTSP session for many requests, faults, the raw-rtsp allowlist, credentials
kept out of every reply, log line and metric, and a watch that reports a change.

The reader's frame times against the clock drawn into the frames, and clip sampling, are
tested without the server: tests/unit/test_cameras.py."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest
import requests

from tests.support.camera import RtspCamera, clock_age_ms, frame_clock_ms, require_rtsp
from tests.support.live import API_KEY, free_port

USER, SECRET = "viewer", "pa55-w0rd-XYZ"
WRONG = "wr0ng-pa55-QQ"


def user(part, text="What is in the picture?"):
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url, **kw):
    return {"type": "video_url", "video_url": {"url": url}, **kw}


class Cams:
    """The RTSP cameras of this module: `main` (moving pattern, with credentials) for most
    tests; `cold` (the same stream under another name, first used by the concurrency
    test); `dying` and `watched` get their own RTSP servers on ports chosen up front."""

    def __init__(self, tmp_path):
        self.main = RtspCamera(free_port(), "gray-moving", user=USER, password=SECRET)
        self.dying_port = free_port()
        self.watched_port = free_port()
        self.offline_port = free_port()
        self.file = tmp_path / "cameras"
        self.file.write_text(
            "# test cameras\n"
            f"main={self.main.url(USER, SECRET)}\n"
            f"cold={self.main.url(USER, SECRET)}\n"
            f"dying=rtsp://{USER}:{SECRET}@127.0.0.1:{self.dying_port}/cam\n"
            f"watched=rtsp://127.0.0.1:{self.watched_port}/cam\n"
            f"offline=rtsp://{USER}:{SECRET}@127.0.0.1:{self.offline_port}/cam\n"
            f"badpw={self.main.url(USER, WRONG)}\n"
        )


@pytest.fixture(scope="module")
def cams(tmp_path_factory):
    require_rtsp()
    c = Cams(tmp_path_factory.mktemp("cams"))
    yield c
    c.main.kill()


@pytest.fixture(scope="module")
def cam_server(server_factory, cams):
    with server_factory(
        "--camera-file",
        str(cams.file),
        "--camera-read-timeout",
        "2",
        "--camera-connect-timeout",
        "4",
        "--watch-min-interval",
        "0.5",
        "--max-watches-per-key",
        "1",
        "--max-queue",
        "12",
        "--allowed-media-network",
        "10.77.0.0/16",
        api_key=API_KEY,
        workers=1,
    ) as s:
        yield s


def _decode(jpeg: bytes):
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def test_snapshot_is_fresh_and_image_requests_answer(cam_server):
    r = cam_server.get("/v1/cameras/main/snapshot")
    now = time.time()
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/jpeg"
    frame = _decode(r.content)
    assert frame.shape == (240, 320, 3)
    # The frame's own clock is under a second old, and so is its capture time.
    assert clock_age_ms(frame_clock_ms(frame), now) < 1000
    assert now - float(r.headers["X-Capture-Time"]) < 1.0
    out = cam_server.chat(user(image_part("camera://main")), max_tokens=3)
    assert out.status_code == 200, out.text
    assert out.json()["usage"]["prompt_tokens"] > 20  # the frame's vision tokens are in the prompt


def test_clip_records_duration_at_the_requested_fps(cam_server):
    started = time.monotonic()
    r = cam_server.chat(user(video_part("camera://main", fps=4, duration=1.5)), max_tokens=2)
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    # Recorded from now, not taken from a buffer: six frames 0.25 s apart, the first
    # captured after the ask, the last no earlier than 1.25 - 0.25/4 s after it.
    assert took >= 1.18, took
    short = cam_server.chat(user(video_part("camera://main", fps=2, duration=0.5)), max_tokens=2)
    assert short.status_code == 200, short.text
    # 6 frames (3 temporal blocks) against 2 frames (1 block): two more blocks of 320x240
    # frames (resized to 256x320: 8x10 = 80 tokens each) and their time markers.
    extra = r.json()["usage"]["prompt_tokens"] - short.json()["usage"]["prompt_tokens"]
    assert 2 * 80 < extra <= 2 * (80 + 12), extra
    too_long = cam_server.chat(user(video_part("camera://main", duration=600)), max_tokens=2)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "invalid_value"


def test_ten_concurrent_requests_share_one_rtsp_session(cam_server, cams):
    before = cams.main.stats()["clients"]
    results: list = []

    def one():
        results.append(cam_server.chat(user(image_part("camera://cold")), max_tokens=2))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.status_code for r in results] == [200] * 10, [r.text for r in results if r.status_code != 200]
    assert cams.main.stats()["clients"] - before == 1  # one RTSP connection for all ten
    listed = {c["name"]: c for c in cam_server.get("/v1/cameras").json()["data"]}
    assert listed["cold"]["sessions_opened"] == 1
    assert listed["cold"]["state"] == "connected"
    assert (listed["cold"]["width"], listed["cold"]["height"]) == (320, 240)
    assert listed["cold"]["last_frame_age"] < 1.0


def test_faults_are_clear_errors_naming_the_camera(cam_server, cams):
    r = cam_server.chat(user(image_part("camera://nope")), max_tokens=2)
    assert r.status_code == 404 and r.json()["error"]["code"] == "camera_not_found"
    started = time.monotonic()
    r = cam_server.chat(user(image_part("camera://offline")), max_tokens=2)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "camera_unavailable" and "'offline'" in err["message"]
    assert err["param"] == "messages[0].content[0]"
    assert time.monotonic() - started < 8
    listed = {c["name"]: c for c in cam_server.get("/v1/cameras").json()["data"]}
    assert listed["offline"]["state"] in ("error", "reconnecting") and listed["offline"]["reason"]

    # The camera dies in the middle of a 6-second clip: a 503 naming it after the read
    # timeout (2 s), not a hang and not a 500.
    dying = RtspCamera(cams.dying_port, "blue-moving", user=USER, password=SECRET)
    try:
        assert cam_server.get("/v1/cameras/dying/snapshot").status_code == 200
        threading.Timer(1.0, dying.kill).start()
        started = time.monotonic()
        out: list = []
        clip = threading.Thread(
            target=lambda: out.append(
                cam_server.chat(user(video_part("camera://dying", fps=2, duration=6)), max_tokens=2)
            )
        )
        clip.start()
        # The worker keeps answering while its reader waits on the dead camera (off the hub).
        time.sleep(1.5)
        t0 = time.monotonic()
        assert cam_server.health()["status"] == "healthy"
        assert time.monotonic() - t0 < 1.0
        clip.join(30)
        r = out[0]
        assert r.status_code == 503, r.text
        assert "'dying'" in r.json()["error"]["message"] and "mid-clip" in r.json()["error"]["message"]
        assert time.monotonic() - started < 5.5
    finally:
        dying.kill()
    assert cam_server.health()["status"] == "healthy"


def test_raw_rtsp_outside_the_allowed_networks_is_refused(cam_server, cams):
    before = cams.main.stats()["clients"]
    for url in (cams.main.url(), cams.main.url(USER, SECRET), f"rtsps://127.0.0.1:{cams.main.port}/cam"):
        r = cam_server.chat(user(image_part(url)), max_tokens=2)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "media_url_not_allowed"
        assert SECRET not in r.text
    assert cams.main.stats()["clients"] == before  # refused before any connection


def _events(resp):
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            data = line[6:]
            yield None if data == "[DONE]" else json.loads(data)


def test_watch_sends_an_answer_when_the_scene_changes(cam_server, cams):
    cam = RtspCamera(cams.watched_port, "black-still")
    try:
        body = {"camera": "watched", "question": "What colour is it?", "interval": 1.0, "duration": 20, "max_tokens": 4}
        too_fast = cam_server.post("/v1/watches", json={**body, "interval": 0.1})
        assert too_fast.status_code == 400 and too_fast.json()["error"]["param"] == "interval"
        resp = cam_server.post("/v1/watches", json=body, stream=True, timeout=60)
        assert resp.status_code == 200, resp.text
        events = _events(resp)
        first = next(events)
        assert first["object"] == "watch.answer" and first["sequence"] == 1 and first["camera"] == "watched"
        # One watch per key on this server (--max-watches-per-key 1): a second is a 429.
        second = cam_server.post("/v1/watches", json=body, timeout=30)
        assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_watches"
        metrics = cam_server.get("/metrics").text
        assert "qwen3vl_watches_active 1.0" in metrics
        # The scene changes: an answer within two intervals (plus a generation's time).
        cam.pattern("white-still")
        changed = time.monotonic()
        got = next(events)
        assert time.monotonic() - changed < 2 * body["interval"] + 2.0, got
        assert got["object"] == "watch.answer" and got["sequence"] == 2 and got["answer"] != first["answer"]
        resp.close()
    finally:
        cam.kill()


def test_credentials_never_leave_the_server(cam_server, cams):
    """After every test above (errors, faults, watches), nothing the server said or wrote
    holds the camera password or user."""
    replies = [
        cam_server.get("/v1/cameras"),
        cam_server.get("/metrics"),
        cam_server.get("/openapi.json"),
        cam_server.chat(user(image_part("camera://offline")), max_tokens=2),
        cam_server.chat(user(image_part("camera://badpw")), max_tokens=2),  # the camera answers 401
        cam_server.get("/v1/cameras"),  # with badpw's reason
    ]
    assert [r.status_code for r in replies] == [200, 200, 200, 503, 503, 200]
    texts = [r.text for r in replies] + [cam_server.log()]
    for text in texts:
        assert SECRET not in text and WRONG not in text
        assert f"{USER}:" not in text
    assert 'qwen3vl_camera_frames_total{camera="main"}' in texts[1]
    with open(f"/proc/{cam_server.proc.pid}/cmdline", "rb") as f:
        assert SECRET.encode() not in f.read()
    assert requests.get(cam_server.url + "/v1/cameras", timeout=10).status_code == 401
