"""Media of one request: source -> bytes -> type from the bytes -> `VisionInput`, in order.

This is the one place where the server's ceilings meet the request's wishes: per-part
`min_pixels`/`max_pixels`/`fps`/`max_frames` are clamped to the server's flags, never
trusted as given.  Network and file reads run in the calling greenlet (cooperative I/O);
decoding and pixel work run in the gevent hub's thread pool when the process is
monkey-patched, so one big video does not stall every other connection of the worker.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

from ..engine.base import Limits, VisionInput
from ..errors import MediaError
from ..processing.video import (
    DEFAULT_MIN_FRAMES,
    VideoBudget,
    video_from_bytes,
)
from ..processing.vision import (
    FACTOR,
    ImageBudget,
    image_from_bytes,
)
from ..settings import Settings
from .sources import MediaBlob, SourcePolicy, blob_from_bytes, load_media

DEFAULT_MAX_ITEMS = 16
# Tokens kept free for the text around the media when the video pixel cap is derived from
# the prompt budget (the vendor demo's MAX_INPUT_LENGTH - 128 rule).
TEXT_RESERVE_TOKENS = 128


@dataclass(frozen=True)
class MediaConfig:
    policy: SourcePolicy = field(default_factory=SourcePolicy)
    max_items: int = DEFAULT_MAX_ITEMS
    image: ImageBudget = field(default_factory=ImageBudget)
    video: VideoBudget = field(default_factory=VideoBudget)

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
            max_items=settings.max_media_items,
            image=ImageBudget(min_pixels=min_pixels, max_pixels=max_pixels,
                              max_decode_pixels=settings.max_source_pixels),
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


def image_budget_for(config: MediaConfig, options: dict) -> ImageBudget:
    b = config.image
    max_pixels = b.max_pixels
    if options.get("max_pixels"):
        max_pixels = min(max_pixels, max(int(options["max_pixels"]), FACTOR * FACTOR))
    min_pixels = b.min_pixels
    if options.get("min_pixels"):
        min_pixels = max(int(options["min_pixels"]), 1)
    min_pixels = min(min_pixels, max_pixels)
    return replace(b, min_pixels=min_pixels, max_pixels=max_pixels)


def video_budget_for(config: MediaConfig, options: dict) -> VideoBudget:
    b = config.video
    fps = b.fps
    if options.get("fps"):
        fps = float(options["fps"])
        if not math.isfinite(fps) or fps <= 0:
            raise MediaError("fps must be a positive number", code="invalid_value")
        fps = min(fps, 60.0)
    max_frames = b.max_frames
    if options.get("max_frames"):
        max_frames = min(max_frames, max(int(options["max_frames"]), 1))
    frame_max = b.frame_max_pixels
    if options.get("max_pixels"):
        frame_max = min(frame_max, max(int(options["max_pixels"]), FACTOR * FACTOR))
    return replace(b, fps=fps, max_frames=max_frames, min_frames=min(b.min_frames, max_frames),
                   frame_max_pixels=frame_max)


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


def preprocess_blob(blob: MediaBlob, config: MediaConfig, options: dict | None = None) -> VisionInput:
    """Bytes of a known type -> VisionInput; the bytes decide image or video."""
    options = options or {}
    if blob.media.is_video:
        budget = video_budget_for(config, options)
        return _offload(video_from_bytes, blob.data, blob.media.ext, budget)
    return _offload(image_from_bytes, blob.data, image_budget_for(config, options))


def resolve_media(refs, config: MediaConfig) -> list[VisionInput]:
    """Every media reference of a conversation (objects with .url, .param, .options), in
    order.  Raises MediaError (with `param` naming the part) on the first bad one."""
    refs = list(refs)
    if len(refs) > config.max_items:
        raise MediaError(f"the request carries {len(refs)} images/videos; this server accepts at most "
                         f"{config.max_items} per request (--max-media-items)", param="messages",
                         code="too_many_media")
    out = []
    for ref in refs:
        try:
            blob = load_media(ref.url, config.policy, ref.param)
        except MediaError as e:
            _fetch_failed(e.code)
            raise e.with_param(ref.param)
        try:
            out.append(preprocess_blob(blob, config, getattr(ref, "options", None)))
        except MediaError as e:
            raise e.with_param(ref.param)
    return out


def _fetch_failed(reason: str) -> None:
    """Count it on GET /metrics (qwen3vl_media_fetch_failures_total{reason})."""
    try:
        from ..metrics import media_fetch_failed
    except ImportError:  # metrics are optional for the media layer
        return
    media_fetch_failed(reason)


def upload_to_input(data: bytes, filename: str, config: MediaConfig, param: str = "file") -> tuple[MediaBlob, VisionInput]:
    try:
        blob = blob_from_bytes(data, filename, config.policy, param)
        return blob, preprocess_blob(blob, config)
    except MediaError as e:
        raise e.with_param(param)


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
