"""Host-side inputs of the BM1684X vision encoder (pure numpy, no torch).

The vendor-compiled `vit` network takes, besides the pixel rows, what transformers'
Qwen3-VL vision model computes from `grid_thw` on the fly:

* ``position_ids`` int32 [P, 2]: (row, col) of every patch, in the processor's
  merge-group order, repeated for each temporal patch -- indices into the rotary table.
* ``pos_idx`` int32 [P, 4] and ``pos_weight`` float32 [P, 4, 1]: the learned position
  embedding (a square grid of ``num_grid_per_side``²) resampled bilinearly
  (align_corners=True) to the image's (h, w) grid, as four gather indices and weights.
* ``attention_mask`` float32 [1, 1, P, P] (static builds only): 0 where two patches belong
  to the same frame, a large negative number elsewhere (each temporal patch attends only
  within itself), and the padding rows of a static build cut off.

Static builds have a fixed patch count: inputs are padded to it and only the first
``n/4`` output rows are used.  The mask depends only on the grid and that count: it is
built once per shape (a 2304-patch mask is 21 MB) and carries a key, so the runtime keeps
the device copy while the shape repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MASK_VALUE = -10000.0


def vision_position_ids(grid_thw: tuple[int, int, int], merge: int = 2) -> np.ndarray:
    """(row, col) per patch in merge-block order, repeated t times: int32 [t*h*w, 2]."""
    t, h, w = (int(x) for x in grid_thw)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    pos = np.stack([rows, cols], axis=-1)
    return np.tile(pos, (t, 1)).astype(np.int32)


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear (align_corners=True) taps into a `side`-long table for target positions."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2, dtype=np.float32)
    raw = floor[:, None] + offsets
    taps = np.clip(raw, 0, side - 1).astype(np.int64)
    weights = np.clip(1.0 - np.abs(src[:, None] - raw), 0.0, None).astype(np.float32)
    return taps, weights


def pos_embed_interpolation(
    grid_thw: tuple[int, int, int], num_grid_per_side: int, merge: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Gather indices int32 [t*h*w, 4] and weights float32 [t*h*w, 4] that resample the
    learned position grid to (h, w), patches in merge-block order."""
    t, h, w = (int(x) for x in grid_thw)
    pos = vision_position_ids((1, h, w), merge)
    h_taps, h_w = _axis_taps(pos[:, 0], h, num_grid_per_side)
    w_taps, w_w = _axis_taps(pos[:, 1], w, num_grid_per_side)
    idx = (h_taps[:, :, None] * num_grid_per_side + w_taps[:, None, :]).reshape(-1, 4)
    wts = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4)
    return np.tile(idx, (t, 1)).astype(np.int32), np.tile(wts, (t, 1)).astype(np.float32)


def attention_mask(grid_thw: tuple[int, int, int], padded: int | None = None) -> np.ndarray:
    """float32 [P, P]: 0 within a frame (temporal patch), MASK_VALUE elsewhere; padding
    patches (beyond t*h*w) see only themselves.  Cached per shape; read-only."""
    t, h, w = (int(x) for x in grid_thw)
    return _attention_mask((t, h, w), padded or t * h * w)


@lru_cache(maxsize=8)
def _attention_mask(grid_thw: tuple[int, int, int], size: int) -> np.ndarray:
    t, h, w = grid_thw
    n = t * h * w
    if size < n:
        raise ValueError(f"{n} patches do not fit a vision encoder compiled for {size}")
    frame = np.full(size, -1, dtype=np.int64)
    frame[:n] = np.arange(n) // (h * w)
    mask = np.where(frame[:, None] == frame[None, :], 0.0, MASK_VALUE).astype(np.float32)
    pad = np.arange(n, size)
    mask[pad, :] = MASK_VALUE
    mask[:, pad] = MASK_VALUE
    mask[pad, pad] = 0.0
    mask.flags.writeable = False
    return mask


@dataclass
class VitCall:
    """One call of the `vit` network (arrays already padded for static builds)."""

    pixel_values: np.ndarray  # float32 [P, 1536]
    position_ids: np.ndarray  # int32 [P, 2]
    pos_idx: np.ndarray  # int32 [P, 4]
    pos_weight: np.ndarray  # float32 [P, 4, 1]
    attention_mask: np.ndarray | None  # float32 [1, 1, P, P] or None (dynamic builds)
    tokens: int  # valid output rows (patches / merge²)
    mask_key: str = ""  # equal keys, equal masks (the runtime reuses its device copy)
    capture: bool = False  # the runtime keeps the output rows (rt.last_vit_rows) for the vision cache


def vit_calls(
    pixel_values: np.ndarray,
    grid_thw: tuple[int, int, int],
    compiled_patches: int,
    num_grid_per_side: int,
    merge: int = 2,
    dynamic: bool = False,
    with_mask: bool = True,
) -> list[VitCall]:
    """Split one image/video into vit calls that fit the compiled patch count.

    Frames attend only within themselves, so a video is cut between temporal patches and
    each piece is encoded separately; the outputs concatenated in order are exactly the
    whole-video result."""
    t, h, w = (int(x) for x in grid_thw)
    per_frame = h * w
    if pixel_values.shape[0] != t * per_frame:
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows, grid {grid_thw} needs {t * per_frame}")
    if per_frame > compiled_patches:
        raise ValueError(
            f"a {h * 16}x{w * 16} frame ({per_frame} patches) exceeds the vision encoder's "
            f"{compiled_patches} patches; resize it to at most {compiled_patches * 256} pixels"
        )
    # without a mask input every patch of a call attends to every other: one frame per call
    frames_per_call = max(1, compiled_patches // per_frame) if with_mask else 1
    calls = []
    for t0 in range(0, t, frames_per_call):
        tt = min(frames_per_call, t - t0)
        g = (tt, h, w)
        n = tt * per_frame
        size = n if dynamic else compiled_patches
        px = np.zeros((size, pixel_values.shape[1]), dtype=np.float32)
        px[:n] = pixel_values[t0 * per_frame : t0 * per_frame + n]
        pos = np.zeros((size, 2), dtype=np.int32)
        pos[:n] = vision_position_ids(g, merge)
        idx = np.zeros((size, 4), dtype=np.int32)
        wts = np.zeros((size, 4), dtype=np.float32)
        idx[:n], wts[:n] = pos_embed_interpolation(g, num_grid_per_side, merge)
        mask = attention_mask(g, size)[None, None] if with_mask else None
        key = f"{tt}x{h}x{w}/{size}" if with_mask else ""
        calls.append(VitCall(px, pos, idx, wts[:, :, None], mask, n // (merge * merge), key))
    return calls
