"""Video preprocessing vs the reference (see oracle.py for how the reference is assembled:
transformers' sampling/smart_resize/patchify/timestamps, torch's uint8 antialiased bicubic
as torchvision calls it).  Frames must agree within 2/255 on the 0-1 pixel scale (two uint8
steps; pixel_values are normalised with std 0.5, so that is 4/255 in pixel_values units).
The only source of difference is the resize kernel: Pillow (ours, and the reference *image*
path) vs torch's fixed-point uint8 kernel, which round differently on rare pixels."""

import numpy as np
import pytest

from qwen3vl_app.errors import MediaError
from qwen3vl_app.processing import video as VID
from tests.support.media_samples import VIDEO_CODECS, write_video
from tests.support.oracle import RefVideoProcessor, decode_all_frames, timestamps

TOL = 2 / 255 + 1e-6  # on the 0-1 pixel scale


def _compare(path, budget: VID.VideoBudget):
    frames, fps = decode_all_frames(path)
    ref_proc = RefVideoProcessor(
        fps=budget.fps,
        min_frames=budget.min_frames,
        max_frames=budget.max_frames,
        min_pixels=budget.min_pixels,
        max_pixels=budget.stack_max_pixels,
    )
    ref_proc.video_fps = [fps]
    ref = ref_proc([np.stack(frames)])
    ours = VID.video_from_path(str(path), budget)
    assert ours.kind == "video"
    assert ours.grid_thw == tuple(int(x) for x in ref["video_grid_thw"][0])
    meta = ref["video_metadata"][0]
    assert ours.timestamps == pytest.approx(timestamps(meta.frames_indices, fps), abs=1e-9)
    assert ours.pixel_values.shape == ref["pixel_values_videos"].shape
    pixel_diff = np.abs(ours.pixel_values - ref["pixel_values_videos"]) * 0.5  # undo std=0.5
    diff = pixel_diff.max()
    assert diff <= TOL, diff
    assert pixel_diff.mean() < 0.05 / 255  # rounding on rare pixels, not a systematic offset
    return ours, diff


@pytest.mark.parametrize(
    "frames,fps,h,w,budget",
    [
        (45, 10.0, 120, 160, VID.VideoBudget(frame_max_pixels=100_000)),  # upscale, odd frame count
        (60, 30.0, 360, 480, VID.VideoBudget(frame_max_pixels=50_000)),  # downscale
        (300, 25.0, 96, 128, VID.VideoBudget(fps=1.0)),  # long-ish clip, sparse sampling (seeks)
        (7, 5.0, 64, 64, VID.VideoBudget()),  # fewer frames than min_frames
        (200, 20.0, 240, 320, VID.VideoBudget(frame_max_pixels=10**7, total_pixels=40 * 1024)),  # total cap binds
        (120, 24.0, 100, 300, VID.VideoBudget(fps=2.0, max_frames=6)),  # max_frames binds
    ],
)
def test_matches_reference(tmp_path, frames, fps, h, w, budget):
    path = write_video(tmp_path / "clip.mp4", frames=frames, fps=fps, h=h, w=w)
    _compare(path, budget)


@pytest.mark.parametrize("ext", sorted(VIDEO_CODECS))
def test_every_container(tmp_path, ext):
    path = write_video(tmp_path / f"clip{ext}", frames=30, fps=10.0, h=96, w=128)
    _compare(path, VID.VideoBudget(frame_max_pixels=60_000))


def test_seeks_instead_of_decoding_everything(tmp_path, monkeypatch):
    """A long clip sampled sparsely must not read every frame."""
    import cv2

    path = write_video(tmp_path / "long.mp4", frames=600, fps=30.0, h=64, w=64)
    counts = {"read": 0, "grab": 0, "set": 0}
    real = cv2.VideoCapture

    class Counting:
        def __init__(self, *a):
            self.cap = real(*a)

        def read(self):
            counts["read"] += 1
            return self.cap.read()

        def grab(self):
            counts["grab"] += 1
            return self.cap.grab()

        def set(self, *a):
            counts["set"] += 1
            return self.cap.set(*a)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", Counting)
    out = VID.video_from_path(str(path), VID.VideoBudget(fps=0.5))
    n = len(out.timestamps) * 2
    assert counts["read"] <= n and counts["grab"] + counts["read"] < 100 and counts["set"] > 0


def test_budget_rules():
    b = VID.VideoBudget(frame_max_pixels=589824 // 2, total_pixels=(2048 - 128) * 32 * 32)
    # 64 frames: the total cap (per frame <= total*2/64) binds before video_ratio's share does.
    assert b.stack_max_pixels(64) == (2048 - 128) * 32 * 32 * 2 // 64 * 64
    assert b.stack_max_pixels(4) == 589824 // 2 * 4


def test_zero_decodable_frames(tmp_path):
    good = write_video(tmp_path / "g.mp4", frames=10, fps=10.0, h=64, w=64).read_bytes()
    # Keep the container header, destroy the media data.
    broken = good[:64] + bytes(len(good) - 64)
    with pytest.raises(MediaError) as e:
        VID.video_from_bytes(broken, ".mp4")
    assert e.value.status == 400


def test_empty_and_garbage(tmp_path):
    with pytest.raises(MediaError):
        VID.video_from_bytes(b"", ".mp4")
    with pytest.raises(MediaError):
        VID.video_from_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100, ".mp4")


def test_temp_file_removed(tmp_path):
    data = write_video(tmp_path / "a.avi", frames=10, fps=10.0, h=64, w=64).read_bytes()
    tmp = tmp_path / "t"
    tmp.mkdir()
    VID.video_from_bytes(data, ".avi", tmp_dir=str(tmp))
    with pytest.raises(MediaError):
        VID.video_from_bytes(b"RIFF\x00\x00\x00\x00AVI " + b"\x00" * 50, ".avi", tmp_dir=str(tmp))
    assert list(tmp.iterdir()) == []
