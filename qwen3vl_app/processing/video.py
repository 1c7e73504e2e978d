"""Qwen3-VL video preprocessing with OpenCV + numpy + Pillow (no torch, no torchvision).

1. Open the file with OpenCV, read frame count / fps / size from the container (size
   checked before any frame is decoded).
2. Choose frame indices exactly as the reference processor does: ``n = int(total / fps_video
   * fps)`` clamped to ``[min_frames, max_frames]`` and to the frame count, spread evenly
   (``linspace(0, total-1, n)`` rounded).
3. Decode only those frames: short gaps are skipped with ``grab()`` (no colour conversion),
   long gaps with a seek (``CAP_PROP_POS_FRAMES``), so a long clip is never decoded whole.
4. Resize every frame to one size chosen by the video ``smart_resize`` with a per-frame
   pixel budget: ``video_ratio`` x the image budget, further capped so the whole clip
   stays under ``total_pixels`` (each 2-frame block costs ``h*w/1024`` prompt tokens).
5. Pad to an even frame count by repeating the last frame, normalise and patchify exactly
   as for images (two consecutive frames form one temporal patch).
6. One timestamp per temporal block: the mean of its two frames' times (``index / fps``),
   which the prompt shows as ``<t.t seconds>`` before each block.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ..engine.base import VisionInput
from ..errors import MediaError
from .vision import (
    DEFAULT_MAX_DECODE_PIXELS,
    DEFAULT_MAX_PIXELS,
    FACTOR,
    MAX_ASPECT_RATIO,
    TEMPORAL_PATCH,
    patchify,
    resize_rgb,
)

DEFAULT_FPS = 2.0
DEFAULT_MIN_FRAMES = 4
DEFAULT_MAX_FRAMES = 768
DEFAULT_MIN_PIXELS = 4096  # over the whole stack, as the reference's `shortest_edge`
DEFAULT_VIDEO_RATIO = 0.5
FALLBACK_FPS = 24.0  # when the container does not say
# Gaps up to this many frames are skipped by grabbing; larger gaps seek.
SEEK_GAP = 12
# A container that reports no frame count is counted by grabbing, up to this many frames.
MAX_COUNTED_FRAMES = 200_000


@dataclass(frozen=True)
class VideoBudget:
    fps: float = DEFAULT_FPS
    min_frames: int = DEFAULT_MIN_FRAMES
    max_frames: int = DEFAULT_MAX_FRAMES
    min_pixels: int = DEFAULT_MIN_PIXELS
    frame_max_pixels: int = int(DEFAULT_MAX_PIXELS * DEFAULT_VIDEO_RATIO)
    frame_min_pixels: int = 0  # a request's per-frame min_pixels (the stack's is min_pixels)
    total_pixels: int | None = None  # token-pixels for the whole clip (None: no cap)
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS
    # Prompt tokens the whole clip may take, its per-block timestamp and marker tokens
    # included (None: no cap).  Fewer frames are sampled when the markers alone would not fit.
    max_tokens: int | None = None
    # The clip to sample, in seconds of the source (qwen-vl-utils' video_start / video_end);
    # timestamps in the prompt stay the source's own.
    start: float = 0.0
    end: float | None = None

    def fit(self, meta: VideoMeta) -> tuple[VideoBudget, int]:
        """(this budget with its pixel cap tightened to what `max_tokens` leaves after the
        markers, frames to sample at most).  A 400 (invalid_prompt) before any frame is
        decoded when even `min_frames` frames cannot fit."""
        if not self.max_tokens:
            return self, self.max_frames
        per_block = block_marker_tokens(meta.duration) + 1  # markers + the smallest block (32x32 = 1 token)
        blocks = self.max_tokens // per_block
        frames = min(self.max_frames, blocks * TEMPORAL_PATCH)
        if frames < max(self.min_frames, 1):
            from ..errors import PromptError

            raise PromptError(
                f"this video needs at least {self.min_frames} frames, which take "
                f"{-(-self.min_frames // TEMPORAL_PATCH) * per_block} prompt tokens; "
                f"{self.max_tokens} are left for it",
                code="invalid_prompt",
            )
        return replace(self, max_frames=frames), frames

    def with_blocks(self, num_frames: int, duration: float) -> VideoBudget:
        """The pixel cap for `num_frames` sampled frames once their markers are paid for."""
        if not self.max_tokens:
            return self
        blocks = -(-num_frames // TEMPORAL_PATCH)
        left = max(self.max_tokens - blocks * block_marker_tokens(duration), blocks)
        cap = left * FACTOR * FACTOR
        return replace(self, total_pixels=min(self.total_pixels, cap) if self.total_pixels else cap)

    def stack_max_pixels(self, num_frames: int) -> int:
        """The `max_pixels` handed to the video smart_resize (an area summed over frames)."""
        per_frame = self.frame_max_pixels
        if self.total_pixels:
            # total_pixels counts one frame per 2-frame temporal block.
            per_frame = min(per_frame, self.total_pixels * TEMPORAL_PATCH // max(num_frames, 1))
        return max(per_frame, FACTOR * FACTOR) * num_frames


def block_marker_tokens(seconds: float) -> int:
    """Tokens around one temporal block of a video in the prompt: `<t.t seconds>` (digits
    are single tokens: '<', the digits, '.', one decimal, ' seconds', '>') plus
    <|vision_start|> and <|vision_end|>.  Bounded by the clip's last timestamp."""
    return 5 + len(str(int(max(seconds, 0.0)))) + 2


