"""Camera sources (media/cameras.py): configuration, redaction, the raw-rtsp allowlist, and
one reader against a real RTSP server on loopback (tests/support/rtsp_server.py): the
frames' capture times against the clock drawn into them, a clip's spacing and timestamps,
and a camera killed mid-clip."""

from __future__ import annotations

import threading
import time

import pytest

from qwen3vl_app.errors import MediaError
from qwen3vl_app.media.cameras import (
    CameraConfig,
    CameraError,
    CameraReader,
    Cameras,
    check_rtsp_url,
    clip_timestamps,
    fresh_frame,
    load_cameras,
    parse_camera,
    record_clip,
    redact_url,
)
from qwen3vl_app.media.sources import SourcePolicy
from tests.support.camera import RtspCamera, clock_age_ms, frame_clock_ms, require_rtsp
from tests.support.live import free_port

SECRET = "s3cr3t-pw"


def test_redact_url_hides_user_password_and_query():
    shown = redact_url(f"rtsp://admin:{SECRET}@10.1.2.3:8554/live?token={SECRET}#x")
    assert SECRET not in shown and "admin" not in shown
    assert shown == "rtsp://***@10.1.2.3:8554/live?***"


def test_camera_config_errors_never_show_the_url(tmp_path):
    with pytest.raises(ValueError) as e:
        parse_camera(f"bad name=rtsp://u:{SECRET}@h/x")
    assert SECRET not in str(e.value)
    f = tmp_path / "cams"
    f.write_text(f"# cameras\ndoor=rtsp://u:{SECRET}@10.0.0.5/a\ndoor=rtsp://u:{SECRET}@10.0.0.6/b\n")
    with pytest.raises(ValueError) as e:
        load_cameras((), str(f))
    assert "configured twice" in str(e.value) and SECRET not in str(e.value)
    f.write_text(f"door=rtsp://u:{SECRET}@10.0.0.5/a\n")
    cams = load_cameras(("yard=rtsp://10.0.0.7/b",), str(f))
    assert sorted(cams) == ["door", "yard"] and SECRET not in repr(cams)


def test_raw_rtsp_only_inside_allowed_networks():
    policy = SourcePolicy(allowed_networks=("10.9.0.0/16",))
    with pytest.raises(MediaError) as e:  # loopback: not an allowed network
        check_rtsp_url(f"rtsp://u:{SECRET}@127.0.0.1:8554/cam", policy)
    assert e.value.code == "media_url_not_allowed" and SECRET not in e.value.message
    with pytest.raises(MediaError):  # public addresses too: the server does not dial out for clients
        check_rtsp_url("rtsp://8.8.8.8/cam", policy)
    with pytest.raises(MediaError):  # private addresses are not enough, even with allow_private
        check_rtsp_url("rtsp://10.8.0.1/cam", SourcePolicy(allow_private=True))
    # A name resolving to an allowed and a disallowed address is refused.
    mixed = SourcePolicy(allowed_networks=("10.9.0.0/16",), resolver=lambda h, p: ["10.9.0.4", "127.0.0.1"])
    with pytest.raises(MediaError):
        check_rtsp_url("rtsp://cam.local/x", mixed)
    # Allowed: the URL handed to the reader is pinned to the checked address.
    pinned = SourcePolicy(allowed_networks=("10.9.0.0/16",), resolver=lambda h, p: ["10.9.0.4"])
    url, shown = check_rtsp_url(f"rtsp://u:{SECRET}@cam.local:8554/x", pinned)
    assert url == f"rtsp://u:{SECRET}@10.9.0.4:8554/x"
    assert shown == "rtsp://***@cam.local:8554/x"


@pytest.fixture(scope="module")
def camera():
    require_rtsp()
    with RtspCamera(free_port(), "gray-moving", user="viewer", password=SECRET) as cam:
        yield cam


def _reader(url: str, **kw) -> CameraReader:
    config = CameraConfig(connect_timeout=5.0, read_timeout=kw.pop("read_timeout", 2.0), idle_timeout=30, **kw)
    return CameraReader("test", url, config)


