"""Grounding's coordinate mapping, exactly: Qwen3-VL's 0-1000 relative coordinates of the
image it saw -> pixels of the image the client sent, through the real media pipeline
(downscaled, upscaled, rounded to a different aspect ratio, EXIF-rotated, a JPEG decoded at
reduced size, several images); the output schema; and the parse of an output cut short."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from qwen3vl_app.grounding import Grounding, detections, parse_items, to_pixels
from qwen3vl_app.media.pipeline import MediaConfig, resolve_media
from qwen3vl_app.processing.vision import FACTOR, ImageBudget, resize_rgb, smart_resize
from qwen3vl_app.prompt.messages import MediaRef
from qwen3vl_app.settings import Settings
from tests.support.media_samples import data_uri, image_bytes


def resolve(blobs: list[bytes], **settings):
    cfg = MediaConfig.from_settings(Settings(**settings))
    refs = [
        MediaRef("image", data_uri(b, "image/jpeg" if b[:2] == b"\xff\xd8" else "image/png"), "p", {}) for b in blobs
    ]
    return resolve_media(refs, cfg)


def jpeg(w: int, h: int, orientation: int | None = None) -> bytes:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=80, exif=exif.tobytes())
    return buf.getvalue()


def test_to_pixels_is_exact_and_orders_corners():
    items = [
        {"bbox_2d": [100, 200, 300, 400], "label": "a"},
        {"bbox_2d": [900, 800, 10, 0], "label": "reversed"},
        {"point_2d": [333, 1000], "label": "p"},
        {"image": 2, "bbox_2d": [0, 0, 1000, 1000], "label": "whole second"},
        {"image": 3, "bbox_2d": [0, 0, 1, 1], "label": "no such image"},
        {"bbox_2d": [1, 2, 3], "label": "malformed"},
    ]
    out = to_pixels(items, [(1000, 750), (641, 479)])
    assert out == [
        {"image_index": 0, "label": "a", "bbox_2d": [100, 150, 300, 300]},
        {"image_index": 0, "label": "reversed", "bbox_2d": [10, 0, 900, 600]},
        {"image_index": 0, "label": "p", "point_2d": [333, 750]},
        {"image_index": 1, "label": "whole second", "bbox_2d": [0, 0, 641, 479]},
    ]
    assert to_pixels([{"point_2d": [333, 1]}], [(641, 479)])[0]["point_2d"] == [213.453, 0.479]  # x * w / 1000


@pytest.mark.parametrize(
    "blob,source",
    [
        (image_bytes("PNG", 750, 1000), (1000, 750)),  # downscaled to the budget
        (image_bytes("PNG", 10, 20), (20, 10)),  # upscaled to the minimum
        (image_bytes("PNG", 1000, 40), (40, 1000)),  # 40 px rounds to 32: the aspect ratio changes
        (jpeg(400, 200, orientation=6), (200, 400)),  # EXIF: a quarter turn, sides swap
        (jpeg(4000, 3000), (4000, 3000)),  # decoded at 1/8 for the resize: still the sent size
    ],
)
def test_the_pipeline_keeps_the_source_size(blob, source):
    (item,) = resolve([blob], max_image_pixels=128 * 128, max_source_pixels=4000 * 3000)
    assert item.source_size == source
    rel = {"bbox_2d": [250, 100, 750, 900], "label": "x"}
    w, h = source
    assert detections(json.dumps([rel]), [item])[0]["bbox_2d"] == [w / 4, h / 10, w * 3 / 4, h * 9 / 10]


def test_several_images_map_to_their_own_sizes():
    items = resolve([image_bytes("PNG", 300, 500), jpeg(64, 640), image_bytes("PNG", 50, 50)])
    out = [{"image": k, "bbox_2d": [500, 500, 1000, 1000], "label": str(k)} for k in (3, 1, 2)]
    got = detections(json.dumps(out), items)
    assert [(d["image_index"], d["bbox_2d"]) for d in got] == [
        (2, [25, 25, 50, 50]),
        (0, [250, 150, 500, 300]),
        (1, [32, 320, 64, 640]),
    ]


def test_relative_coordinates_of_the_resized_image_are_those_of_the_source():
    """What the mapping rests on: the resize maps the whole source onto the whole resized
    canvas (no crop, no padding), even where rounding to 32 changes the aspect ratio."""
    w, h = 1000, 70  # resized to a 32-multiple height: the aspect ratio moves by ~9 %
    box = (200, 14, 600, 56)  # x1, y1, x2, y2 in source pixels
    src = np.zeros((h, w, 3), np.uint8)
    src[box[1] : box[3], box[0] : box[2]] = 255
    budget = ImageBudget(min_pixels=FACTOR * FACTOR, max_pixels=1024 * 64)
    rh, rw = smart_resize(h, w, FACTOR, budget.min_pixels, budget.max_pixels)
    assert abs(rw / rh - w / h) / (w / h) > 0.05
    seen = resize_rgb(Image.fromarray(src), rh, rw)[..., 0] > 127
    cols, rows = np.flatnonzero(seen.any(0)), np.flatnonzero(seen.any(1))
    rel = [cols[0] / rw, rows[0] / rh, (cols[-1] + 1) / rw, (rows[-1] + 1) / rh]  # as the model would see it
    px = to_pixels([{"bbox_2d": [round(r * 1000) for r in rel], "label": ""}], [(w, h)])[0]["bbox_2d"]
    # within one resized pixel of the box drawn in the source
    assert all(abs(a - b) <= s / r for a, b, s, r in zip(px, box, (w, h, w, h), (rw, rh, rw, rh), strict=True))


def test_schema_and_cut_output():
    one = Grounding().json_schema(1)
    assert one["maxItems"] == 50 and list(one["items"]["properties"]) == ["bbox_2d", "label"]
    both = Grounding("any", 3).json_schema(2)
    assert [list(v["properties"]) for v in both["items"]["anyOf"]] == [
        ["image", "bbox_2d", "label"],
        ["image", "point_2d", "label"],
    ]
    assert both["items"]["anyOf"][0]["properties"]["image"] == {"type": "integer", "minimum": 1, "maximum": 2}
    cut = '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}, {"bbox_2d": [9, 1'
    assert [i["label"] for i in parse_items(cut)] == ["a", "b"]
    assert parse_items("") == [] and parse_items('[{"bbox_2d": [1') == []


def test_the_ceiling_wins_when_rounding_up_to_the_minimum_would_pass_it():
    """A vision encoder compiled for 128x128 (min and max budget both 16384): a 128x96
    image rounded up to the minimum would be 160x128, which that encoder cannot run."""
    from qwen3vl_app.processing.video import video_smart_resize

    assert smart_resize(96, 128, FACTOR, 128 * 128, 128 * 128) == (96, 128)
    assert smart_resize(100, 100, FACTOR, 128 * 128, 128 * 128) == (128, 128)  # fits: as the reference
    h, w = video_smart_resize(4, 96, 128, 2, FACTOR, 4 * 128 * 128, 4 * 128 * 128)
    assert h * w <= 128 * 128
    (item,) = resolve([image_bytes("PNG", 96, 128)], max_image_pixels=128 * 128, min_image_pixels=128 * 128)
    assert item.grid_thw == (1, 6, 8) and item.source_size == (128, 96)
