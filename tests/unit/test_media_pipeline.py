"""Server ceilings vs per-request wishes, and the request-level media pipeline."""

import io

import numpy as np
import pytest
from PIL import Image

from qwen3vl_app.engine.base import Limits
from qwen3vl_app.errors import MediaError, PromptError
from qwen3vl_app.media.pipeline import (
    MediaConfig,
    image_budget_for,
    resolve_media,
    retag_parts,
    upload_to_input,
    video_budget_for,
)
from qwen3vl_app.processing.vision import preprocess_image
from qwen3vl_app.settings import Settings
from tests.support.media_samples import gradient_rgb, image_bytes, video_bytes


class Ref:
    def __init__(self, url, param="messages[0].content[0]", **options):
        self.url, self.param, self.options = url, param, options


def data_uri(blob):
    import base64

    return "data:image/png;base64," + base64.b64encode(blob).decode()


def test_config_from_settings_and_engine_limits():
    s = Settings(max_image_pixels=16777216, video_ratio=0.5, allowed_local_media_path=("rel/dir",))
    bm = MediaConfig.from_settings(s, Limits(max_context=2048, max_input_tokens=2048, max_pixels=768 * 768))
    assert bm.image.max_pixels == 768 * 768  # the vision encoder's compiled size wins
    assert bm.video.frame_max_pixels == 768 * 768 // 2  # video_ratio share
    assert bm.video.total_pixels == (2048 - 128) * 32 * 32  # the vendor demo's rule
    assert bm.policy.allowed_local_roots[0].startswith("/")
    assert not bm.policy.allow_private
    loose = MediaConfig.from_settings(Settings(max_prompt_tokens=1000), Limits(4096, 4096))
    assert loose.video.total_pixels == (1000 - 128) * 1024


def test_request_controls_outside_the_range_are_refused():
    cfg = MediaConfig.from_settings(Settings(max_image_pixels=100_000, max_video_frames=10))
    for options, says in [
        ({"max_pixels": 10**9}, "max_pixels 1000000000 is outside what this server can honour: 1024 to 100000"),
        ({"max_pixels": 5}, "max_pixels 5 is outside what this server can honour: 1024 to 100000"),
        ({"min_pixels": 10**9}, "min_pixels 1000000000 is outside what this server can honour: 1 to 100000"),
        ({"max_pixels": 50_000, "min_pixels": 60_000}, "1 to 50000"),
    ]:
        with pytest.raises(MediaError, match=says):
            image_budget_for(cfg, options)
    b = image_budget_for(cfg, {"max_pixels": 50_000, "min_pixels": 2000})
    assert (b.max_pixels, b.min_pixels) == (50_000, 2000)
    assert image_budget_for(cfg, {"detail_max_pixels": 5}).max_pixels == 1024  # the server's own cap only lowers
    for options, says in [
        ({"fps": 1000}, "fps 1000 is outside"),
        ({"max_frames": 10**6}, "max_frames 1000000 is outside what this server can honour: 2 to 10"),
        ({"max_pixels": 10**9}, "1024 to 100000"),
        ({"video_start": 2.0, "video_end": 1.0}, "video_end"),
    ]:
        with pytest.raises(MediaError, match=says):
            video_budget_for(cfg, options)
    v = video_budget_for(cfg, {"fps": 60, "max_frames": 2, "max_pixels": 100_000, "min_pixels": 5000})
    assert (v.fps, v.max_frames, v.min_frames, v.frame_max_pixels, v.frame_min_pixels) == (60, 2, 2, 100_000, 5000)
    clip = video_budget_for(cfg, {"video_start": 1.5, "video_end": 2.5, "total_pixels": 8192})
    assert (clip.start, clip.end, clip.total_pixels) == (1.5, 2.5, 8192)


def test_resolve_in_order_and_retag(tmp_path):
    cfg = MediaConfig()
    vid = video_bytes(tmp_path, ".mp4", frames=10, h=64, w=64)
    import base64

    refs = [
        Ref(data_uri(image_bytes("PNG", 64, 64))),
        Ref("data:image/png;base64," + base64.b64encode(vid).decode(), "messages[0].content[1]"),
    ]
    out = resolve_media(refs, cfg)
    assert [v.kind for v in out] == ["image", "video"]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "x"}]}]
    retag_parts(messages, out)
    assert [p["type"] for p in messages[0]["content"]] == ["image", "video", "text"]


def test_errors_name_the_part_and_limits():
    cfg = MediaConfig(max_items=2)
    with pytest.raises(MediaError) as e:
        resolve_media([Ref(data_uri(image_bytes()))] * 3, cfg)
    assert e.value.code == "too_many_media"
    with pytest.raises(MediaError) as e:
        resolve_media([Ref(data_uri(image_bytes())), Ref("data:image/png;base64,AAAA", "messages[2].content[5]")], cfg)
    assert e.value.param == "messages[2].content[5]"


def test_upload_and_animated_gif_first_frame():
    frames = [Image.fromarray(gradient_rgb(64, 96, seed=s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    blob, v = upload_to_input(buf.getvalue(), "anim.gif", MediaConfig())
    assert blob.media.format == "gif" and v.kind == "image"
    first = Image.open(io.BytesIO(buf.getvalue()))
    assert np.array_equal(v.pixel_values, preprocess_image(first).pixel_values)
    with pytest.raises(MediaError) as e:
        upload_to_input(b"", "x.png", MediaConfig())
    assert e.value.param == "file"


def test_header_pricing_accepts_what_fits_a_short_prompt_and_refuses_what_cannot():
    """A model whose prompts hold 128 tokens (the tiny test bmodel) takes one 64-token image:
    pricing from the header refuses only what the prompt's length check would refuse too."""
    cfg = MediaConfig.from_settings(Settings(), Limits(max_context=256, max_input_tokens=128, max_pixels=256 * 256))
    (item,) = resolve_media([Ref(data_uri(image_bytes("PNG", 96, 96)))], cfg)
    assert item.num_tokens == 64
    two = [Ref(data_uri(image_bytes("PNG", 96, 96, seed=i)), f"messages[0].content[{i}]") for i in range(2)]
    with pytest.raises(PromptError) as e:  # 128 image tokens leave no room for the chat around them
        resolve_media(two, cfg)
    assert e.value.code == "invalid_prompt" and e.value.param == "messages[0].content[1]"
