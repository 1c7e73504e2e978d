"""Placeholder expansion and M-RoPE positions equal transformers' processor + get_rope_index."""

import numpy as np
import pytest
from PIL import Image

from qwen3vl_app.engine.base import Prompt
from qwen3vl_app.errors import MediaError
from qwen3vl_app.model_constants import IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START
from qwen3vl_app.processing import video as VID
from qwen3vl_app.processing.vision import preprocess_image
from qwen3vl_app.prompt.vision import expand_vision, mrope_positions
from qwen3vl_app.tokenizer import ChatTokenizer
from tests.support.media_samples import gradient_rgb, write_video
from tests.support.oracle import decode_all_frames, processor, rope_index


@pytest.fixture(scope="module")
def tok():
    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint

    return ChatTokenizer(ensure_tiny_checkpoint())


def _image(h, w, seed=0):
    img = Image.fromarray(gradient_rgb(h, w, seed))
    return img, preprocess_image(img)


def _video(tmp_path, name, frames, fps, h, w, budget):
    path = write_video(tmp_path / name, frames=frames, fps=fps, h=h, w=w)
    all_frames, vfps = decode_all_frames(path)
    return np.stack(all_frames), vfps, VID.video_from_path(str(path), budget)


def _run(tok, messages, items, video_budget=None):
    """items: list of ("image", PIL, VisionInput) / ("video", frames, fps, VisionInput) in prompt order."""
    text = tok.render(messages)
    vision = [it[-1] for it in items]
    ours_ids = expand_vision(tok.encode(text), vision, tok.encode)
    ours_pos = mrope_positions(ours_ids, vision)

    proc = processor()
    imgs = [it[1] for it in items if it[0] == "image"]
    vids = [it for it in items if it[0] == "video"]
    kw = {}
    if imgs:
        kw["images"] = imgs
    if vids:
        vp = proc.video_processor
        vp.fps, vp.min_frames, vp.max_frames = video_budget.fps, video_budget.min_frames, video_budget.max_frames
        vp.min_pixels, vp.max_pixels = video_budget.min_pixels, video_budget.stack_max_pixels
        vp.video_fps = [it[2] for it in vids]
        kw["videos"] = [it[1] for it in vids]
    ref = proc(text=[text], return_tensors="np", **kw)
    ref_ids = ref["input_ids"][0].tolist()
    assert ours_ids == ref_ids
    ref_pos = rope_index(
        ref["input_ids"][0], ref["mm_token_type_ids"][0], ref.get("image_grid_thw"), ref.get("video_grid_thw")
    )
    assert ours_pos.dtype == np.int64 and ours_pos.shape == (3, len(ours_ids))
    assert np.array_equal(ours_pos, ref_pos)
    if imgs:
        assert np.array_equal(
            np.concatenate([v.pixel_values for v in vision if v.kind == "image"]), ref["pixel_values"]
        )
    return ours_ids, ours_pos


def test_single_image(tok):
    img, v = _image(300, 400)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    ids, pos = _run(tok, msgs, [("image", img, v)])
    assert ids.count(IMAGE_PAD) == v.num_tokens
    # next position: one past the largest
    assert Prompt(ids, pos, [v]).next_position == int(pos.max()) + 1


def test_several_images_turns_and_system(tok):
    a, va = _image(300, 400, 1)
    b, vb = _image(1000, 200, 2)
    c, vc = _image(64, 64, 3)
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}]},
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and this one?"}]},
    ]
    _run(tok, msgs, [("image", a, va), ("image", b, vb), ("image", c, vc)])


def test_video_layout_and_positions(tmp_path, tok):
    budget = VID.VideoBudget(frame_max_pixels=60_000)
    frames, fps, v = _video(tmp_path, "a.mp4", 45, 10.0, 120, 160, budget)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe."}]}]
    ids, pos = _run(tok, msgs, [("video", frames, fps, v)], budget)
    # Documented layout: outer <vs> ... <ve> kept, one "<t seconds><vs>pads<ve>" per block.
    text = tok.decode(ids, skip_special=False)
    t, h, w = v.grid_thw
    block = "<|vision_start|>" + "<|video_pad|>" * (h * w // 4) + "<|vision_end|>"
    expected = "<|vision_start|>" + "".join(f"<{s:.1f} seconds>" + block for s in v.timestamps) + "<|vision_end|>"
    assert expected in text
    assert ids.count(VIDEO_PAD) == v.num_tokens


def test_images_and_videos_mixed(tmp_path, tok):
    budget = VID.VideoBudget(frame_max_pixels=40_000, fps=1.0)
    f1, fps1, v1 = _video(tmp_path, "a.avi", 50, 10.0, 96, 128, budget)
    f2, fps2, v2 = _video(tmp_path, "b.mp4", 31, 7.0, 200, 100, budget)
    img, vi = _image(500, 333)
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "x"}]},
        {"role": "assistant", "content": "y"},
        {"role": "user", "content": [{"type": "text", "text": "and"}, {"type": "video"}]},
    ]
    _run(tok, msgs, [("video", f1, fps1, v1), ("image", img, vi), ("video", f2, fps2, v2)], budget)


def test_typed_placeholders_without_media_refused(tok):
    msgs = [{"role": "user", "content": "look <|vision_start|><|image_pad|><|vision_end|>"}]
    ids = tok.encode(tok.render(msgs))
    with pytest.raises(MediaError) as e:
        expand_vision(ids, [])
    assert e.value.status == 400 and e.value.code == "placeholder_mismatch"
    msgs = [{"role": "user", "content": "<|video_pad|>"}]
    with pytest.raises(MediaError):
        expand_vision(tok.encode(tok.render(msgs)), [])


def test_extra_typed_placeholder_with_media_refused(tok):
    _, v = _image(64, 64)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "<|image_pad|>"}]}]
    with pytest.raises(MediaError):
        expand_vision(tok.encode(tok.render(msgs)), [v])


def test_kind_order_mismatch_refused(tmp_path, tok):
    _, vi = _image(64, 64)
    _, _, vv = _video(tmp_path, "c.mp4", 10, 10.0, 64, 64, VID.VideoBudget())
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}]}]
    with pytest.raises(MediaError):
        expand_vision(tok.encode(tok.render(msgs)), [vv, vi], tok.encode)


def test_text_only_positions_are_arange():
    ids = [1, 2, 3, VISION_START, VISION_END, 5]
    assert np.array_equal(mrope_positions(ids, []), np.tile(np.arange(6), (3, 1)))
