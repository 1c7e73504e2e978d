"""The torch engine, fed our Prompt (our pixel_values, grids, expanded ids and M-RoPE rows),
gives the same logits as transformers' Qwen3-VL computing positions itself from the same
inputs -- so pixel order, grids and positions reach the model as it expects."""

import numpy as np
import pytest
from PIL import Image

from qwen3vl_app.model_constants import IMAGE_PAD, VIDEO_PAD
from qwen3vl_app.processing import video as VID
from qwen3vl_app.processing.vision import preprocess_image
from qwen3vl_app.prompt.template import build_prompt
from qwen3vl_app.tokenizer import ChatTokenizer
from tests.support.media_samples import gradient_rgb, write_video


@pytest.fixture(scope="module")
def engine():
    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint
    from qwen3vl_app.engine.torch.engine import TorchEngine

    return TorchEngine(ensure_tiny_checkpoint(), dtype="float32", threads=2)


def test_engine_logits_match_model_with_its_own_positions(engine, tmp_path):
    import torch

    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint

    tok = ChatTokenizer(ensure_tiny_checkpoint())
    img = preprocess_image(Image.fromarray(gradient_rgb(200, 300)), 4096, 128 * 128)
    clip = write_video(tmp_path / "c.mp4", frames=30, fps=10.0, h=96, w=128)
    vid = VID.video_from_path(str(clip), VID.VideoBudget(frame_max_pixels=64 * 64))
    msgs = [
        {"role": "system", "content": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "and"},
                {"type": "video"},
                {"type": "text", "text": "what?"},
            ],
        },
    ]
    prompt = build_prompt(tok, msgs, [img, vid])
    ours = engine.prefill_slot(0, prompt).logits

    ids = torch.tensor([prompt.input_ids])
    mm = (ids == IMAGE_PAD).int() + 2 * (ids == VIDEO_PAD).int()
    with torch.inference_mode():
        out = engine.model(
            input_ids=ids,
            mm_token_type_ids=mm,
            pixel_values=torch.from_numpy(img.pixel_values),
            image_grid_thw=torch.tensor([img.grid_thw]),
            pixel_values_videos=torch.from_numpy(vid.pixel_values),
            video_grid_thw=torch.tensor([vid.grid_thw]),
        )
    ref = out.logits[0, -1].float().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    # and a decode step continues from max(position) + 1 on all rows
    assert prompt.next_position == int(prompt.position_ids.max()) + 1
    assert engine.decode_batch({0: int(np.argmax(ours))})[0].logits.shape == ours.shape
    # The check has teeth: plain 1-D positions change the logits far beyond the tolerance.
    prompt.position_ids = np.tile(np.arange(len(prompt.input_ids), dtype=np.int64), (3, 1))
    assert np.abs(engine.prefill_slot(0, prompt).logits - ref).max() > 1e-3
