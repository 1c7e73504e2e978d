"""Image preprocessing is bit-exact with transformers' Qwen3-VL image processor."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from qwen3vl_app.errors import MediaError
from qwen3vl_app.processing import vision as V
from tests.support.media_samples import gradient_rgb, image_bytes, png_header_only
from tests.support.oracle import processor


def _ref(img, **size):
    ip = processor().image_processor
    kw = {"size": {"shortest_edge": size["min_pixels"], "longest_edge": size["max_pixels"]}} if size else {}
    return ip(images=[img], return_tensors="np", **kw)


@pytest.mark.parametrize(
    "h,w,mode",
    [
        (240, 320, "RGB"),
        (100, 90, "RGBA"),
        (1000, 37, "L"),
        (64, 64, "P"),
        (31, 2000, "RGB"),
        (1080, 1920, "RGB"),
        (2000, 3000, "LA"),
        (17, 17, "RGB"),
        (513, 511, "CMYK"),
    ],
)
def test_pixel_values_bit_exact(h, w, mode):
    img = Image.fromarray(gradient_rgb(h, w, seed=h + w)).convert(mode)
    ref = _ref(img)
    ours = V.preprocess_image(img)
    assert ours.pixel_values.dtype == np.float32
    assert ours.grid_thw == tuple(ref["image_grid_thw"][0])
    assert np.array_equal(ours.pixel_values, ref["pixel_values"])


@pytest.mark.parametrize("min_pixels,max_pixels", [(4096, 200_000), (256 * 256, 768 * 768), (1_000_000, 2_000_000)])
def test_budget_bit_exact(min_pixels, max_pixels):
    img = Image.fromarray(gradient_rgb(700, 900))
    ref = _ref(img, min_pixels=min_pixels, max_pixels=max_pixels)
    ours = V.preprocess_image(img, min_pixels, max_pixels)
    assert ours.grid_thw == tuple(ref["image_grid_thw"][0])
    assert np.array_equal(ours.pixel_values, ref["pixel_values"])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "WEBP"])
def test_every_format_from_bytes(fmt, tmp_path):
    data = image_bytes(fmt, 200, 300)
    ours = V.image_from_bytes(data)
    p = tmp_path / f"x.{fmt.lower()}"
    p.write_bytes(data)
    ref = _ref(ImageOps.exif_transpose(Image.open(p)))
    assert np.array_equal(ours.pixel_values, ref["pixel_values"])


def test_exif_orientation_applied():
    img = Image.fromarray(gradient_rgb(100, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    ours = V.image_from_bytes(buf.getvalue())
    ref = _ref(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    assert ours.grid_thw == tuple(ref["image_grid_thw"][0]) and ours.grid_thw[1] > ours.grid_thw[2]
    assert np.array_equal(ours.pixel_values, ref["pixel_values"])


@pytest.mark.parametrize("h,w", [(10, 10), (224, 224), (1000, 10), (4000, 3000), (99999, 600), (32, 6400)])
def test_smart_resize_matches_reference(h, w):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    for lo, hi in [(65536, 16777216), (4096, 589824)]:
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(MediaError):
                V.smart_resize(h, w, 32, lo, hi)
        else:
            assert V.smart_resize(h, w, 32, lo, hi) == smart_resize(h, w, 32, lo, hi)


def test_bomb_refused_before_decode():
    with pytest.raises(MediaError) as e:
        V.image_from_bytes(png_header_only(100000, 100000))
    assert "limit" in e.value.message and e.value.status == 400
    # Below Pillow's own bomb threshold our header check names the size.
    with pytest.raises(MediaError) as e:
        V.image_from_bytes(png_header_only(9000, 9000), V.ImageBudget(max_decode_pixels=50_000_000))
    assert "9000x9000" in e.value.message


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        image_bytes("PNG")[:200],
        image_bytes("JPEG")[:300],
        b"GIF89a" + b"\x00" * 20,
        b"not an image at all",
    ],
)
def test_corrupt_and_truncated(blob):
    with pytest.raises(MediaError) as e:
        V.image_from_bytes(blob)
    assert e.value.status == 400
    assert "Traceback" not in e.value.message and "0x" not in e.value.message


def test_extreme_aspect_ratio_refused():
    with pytest.raises(MediaError):
        V.image_from_bytes(image_bytes("PNG", 2, 1000))
