"""Qwen3-VL image preprocessing with numpy + Pillow only (no torch, no transformers).

Steps, each equal to the reference processor (tests prove bit-exact `pixel_values`):

1. decode (header checked first, so a decompression bomb is refused before any pixel is
   allocated), apply the EXIF orientation, composite transparency onto white, RGB;
2. `smart_resize` to sides that are multiples of 32 within the pixel budget, resized
   with Pillow's bicubic filter;
3. scale to 0-1 and normalise with mean = std = 0.5 (done as a 256-entry lookup table
   computed with the reference's float64 -> float32 arithmetic, so it is exact);
4. repeat to 2 frames (temporal patch) and cut into 16x16 patches in merge order: every
   2x2 group of neighbouring patches is contiguous, each row holds C x T x 16 x 16 values.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from ..engine.base import VisionInput
from ..errors import MediaError
from ..model_constants import FACTOR, MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH

ROW_SIZE = 3 * TEMPORAL_PATCH * PATCH_SIZE * PATCH_SIZE  # 1536

DEFAULT_MIN_PIXELS = 65_536
DEFAULT_MAX_PIXELS = 16_777_216
# Largest source image decoded at all (width x height), whatever the resize budget.
DEFAULT_MAX_DECODE_PIXELS = 8192 * 8192
MAX_ASPECT_RATIO = 200

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
RESCALE = 1 / 255
ORIENTATION_TAG = 0x0112  # EXIF Orientation
# `open_image` records the source's (width, height) as displayed here in the image's info:
# a JPEG decoded at reduced size (`jpeg_draft_scale`) is smaller than the image the client sent.
SOURCE_SIZE = "qwen3vl_source_size"


def _make_lut() -> np.ndarray:
    """uint8 value -> normalised float32, computed exactly as the reference does:
    float64 multiply by 1/255, cast to float32, then (x - mean) / std in float32."""
    x = (np.arange(256, dtype=np.float64) * RESCALE).astype(np.float32)
    mean = np.asarray(IMAGE_MEAN, dtype=np.float32)
    std = np.asarray(IMAGE_STD, dtype=np.float32)
    return ((x[:, None] - mean) / std).astype(np.float32)  # [256, 3]


_LUT = _make_lut()
_LUT_UNIFORM = np.ascontiguousarray(_LUT[:, 0]) if (_LUT == _LUT[:, :1]).all() else None


@dataclass(frozen=True)
class ImageBudget:
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Sides that are multiples of `factor`, area within [min_pixels, max_pixels], aspect
    ratio kept as closely as possible.  Where rounding up to `min_pixels` would pass
    `max_pixels` (the two close together: a vision encoder compiled for one size), the
    ceiling wins -- the reference returns the larger size there, which such an encoder
    cannot run."""
    if height <= 0 or width <= 0:
        raise MediaError("image has zero width or height", code="invalid_image")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise MediaError(f"image aspect ratio is above {MAX_ASPECT_RATIO}:1", code="invalid_image")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt((height * width) / max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
    return h_bar, w_bar


def probe_image(data: bytes, max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS) -> tuple[int, int, str]:
    """(width, height, format) from the header alone: no pixel is decoded.  Refuses what
    `open_image` would refuse for its size, so a request can be priced before any decode."""
    if not data:
        raise MediaError("image is empty (0 bytes)", code="empty_media")
    with _pil_errors(max_decode_pixels):
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            fmt = img.format or ""
    _check_size(width, height, max_decode_pixels)
    return width, height, fmt


def jpeg_draft_scale(width: int, height: int, target: tuple[int, int] | None) -> int:
    """1, 2, 4 or 8: how much smaller a JPEG is decoded (the decoder's own DCT scaling,
    Pillow's `draft`) so that both sides stay at least twice the resize target's longer
    side (so the bicubic resize that follows still works from ample detail).  Only for
    sources far larger than their target: a 8192x8192 photo resized to 1 Mpx is decoded at
    1024x1024 instead of 64 Mpx (the result then differs slightly from decoding in full)."""
    if target is None:
        return 1
    need = 2 * max(target)
    ratio = min(width // need, height // need)
    for scale in (8, 4, 2):
        if ratio >= scale:
            return scale
    return 1


def open_image(
    data: bytes, max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS, target: tuple[int, int] | None = None
) -> Image.Image:
    """Decode bytes to an RGB PIL image, refusing oversized or broken images cleanly.

    The size comes from the header (``Image.open`` reads no pixel data), so a PNG that
    claims 100000 x 100000 pixels is refused before anything is allocated.  With a resize
    `target` (height, width), a far larger JPEG is decoded at reduced size."""
    if not data:
        raise MediaError("image is empty (0 bytes)", code="empty_media")
    with _pil_errors(max_decode_pixels):
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        _check_size(width, height, max_decode_pixels)
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WEBP: first frame
        scale = jpeg_draft_scale(width, height, target) if img.format == "JPEG" else 1
        if scale > 1:
            img.draft(img.mode, (width // scale, height // scale))
        img.load()
        swapped = img.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8)  # a quarter turn: sides swap
        out = to_rgb(ImageOps.exif_transpose(img))
        out.info[SOURCE_SIZE] = (height, width) if swapped else (width, height)
        return out


def _check_size(width: int, height: int, max_decode_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise MediaError("image has zero width or height", code="invalid_image")
    if width * height > max_decode_pixels:
        raise MediaError(
            f"image is {width}x{height} pixels, above this server's limit of {max_decode_pixels} pixels",
            code="image_too_large",
        )


@contextmanager
def _pil_errors(max_decode_pixels: int) -> Iterator[None]:
    """Pillow's failures on untrusted bytes, as the MediaError a client can act on.  A
    decompression-bomb warning is an error here: the header claims too many pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except MediaError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise MediaError(
                f"image header claims more pixels than this server's limit of {max_decode_pixels} "
                "pixels; refused before decoding",
                code="image_too_large",
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, MemoryError):
            raise MediaError(
                "image data is corrupt, truncated or not a supported image", code="invalid_image"
            ) from None


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (as the reference does)."""
    has_alpha = "A" in img.getbands() or img.info.get("transparency") is not None
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def resize_rgb(img: Image.Image, height: int, width: int) -> np.ndarray:
    """Bicubic resize (always performed, as in the reference) -> uint8 [H, W, 3]."""
    return np.asarray(img.resize((width, height), resample=Image.Resampling.BICUBIC), dtype=np.uint8)


def normalize(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> normalised float32 (same shape), by table lookup."""
    if _LUT_UNIFORM is not None:
        return np.take(_LUT_UNIFORM, frames)
    return _LUT[frames, np.arange(3)]


def patchify(frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 frames [T, H, W, 3] (T even, H and W multiples of 32) -> normalised
    float32 rows [grid_t*grid_h*grid_w, 1536] in merge order, and (grid_t, grid_h, grid_w).

    Row order: temporal block, then merge-group row, merge-group column, then the 2x2
    patches inside the group; inside a row: channel, frame, patch row, patch column.
    A stack whose frames are all one (an image repeated over the temporal patch, passed as
    a broadcast view) is normalised once."""
    t, h, w, c = frames.shape
    if t % TEMPORAL_PATCH or h % FACTOR or w % FACTOR or c != 3:
        raise ValueError(f"bad frame stack shape {frames.shape}")
    if frames.strides[0] == 0:
        x = np.broadcast_to(normalize(frames[:1]), frames.shape)
    else:
        x = normalize(frames)  # [T, H, W, 3] float32
    gt, gh, gw = t // TEMPORAL_PATCH, h // PATCH_SIZE, w // PATCH_SIZE
    m, p = MERGE_SIZE, PATCH_SIZE
    x = x.reshape(gt, TEMPORAL_PATCH, gh // m, m, p, gw // m, m, p, c)
    # -> (gt, gh/m, gw/m, m_h, m_w, c, tp, p_h, p_w)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return np.ascontiguousarray(x).reshape(gt * gh * gw, c * TEMPORAL_PATCH * p * p), (gt, gh, gw)


def preprocess_image(
    img: Image.Image, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
) -> VisionInput:
    """An RGB PIL image -> VisionInput(kind="image")."""
    source = img.info.get(SOURCE_SIZE) or img.size
    img = to_rgb(img)
    width, height = img.size
    rh, rw = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    arr = resize_rgb(img, rh, rw)
    frames = np.broadcast_to(arr[None], (TEMPORAL_PATCH, *arr.shape))
    pixel_values, grid = patchify(frames)
    return VisionInput(kind="image", pixel_values=pixel_values, grid_thw=grid, source_size=tuple(source))


def image_from_bytes(data: bytes, budget: ImageBudget = ImageBudget()) -> VisionInput:
    width, height, _ = probe_image(data, budget.max_decode_pixels)
    target = smart_resize(height, width, FACTOR, budget.min_pixels, budget.max_pixels)
    img = open_image(data, budget.max_decode_pixels, target)
    return preprocess_image(img, budget.min_pixels, budget.max_pixels)


def image_tokens(
    height: int, width: int, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
) -> int:
    """Prompt tokens an image of this size will take (without decoding it)."""
    rh, rw = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    return (rh // FACTOR) * (rw // FACTOR)
