"""Vision placeholders in the token stream, and the three-row M-RoPE positions.

Prompt layout (the same as the installed transformers ``Qwen3VLProcessor`` produces from
the Qwen3-VL chat template, and what the tests check token for token):

* image: the template writes ``<|vision_start|><|image_pad|><|vision_end|>``; the single
  pad becomes ``grid_t*grid_h*grid_w/4`` pads.
* video: the template writes ``<|vision_start|><|video_pad|><|vision_end|>``; the single
  pad becomes, for each temporal block (2 frames) ``k``::

      <{t_k:.1f} seconds><|vision_start|><|video_pad|> x (grid_h*grid_w/4)<|vision_end|>

  so the outer ``<|vision_start|>`` ... ``<|vision_end|>`` of the template stays around
  the blocks:  ``<vs><0.2 seconds><vs>pads<ve><1.2 seconds><vs>pads<ve><ve>``.

Positions (``get_rope_index`` of transformers' Qwen3-VL): text advances all three rows
together; each run of pad tokens is one grid (an image, or one temporal block of a video
with its temporal size taken as 1) placed at the current offset ``s``: row 0 is ``s``,
rows 1/2 are ``s`` + the merged-grid row/column; the next text starts at
``s + max(grid_h, grid_w)/2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..engine.base import VisionInput
from ..errors import MediaError
from ..model_constants import IMAGE_PAD, MERGE_SIZE, VIDEO_PAD, VISION_END, VISION_START

PLACEHOLDER_IDS = frozenset({IMAGE_PAD, VIDEO_PAD})


def count_placeholders(input_ids: Sequence[int]) -> tuple[int, int]:
    images = sum(1 for t in input_ids if t == IMAGE_PAD)
    videos = sum(1 for t in input_ids if t == VIDEO_PAD)
    return images, videos


def vision_tokens(vision: Sequence[VisionInput]) -> tuple[int, int]:
    """(image, video) placeholder tokens the media of a prompt take (a video's
    timestamps and block markers are text around them, not counted here)."""
    images = sum(v.num_tokens for v in vision if v.kind == "image")
    return images, sum(v.num_tokens for v in vision if v.kind != "image")


def timestamp_text(seconds: float) -> str:
    return f"<{seconds:.1f} seconds>"


def expand_vision(
    input_ids: list[int], vision: list[VisionInput], encode: Callable[[str], list[int]] | None = None
) -> list[int]:
    """Replace each single ``<|image_pad|>`` / ``<|video_pad|>`` (one per media item, in
    order) with the full placeholder run for the matching `VisionInput`.

    `encode` turns the timestamp text of video blocks into token ids (the chat tokenizer's
    ``encode``); needed only when a video is present.  The placeholders in `input_ids` must
    match `vision` one to one, in order and kind; otherwise a `MediaError` (400) -- this is
    also what refuses pad tokens typed by the user with no media attached."""
    n_img, n_vid = count_placeholders(input_ids)
    want_img = sum(1 for v in vision if v.kind == "image")
    want_vid = sum(1 for v in vision if v.kind == "video")
    if (n_img, n_vid) != (want_img, want_vid):
        raise MediaError(
            f"the prompt has {n_img} image and {n_vid} video placeholder tokens but the request carries "
            f"{want_img} image(s) and {want_vid} video(s); do not write <|image_pad|>, <|video_pad|> "
            "or other vision tokens in message text",
            param="messages",
            code="placeholder_mismatch",
        )
    out: list[int] = []
    it = iter(vision)
    ts_cache: dict[str, list[int]] = {}
    for tok in input_ids:
        if tok == IMAGE_PAD or tok == VIDEO_PAD:
            item = next(it)
            kind = "image" if tok == IMAGE_PAD else "video"
            if item.kind != kind:
                raise MediaError(
                    f"media order does not match the prompt: expected a {kind}, got a {item.kind}",
                    param="messages",
                    code="placeholder_mismatch",
                )
            if kind == "image":
                out.extend([IMAGE_PAD] * item.num_tokens)
            else:
                if encode is None:
                    raise ValueError("expand_vision needs `encode` to write video timestamps")
                t, h, w = item.grid_thw
                per_block = h * w // (MERGE_SIZE * MERGE_SIZE)
                stamps = list(item.timestamps)
                if len(stamps) != t:
                    raise ValueError(f"video has {t} temporal blocks but {len(stamps)} timestamps")
                for k in range(t):
                    text = timestamp_text(stamps[k])
                    if text not in ts_cache:
                        ts_cache[text] = list(encode(text))
                    out.extend(ts_cache[text])
                    out.append(VISION_START)
                    out.extend([VIDEO_PAD] * per_block)
                    out.append(VISION_END)
        else:
            out.append(tok)
    return out


def _grids(vision: list[VisionInput]) -> list[tuple[int, int, int, int]]:
    """(token_type, t, h, w) for every run of pad tokens, in order: an image is one run,
    a video one run per temporal block."""
    runs = []
    for v in vision:
        t, h, w = v.grid_thw
        if v.kind == "image":
            runs.append((IMAGE_PAD, t, h, w))
        else:
            runs.extend([(VIDEO_PAD, 1, h, w)] * t)
    return runs


def mrope_positions(input_ids: Sequence[int], vision: list[VisionInput]) -> np.ndarray:
    """int64 [3, len(input_ids)] M-RoPE positions for an expanded prompt."""
    ids = np.asarray(input_ids, dtype=np.int64)
    L = len(ids)
    pos = np.empty((3, L), dtype=np.int64)
    runs = _grids(vision)
    r = 0
    cur = 0
    i = 0
    while i < L:
        tok = int(ids[i])
        if tok != IMAGE_PAD and tok != VIDEO_PAD:
            j = i
            while j < L and ids[j] != IMAGE_PAD and ids[j] != VIDEO_PAD:
                j += 1
            pos[:, i:j] = np.arange(cur, cur + (j - i), dtype=np.int64)
            cur += j - i
            i = j
            continue
        j = i
        while j < L and ids[j] == tok:
            j += 1
        if r >= len(runs) or runs[r][0] != tok:
            raise MediaError(
                "vision placeholder tokens do not match the media in the request",
                param="messages",
                code="placeholder_mismatch",
            )
        _, t, h, w = runs[r]
        r += 1
        lh, lw = h // MERGE_SIZE, w // MERGE_SIZE
        if j - i != t * lh * lw:
            raise MediaError(
                "vision placeholder tokens do not match the media in the request",
                param="messages",
                code="placeholder_mismatch",
            )
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(lh), np.arange(lw), indexing="ij")
        pos[0, i:j] = tt.reshape(-1) + cur
        pos[1, i:j] = hh.reshape(-1) + cur
        pos[2, i:j] = ww.reshape(-1) + cur
        cur += max(h, w) // MERGE_SIZE
        i = j
    if r != len(runs):
        raise MediaError(
            "vision placeholder tokens do not match the media in the request",
            param="messages",
            code="placeholder_mismatch",
        )
    return pos