@dataclass
class VideoMeta:
    total_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps if self.fps else 0.0


def video_smart_resize(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int = TEMPORAL_PATCH,
    factor: int = FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Like the image smart_resize, but the budget is an area summed over the frames."""
    if num_frames < 1:
        raise MediaError("video has no frames to sample", code="invalid_video")
    if height <= 0 or width <= 0:
        raise MediaError("video has zero width or height", code="invalid_video")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise MediaError(f"video aspect ratio is above {MAX_ASPECT_RATIO}:1", code="invalid_video")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
        if t_bar * h_bar * w_bar > max_pixels:  # rounding up passed the ceiling: it wins (see smart_resize)
            beta = math.sqrt((num_frames * height * width) / max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
    return h_bar, w_bar


def sample_indices(total_frames: int, video_fps: float, fps: float, min_frames: int, max_frames: int) -> np.ndarray:
    """Frame indices to decode (the reference processor's rule)."""
    if total_frames <= 0:
        raise MediaError("video has no decodable frames", code="invalid_video")
    n = int(total_frames / video_fps * fps)
    n = min(max(n, min_frames), max_frames, total_frames)
    n = max(n, 1)
    return np.linspace(0, total_frames - 1, n).round().astype(int)


def clip_frames(meta: VideoMeta, start: float = 0.0, end: float | None = None) -> tuple[int, int]:
    """(first, last) frame index of the clip [start, end] seconds (the whole video by
    default); a 400 when it holds no frame."""
    last_frame = meta.total_frames - 1
    first = max(0, math.ceil(start * meta.fps - 1e-6))
    last = last_frame if end is None else min(last_frame, math.floor(end * meta.fps + 1e-6))
    if first > last_frame:
        raise MediaError(
            f"video_start {start:g} s is past the end of the video ({meta.duration:.2f} s)", code="invalid_value"
        )
    if last < first:
        raise MediaError(
            f"the clip from {start:g} s to {end:g} s holds no frame (the video has {meta.fps:g} frames per second)",
            code="invalid_value",
        )
    return first, last


def block_timestamps(indices: list[int] | np.ndarray, video_fps: float, temporal: int = TEMPORAL_PATCH) -> list[float]:
    """Mean time (seconds) of the frames of each temporal block; the index list is padded
    with its last element to a multiple of `temporal` first."""
    idx = [int(i) for i in indices]
    if len(idx) % temporal:
        idx.extend([idx[-1]] * (temporal - len(idx) % temporal))
    times = [i / video_fps for i in idx]
    return [(times[i] + times[i + temporal - 1]) / 2 for i in range(0, len(times), temporal)]


# ------------------------------------------------------------------------------ decoding


def _open(path: str):
    # FFmpeg's own warnings about broken input would otherwise go to the server's stderr.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    import cv2

    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise MediaError("video cannot be opened: corrupt, truncated or an unsupported codec", code="invalid_video")
    return cap


def probe(path: str, max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS) -> VideoMeta:
    cap = _open(path)
    try:
        return _probe(cap, path, max_decode_pixels)
    finally:
        cap.release()


def _probe(cap, path: str, max_decode_pixels: int) -> VideoMeta:
    import cv2

    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    if width <= 0 or height <= 0:
        raise MediaError("video has no decodable frames", code="invalid_video")
    if width * height > max_decode_pixels:
        raise MediaError(
            f"video frames are {width}x{height} pixels, above this server's limit of "
            f"{max_decode_pixels} pixels per frame",
            code="video_too_large",
        )
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(fps) or fps <= 0 or fps > 1000:
        fps = FALLBACK_FPS
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if total <= 0 or total > 10_000_000:
        total = _count_frames(path)
    if total <= 0:
        raise MediaError("video has no decodable frames", code="invalid_video")
    return VideoMeta(total, fps, width, height)


def _count_frames(path: str) -> int:
    cap = _open(path)
    try:
        n = 0
        while n < MAX_COUNTED_FRAMES and cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def read_frames(cap, indices: np.ndarray, transform=None) -> tuple[list[np.ndarray], list[bool]]:
    """Decode the frames at `indices` (ascending) as RGB uint8 arrays, seeking over long gaps.

    `transform(rgb)` is applied to each frame as soon as it is decoded (the resize), so only
    small frames are kept however long the clip.  Returns the frames and, per index,
    whether it was decoded (a failed one repeats the previous good frame, or the first
    good one when the failure is at the start)."""
    import cv2

    frames: list[np.ndarray | None] = []
    ok_flags: list[bool] = []
    pos = 0  # index of the frame the next read() returns
    last: np.ndarray | None = None
    last_idx = -1
    for idx in (int(i) for i in indices):
        if idx == last_idx and last is not None:
            frames.append(last)
            ok_flags.append(True)
            continue
        gap = idx - pos
        if gap < 0 or gap > SEEK_GAP:
            cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
        else:
            for _ in range(gap):
                if not cap.grab():
                    break
        ok, bgr = cap.read()
        pos = idx + 1
        if ok and bgr is not None and bgr.ndim == 3 and bgr.shape[2] >= 3:
            rgb = cv2.cvtColor(bgr[:, :, :3], cv2.COLOR_BGR2RGB)
            last = transform(rgb) if transform is not None else rgb
            last_idx = idx
            frames.append(last)
            ok_flags.append(True)
        else:
            frames.append(None)
            ok_flags.append(False)
    if last is None:
        raise MediaError("video has no decodable frames", code="invalid_video")
    prev = None
    for i, f in enumerate(frames):
        if f is None:
            frames[i] = prev
        else:
            prev = f
    first_good = next(f for f in frames if f is not None)
    return [f if f is not None else first_good for f in frames], ok_flags


class _Resizer:
    """Resizes every decoded frame to the one size the first decoded frame determines."""

    def __init__(self, num_frames: int, budget: VideoBudget):
        self.num_frames, self.budget = num_frames, budget
        self.size: tuple[int, int] | None = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.size is None:
            h, w = rgb.shape[:2]
            self.size = video_smart_resize(
                self.num_frames,
                h,
                w,
                TEMPORAL_PATCH,
                FACTOR,
                max(self.budget.min_pixels, self.budget.frame_min_pixels * self.num_frames),
                self.budget.stack_max_pixels(self.num_frames),
            )
        return resize_rgb(Image.fromarray(rgb), *self.size)


def video_from_path(path: str, budget: VideoBudget = VideoBudget()) -> VisionInput:
    cap = _open(path)
    try:
        meta = _probe(cap, path, budget.max_decode_pixels)
        budget, _ = budget.fit(meta)  # refused here, before decoding, when it cannot fit at all
        first, last = clip_frames(meta, budget.start, budget.end)
        indices = first + sample_indices(last - first + 1, meta.fps, budget.fps, budget.min_frames, budget.max_frames)
        budget = budget.with_blocks(len(indices), meta.duration)
        frames, ok = read_frames(cap, indices, _Resizer(len(indices), budget))
    finally:
        cap.release()
    if sum(ok) * 2 < len(ok):
        raise MediaError("video is corrupt: most sampled frames could not be decoded", code="invalid_video")
    return _assemble(frames, indices, meta.fps, (meta.width, meta.height))


def _assemble(resized: list[np.ndarray], indices, video_fps: float, source_size=None) -> VisionInput:
    resized = list(resized)
    sampled = len(resized)
    if len(resized) % TEMPORAL_PATCH:
        resized.extend([resized[-1]] * (TEMPORAL_PATCH - len(resized) % TEMPORAL_PATCH))
    pixel_values, grid = patchify(np.stack(resized))
    return VisionInput(
        kind="video",
        pixel_values=pixel_values,
        grid_thw=grid,
        timestamps=block_timestamps(indices, video_fps),
        source_size=source_size,
        frames=sampled,
    )


def frames_to_input(
    frames: list[np.ndarray], indices: np.ndarray | list[int], video_fps: float, budget: VideoBudget = VideoBudget()
) -> VisionInput:
    """Already decoded RGB frames (the sampled ones, same size) -> VisionInput(kind="video")."""
    resize = _Resizer(len(frames), budget)
    source = (frames[0].shape[1], frames[0].shape[0]) if len(frames) else None
    return _assemble([resize(np.ascontiguousarray(f)) for f in frames], indices, video_fps, source)


def video_from_bytes(
    data: bytes, ext: str = ".mp4", budget: VideoBudget = VideoBudget(), tmp_dir: str | None = None
) -> VisionInput:
    """OpenCV decodes from a path, so the bytes go to a temporary file that is removed
    when this returns or raises."""
    if not data:
        raise MediaError("video is empty (0 bytes)", code="empty_media")
    with tempfile.NamedTemporaryFile(prefix="qwen3vl-media-", suffix=ext, dir=tmp_dir) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
        return video_from_path(tmp.name, budget)


def video_tokens(num_frames: int, height: int, width: int, budget: VideoBudget = VideoBudget()) -> int:
    rh, rw = video_smart_resize(
        num_frames, height, width, TEMPORAL_PATCH, FACTOR, budget.min_pixels, budget.stack_max_pixels(num_frames)
    )
    blocks = (num_frames + TEMPORAL_PATCH - 1) // TEMPORAL_PATCH
    return blocks * (rh // FACTOR) * (rw // FACTOR)
