"""Media of one request: source -> bytes -> type from the bytes -> `VisionInput`, in order.

This is the one place where the server's ceilings meet the request's wishes: per-part
(or request-wide, `mm_processor_kwargs`) `min_pixels`/`max_pixels`/`fps`/`max_frames`/
`total_pixels`/`video_start`/`video_end` are checked against the server's range and a value
outside it is a 400 that says the range (`image_budget_for`, `video_budget_for`).
Network and file reads run in the calling greenlet (cooperative I/O);
decoding and pixel work run in the gevent hub's thread pool when the process is
monkey-patched, so one big video does not stall every other connection of the worker.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace

from ..engine.base import Limits, VisionInput
from ..errors import MediaError, PromptError
from ..processing.video import (
    DEFAULT_MIN_FRAMES,
    VideoBudget,
    block_marker_tokens,
    video_from_bytes,
)
from ..processing.vision import (
    DEFAULT_MAX_DECODE_PIXELS,
    FACTOR,
    ImageBudget,
    image_from_bytes,
    jpeg_draft_scale,
    preprocess_image,
    probe_image,
    smart_resize,
)
from ..settings import Settings
from .cameras import CameraConfig, clip_timestamps, fresh_frame, is_camera_url, reader_for, record_clip, to_rgb
from .sources import MediaBlob, SourcePolicy, blob_from_bytes, load_media

DEFAULT_MAX_ITEMS = 16
# Tokens kept free for the text around the media when the video pixel cap is derived from
# the prompt budget (the vendor demo's MAX_INPUT_LENGTH - 128 rule).
TEXT_RESERVE_TOKENS = 128
# The fewest tokens a chat adds around its media (`<|im_start|>user\n` ... `<|im_end|>\n
# <|im_start|>assistant\n` and the vision markers are 10): a lower bound, so pricing media
# from their headers never refuses what the prompt's own length check would accept.
MIN_TEXT_TOKENS = 8


@dataclass(frozen=True)
class MediaConfig:
    policy: SourcePolicy = field(default_factory=SourcePolicy)
    max_items: int = DEFAULT_MAX_ITEMS
    image: ImageBudget = field(default_factory=ImageBudget)
    video: VideoBudget = field(default_factory=VideoBudget)
    prompt_tokens: int | None = None  # the longest prompt: media are priced against it before decoding
    max_request_pixels: int = DEFAULT_MAX_DECODE_PIXELS  # source image pixels decoded per request
    request_timeout: float | None = None  # all downloads of one request together
    cameras: CameraConfig = field(default_factory=CameraConfig)  # camera:// and rtsp:// (media/cameras.py)

    @classmethod
    def from_settings(cls, settings: Settings, limits: Limits | None = None) -> MediaConfig:
        """Ceilings from the flags, tightened by what the loaded engine accepts."""
        max_pixels = settings.max_image_pixels
        if limits is not None and limits.max_pixels:
            max_pixels = min(max_pixels, limits.max_pixels)
        max_pixels = max(max_pixels, FACTOR * FACTOR)
        min_pixels = min(settings.min_image_pixels, max_pixels)
        ratio = min(max(settings.video_ratio, 0.0), 1.0)
        prompt_tokens = _prompt_token_limit(settings, limits)
        total_pixels = None
        if prompt_tokens:
            total_pixels = max(prompt_tokens - TEXT_RESERVE_TOKENS, 1) * FACTOR * FACTOR
        policy = SourcePolicy(
            allowed_local_roots=tuple(os.path.abspath(p) for p in settings.allowed_local_media_path),
            allow_private=settings.allow_private_media_urls,
            allowed_networks=settings.allowed_media_network,
            max_bytes=settings.max_media_bytes,
            total_timeout=settings.media_fetch_timeout,
        )
        return cls(
            policy=policy,
            prompt_tokens=prompt_tokens,
            max_request_pixels=settings.max_request_pixels,
            request_timeout=settings.media_request_timeout,
            cameras=CameraConfig.from_settings(settings),
            max_items=settings.max_media_items,
            image=ImageBudget(
                min_pixels=min_pixels, max_pixels=max_pixels, max_decode_pixels=settings.max_source_pixels
            ),
            video=VideoBudget(
                fps=settings.video_fps,
                min_frames=DEFAULT_MIN_FRAMES,
                max_frames=max(settings.max_video_frames, 1),
                frame_max_pixels=max(int(max_pixels * ratio), FACTOR * FACTOR),
                total_pixels=total_pixels,
                max_decode_pixels=settings.max_source_pixels,
            ),
        )


def _prompt_token_limit(settings: Settings, limits: Limits | None) -> int | None:
    values = [v for v in (settings.max_prompt_tokens, limits.max_input_tokens if limits else None) if v]
    return min(values) if values else None


def _in_range(name: str, value, low, high, ceiling: str) -> None:
    """A budget the server cannot honour is a 400 that says what it can, never silently
    clamped (a pixel budget quietly ignored is a user's wrong answer)."""
    if not low <= value <= high:

        def num(v) -> str:
            return str(v) if isinstance(v, int) else f"{v:g}"

        raise MediaError(
            f"{name} {num(value)} is outside what this server can honour: {num(low)} to {num(high)} ({ceiling})",
            code="invalid_value",
        )


PIXEL_CEILING = (
    "the smallest is one 32x32 block; the largest is --max-image-pixels or the vision encoder's compiled size"
)


def image_budget_for(config: MediaConfig, options: dict) -> ImageBudget:
    """The request's `min_pixels` / `max_pixels` for one image (per part, or from the
    request's mm_processor_kwargs) within the server's range, else a 400 naming it;
    `detail_max_pixels` (OpenAI's detail: low) only lowers the budget."""
    b = config.image
    max_pixels = b.max_pixels
    if options.get("max_pixels") is not None:
        max_pixels = int(options["max_pixels"])
        _in_range("max_pixels", max_pixels, FACTOR * FACTOR, b.max_pixels, PIXEL_CEILING)
    if options.get("detail_max_pixels"):
        max_pixels = min(max_pixels, max(int(options["detail_max_pixels"]), FACTOR * FACTOR))
    min_pixels = min(b.min_pixels, max_pixels)
    if options.get("min_pixels") is not None:
        min_pixels = int(options["min_pixels"])
        _in_range("min_pixels", min_pixels, 1, max_pixels, "at most the image's max_pixels")
    return replace(b, min_pixels=min_pixels, max_pixels=max_pixels)


def video_budget_for(config: MediaConfig, options: dict) -> VideoBudget:
    """The request's video controls (`fps`, `max_frames`, per-frame `min_pixels` /
    `max_pixels`, `total_pixels`, `video_start` / `video_end`) within the server's range,
    else a 400 naming the control and the range."""
    b = config.video
    fps = b.fps
    if options.get("fps") is not None:
        fps = float(options["fps"])
        if not math.isfinite(fps):
            raise MediaError("fps must be a positive number", code="invalid_value")
        _in_range("fps", fps, 0.01, 60.0, "frames sampled per second of video")
    max_frames = b.max_frames
    if options.get("max_frames") is not None:
        max_frames = int(options["max_frames"])
        _in_range("max_frames", max_frames, 2, b.max_frames, "--max-video-frames")
    frame_max = b.frame_max_pixels
    if options.get("max_pixels") is not None:
        frame_max = int(options["max_pixels"])
        _in_range("max_pixels", frame_max, FACTOR * FACTOR, config.image.max_pixels, PIXEL_CEILING)
    if options.get("detail_max_pixels"):
        frame_max = min(frame_max, max(int(options["detail_max_pixels"]), FACTOR * FACTOR))
    frame_min = b.frame_min_pixels
    if options.get("min_pixels") is not None:
        per_frame = int(options["min_pixels"])
        _in_range("min_pixels", per_frame, 1, frame_max, "per frame, at most the frame's max_pixels")
        frame_min = per_frame
    total = b.total_pixels
    if options.get("total_pixels") is not None:
        total = int(options["total_pixels"])
        high = b.total_pixels or 2**62
        _in_range("total_pixels", total, FACTOR * FACTOR, high, "one 32x32 block up to what the prompt holds")
    start = float(options.get("video_start") or 0.0)
    end = options.get("video_end")
    if end is not None and float(end) <= start:
        raise MediaError(f"video_end ({end:g} s) must be after video_start ({start:g} s)", code="invalid_value")
    return replace(
        b,
        fps=fps,
        max_frames=max_frames,
        min_frames=min(b.min_frames, max_frames),
        frame_max_pixels=frame_max,
        frame_min_pixels=frame_min,
        total_pixels=total,
        start=start,
        end=None if end is None else float(end),
    )


def _offload(fn, *args):
    """Run CPU-heavy work off the gevent hub when the process is monkey-patched."""
    try:
        from gevent import get_hub, monkey

        if monkey.is_module_patched("threading"):
            ok, value = get_hub().threadpool.apply(_capture, (fn, args))
            if ok:
                return value
            raise value  # in the request greenlet, where the API maps it to a 4xx
    except ImportError:
        pass
    return fn(*args)


def _capture(fn, args):
    """Return the outcome instead of raising in the pool thread: gevent prints a traceback
    for every task that raises, which put one in the log per corrupt upload (a 400)."""
    try:
        return True, fn(*args)
    except Exception as e:
        return False, e


def preprocess_blob(
    blob: MediaBlob, config: MediaConfig, options: dict | None = None, video_tokens: int | None = None
) -> VisionInput:
    """Bytes of a known type -> VisionInput; the bytes decide image or video.  A video is
    sampled to fit `video_tokens` prompt tokens, its markers included."""
    options = options or {}
    if blob.media.is_video:
        budget = video_budget_for(config, options)
        if video_tokens is not None:
            budget = replace(budget, max_tokens=video_tokens)
        return _offload(video_from_bytes, blob.data, blob.media.ext, budget)
    return _offload(image_from_bytes, blob.data, image_budget_for(config, options))


# Decodes whose source is above this many pixels run one at a time per worker: a 64 Mpx
# RGBA PNG needs ~1 GiB while it is decoded and composited, and three at once took 5 GB.
LARGE_DECODE_PIXELS = 16 * 1024 * 1024
_large_decodes = None


def _large_decode_lock():
    global _large_decodes
    if _large_decodes is None:
        try:
            from gevent.lock import Semaphore
        except ImportError:
            from threading import Semaphore
        _large_decodes = Semaphore(1)
    return _large_decodes


class _Pricing:
    """Prompt tokens and decoded pixels of a request's media so far, checked from each
    image's header before it is decoded."""

    def __init__(self, config: MediaConfig, refs: list):
        self.config = config
        # `left`: tokens the media may still take.  Refusing needs a lower bound of the text
        # around them (a request whose media leave less can never fit); sizing videos keeps a
        # fuller reserve, so the sampled frames leave room for the words of the request.
        self.left = (config.prompt_tokens - MIN_TEXT_TOKENS) if config.prompt_tokens else None
        self.video_reserve = min(TEXT_RESERVE_TOKENS, (config.prompt_tokens or 0) // 4) - MIN_TEXT_TOKENS
        self.pixels = 0
        self.videos_left = sum(1 for r in refs if getattr(r, "kind", "image") == "video")

    def image(self, blob: MediaBlob, options: dict) -> int:
        """Check one image from its header; returns its source pixels (as decoded)."""
        budget = image_budget_for(self.config, options)
        width, height, fmt = probe_image(blob.data, budget.max_decode_pixels)
        target = smart_resize(height, width, FACTOR, budget.min_pixels, budget.max_pixels)
        scale = jpeg_draft_scale(width, height, target) if fmt == "JPEG" else 1
        return self.charge((width // scale) * (height // scale), target)

    def frame(self, width: int, height: int, options: dict) -> None:
        """Check one camera frame (already decoded) as an image."""
        budget = image_budget_for(self.config, options)
        if width * height > budget.max_decode_pixels:
            raise MediaError(
                f"the camera's frames ({width}x{height}) are larger than this server decodes (--max-source-pixels)",
                status=413,
                code="media_too_large",
            )
        self.charge(width * height, smart_resize(height, width, FACTOR, budget.min_pixels, budget.max_pixels))

    def charge(self, decoded: int, target: tuple[int, int]) -> int:
        self.pixels += decoded
        if self.pixels > self.config.max_request_pixels:
            raise MediaError(
                f"the images of this request have more than {self.config.max_request_pixels} pixels "
                "to decode together (--max-request-pixels)",
                status=413,
                code="media_too_large",
            )
        if self.left is not None:
            tokens = (target[0] // FACTOR) * (target[1] // FACTOR)
            self.left -= tokens
            if self.left < 0:
                raise PromptError(
                    f"the images of this request take more prompt tokens than this model accepts "
                    f"({self.config.prompt_tokens}); send fewer or smaller images, or lower "
                    "max_pixels",
                    code="invalid_prompt",
                )
        return decoded

    def video_share(self) -> int | None:
        """Tokens the next video may take: an even share of what is left (its outer
        markers set aside)."""
        if self.left is None:
            return None
        share = max((self.left - max(self.video_reserve, 0)) // max(self.videos_left, 1) - 2, 0)
        self.videos_left -= 1
        return share

    def spent(self, item: VisionInput) -> None:
        if self.left is not None and item.kind == "video":
            self.left -= item.num_tokens + 2 + sum(block_marker_tokens(t) for t in (item.timestamps or ()))


def resolve_media(refs, config: MediaConfig) -> list[VisionInput]:
    """Every media reference of a conversation (objects with .url, .param, .options), in
    order.  Raises MediaError (with `param` naming the part) on the first bad one.  Each
    image is priced from its header (prompt tokens, pixels to decode) before it is
    decoded; each video is sampled to fit what is left; all downloads share one deadline."""
    refs = list(refs)
    if len(refs) > config.max_items:
        raise MediaError(
            f"the request carries {len(refs)} images/videos; this server accepts at most "
            f"{config.max_items} per request (--max-media-items)",
            param="messages",
            code="too_many_media",
        )
    pricing = _Pricing(config, refs)
    deadline = time.monotonic() + config.request_timeout if config.request_timeout else None
    out = []
    for ref in refs:
        policy = config.policy
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                _fetch_failed("media_fetch_timeout")
                raise MediaError(
                    "the media of this request took longer than the server allows to download "
                    "(--media-request-timeout)",
                    ref.param,
                    code="media_fetch_timeout",
                )
            policy = replace(policy, total_timeout=min(policy.total_timeout, left))
        if is_camera_url(ref.url):
            out.append(_from_camera(ref, config, pricing))
            continue
        try:
            blob = load_media(ref.url, policy, ref.param)
        except MediaError as e:
            _fetch_failed(e.code)
            e.with_param(ref.param)
            raise
        options = getattr(ref, "options", None) or {}
        try:
            if blob.media.is_video:
                item = preprocess_blob(blob, config, options, pricing.video_share())
            else:
                decoded = pricing.image(blob, options)
                if decoded > LARGE_DECODE_PIXELS:
                    with _large_decode_lock():
                        item = preprocess_blob(blob, config, options)
                else:
                    item = preprocess_blob(blob, config, options)
        except MediaError as e:
            e.with_param(ref.param)
            raise
        except PromptError as e:
            e.param = ref.param
            raise e from None
        del blob
        pricing.spent(item)
        out.append(item)
    return out


def _from_camera(ref, config: MediaConfig, pricing: _Pricing) -> VisionInput:
    """camera://NAME or an allowed rtsp:// URL: the latest frame as an image part, a clip
    recorded from now as a video part (`duration` seconds at the part's `fps`, each block's
    timestamp from the frames' capture times)."""
    from PIL import Image

    from ..model_constants import FACTOR, TEMPORAL_PATCH
    from ..processing.video import VideoMeta, video_smart_resize
    from ..processing.vision import resize_rgb

    options = getattr(ref, "options", None) or {}
    try:
        reader = reader_for(ref.url, config.cameras, config.policy, ref.param)
        if getattr(ref, "kind", "image") != "video":
            frame = fresh_frame(reader, ref.param)
            width, height = frame.size
            pricing.frame(width, height, options)
            image = image_budget_for(config, options)
            return _offload(
                lambda: preprocess_image(Image.fromarray(to_rgb(frame)), image.min_pixels, image.max_pixels)
            )
        cams = config.cameras
        duration = float(options.get("duration") or cams.clip_seconds)
        if not math.isfinite(duration) or duration <= 0 or duration > cams.max_clip_seconds:
            raise MediaError(
                f"duration must be more than 0 and at most {cams.max_clip_seconds:g} seconds "
                "(--camera-max-clip-seconds)",
                code="invalid_value",
            )
        budget = video_budget_for(config, options)
        share = pricing.video_share()
        if share is not None:
            budget = replace(budget, max_tokens=share)
        want = max(2, int(round(duration * budget.fps)))
        probe = fresh_frame(reader, ref.param)
        width, height = probe.size
        if width * height > budget.max_decode_pixels:
            raise MediaError(
                f"the camera's frames ({width}x{height}) are larger than this server decodes (--max-source-pixels)",
                status=413,
                code="media_too_large",
            )
        budget, most = budget.fit(VideoMeta(want, budget.fps, width, height))
        count = min(want, most, budget.max_frames)
        # Each frame is shrunk as it is taken (off the hub), to the size `count` frames may
        # have: a long clip never holds full-size frames.  A clip that ends with fewer
        # frames has room for more pixels, so the size stays within the budget.
        budget = budget.with_blocks(count, duration)
        size = video_smart_resize(
            count, height, width, TEMPORAL_PATCH, FACTOR, budget.min_pixels, budget.stack_max_pixels(count)
        )

        def shrink(bgr):
            return _offload(lambda: resize_rgb(Image.fromarray(bgr[:, :, ::-1]), *size))

        frames = record_clip(reader, duration, budget.fps, count, ref.param, shrink)
        item = _offload(_clip_input, [f.image for f in frames])
        item.timestamps = clip_timestamps(frames)
        pricing.spent(item)
        return item
    except MediaError as e:
        _fetch_failed(e.code)
        e.with_param(ref.param)
        raise
    except PromptError as e:
        e.param = ref.param
        raise e from None


def _clip_input(resized: list) -> VisionInput:
    """Frames already at their final size -> a video VisionInput (an odd count padded with
    the last frame, as for files); its timestamps are set by the caller."""
    import numpy as np

    from ..model_constants import TEMPORAL_PATCH
    from ..processing.vision import patchify

    if len(resized) % TEMPORAL_PATCH:
        resized = resized + [resized[-1]] * (TEMPORAL_PATCH - len(resized) % TEMPORAL_PATCH)
    pixel_values, grid = patchify(np.stack(resized))
    return VisionInput(kind="video", pixel_values=pixel_values, grid_thw=grid)


def _fetch_failed(reason: str) -> None:
    """Count it on GET /metrics (qwen3vl_media_fetch_failures_total{reason})."""
    try:
        from ..metrics import media_fetch_failed
    except ImportError:  # metrics are optional for the media layer
        return
    media_fetch_failed(reason)


def upload_to_input(
    data: bytes, filename: str, config: MediaConfig, param: str = "file"
) -> tuple[MediaBlob, VisionInput]:
    try:
        blob = blob_from_bytes(data, filename, config.policy, param)
        pricing = _Pricing(config, [])
        if blob.media.is_video:
            return blob, preprocess_blob(blob, config, None, pricing.video_share())
        if pricing.image(blob, {}) > LARGE_DECODE_PIXELS:
            with _large_decode_lock():
                return blob, preprocess_blob(blob, config)
        return blob, preprocess_blob(blob, config)
    except MediaError as e:
        e.with_param(param)
        raise
    except PromptError as e:
        e.param = param
        raise e from None


def retag_parts(messages: list[dict], vision: list[VisionInput]) -> None:
    """Set each template media part's type from what the bytes turned out to be, so a
    video sent through `image_url` (the old service's habit) gets a video placeholder."""
    it = iter(vision)
    for msg in messages:
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") in ("image", "video"):
                v = next(it, None)
                if v is not None:
                    part["type"] = v.kind