def test_reader_frames_are_fresh_and_clip_times_match_the_clock(camera):
    reader = _reader(camera.url("viewer", SECRET))
    try:
        frame = fresh_frame(reader)
        assert reader.state == "connected" and frame.size == (320, 240)
        # Snapshot freshness: the frame's own clock is under a second old.
        assert clock_age_ms(frame_clock_ms(frame.image), time.time()) < 1000
        frames = record_clip(reader, duration=2.0, fps=4.0, max_frames=64)
        assert 7 <= len(frames) <= 9
        clocks = [frame_clock_ms(f.image) for f in frames]
        # Capture times match the clock drawn into each frame: their offset is the
        # stream's latency, the same for every frame (within a frame interval).
        offsets = [
            f.ts * 1000 - ((c - clocks[0]) & 0xFFFFFFFF) - frames[0].ts * 1000
            for f, c in zip(frames, clocks, strict=True)
        ]
        assert max(offsets) - min(offsets) < 110, offsets
        assert 0 <= clock_age_ms(clocks[0], frames[0].ts) < 1000
        # Spaced at the asked fps (the camera sends 10 fps: 0.2 s to 0.3 s apart).
        gaps = [b.ts - a.ts for a, b in zip(frames, frames[1:], strict=False)]
        assert all(0.15 < g < 0.35 for g in gaps), gaps
        # The prompt's block timestamps are the clock's times (from the first frame),
        # each the mean of its two frames', within the jitter of frame arrival.
        stamps = clip_timestamps(frames)
        by_clock = [((c - clocks[0]) & 0xFFFFFFFF) / 1000 for c in clocks]
        if len(by_clock) % 2:
            by_clock.append(by_clock[-1])
        expected = [(by_clock[i] + by_clock[i + 1]) / 2 for i in range(0, len(by_clock), 2)]
        assert stamps == pytest.approx(expected, abs=0.06)
        assert reader.sessions == 1
    finally:
        reader.stop()


def test_wrong_credentials_and_offline_camera_fail_with_the_reason(camera):
    reader = _reader(camera.url("viewer", "wrong"))
    try:
        started = time.monotonic()
        with pytest.raises(CameraError) as e:
            fresh_frame(reader)
        assert e.value.status == 503 and "'test'" in e.value.message and "could not open" in e.value.message
        assert time.monotonic() - started < 8
        assert reader.state == "error"
    finally:
        reader.stop()
    offline = _reader(f"rtsp://127.0.0.1:{free_port()}/cam")
    try:
        with pytest.raises(CameraError):
            fresh_frame(offline)
    finally:
        offline.stop()


def test_camera_killed_mid_clip():
    require_rtsp()
    cam = RtspCamera(free_port(), "gray-moving")
    reader = _reader(cam.url(), read_timeout=1.5)
    try:
        fresh_frame(reader)
        threading.Timer(0.8, cam.kill).start()
        started = time.monotonic()
        with pytest.raises(CameraError) as e:
            record_clip(reader, duration=6.0, fps=2.0, max_frames=64)
        assert "stopped sending frames mid-clip" in e.value.message and "'test'" in e.value.message
        assert time.monotonic() - started < 5.0  # the read timeout, not the clip's length
        assert reader.state in ("reconnecting", "error") and reader.reason
    finally:
        reader.stop()
        cam.kill()


def test_allowed_raw_rtsp_url_is_read_at_the_checked_address_and_shared(camera):
    cams = Cameras(CameraConfig(connect_timeout=5.0, read_timeout=2.0, idle_timeout=30))
    # The name resolves (here, by the policy's resolver) to an allowed loopback address.
    policy = SourcePolicy(allowed_networks=("127.0.0.0/8",), resolver=lambda host, port: ["127.0.0.1"])
    url = f"rtsp://viewer:{SECRET}@camera.test:{camera.port}/cam"
    try:
        reader = cams.for_url(url, policy)
        assert reader.name == f"rtsp://***@camera.test:{camera.port}/cam"
        assert fresh_frame(reader).size == (320, 240)
        assert cams.for_url(url, policy) is reader  # one reader per URL
        assert cams.all() == []  # raw URLs are not listed among the named cameras
    finally:
        cams.close(wait=3.0)
    assert not reader.running
