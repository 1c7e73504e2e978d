"""The host-side vit inputs match transformers' Qwen3-VL vision model computations."""

import numpy as np
import pytest

from qwen3vl_app.engine.bm1684x import vit_inputs as vi

torch = pytest.importorskip("torch")
vision_utils = pytest.importorskip("transformers.vision_utils")

GRIDS = [(1, 8, 8), (1, 4, 6), (2, 6, 4), (1, 16, 10), (3, 2, 2)]


@pytest.mark.parametrize("grid", GRIDS)
def test_position_ids_match_transformers(grid):
    ref = vision_utils.get_vision_position_ids(torch.tensor([grid]), 2).numpy()
    np.testing.assert_array_equal(vi.vision_position_ids(grid, 2), ref)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("side", [48, 32])
def test_pos_embed_interpolation_matches_transformers(grid, side):
    idx, w = vision_utils.get_vision_interpolation_indices_and_weights(
        torch.tensor([grid]), num_grid_per_side=side, mode="bilinear", align_corners=True, spatial_merge_size=2
    )
    my_idx, my_w = vi.pos_embed_interpolation(grid, side, 2)
    # compare as the weighted sums they produce over a random table
    table = np.random.default_rng(0).standard_normal((side * side, 8)).astype(np.float32)
    ref = (table[idx.numpy()] * w.numpy()[:, :, None]).sum(1)
    mine = (table[my_idx] * my_w[:, :, None]).sum(1)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(my_idx, idx.numpy())
    np.testing.assert_allclose(my_w, w.numpy(), rtol=1e-6, atol=1e-6)


def test_attention_mask_is_per_frame_and_cuts_padding():
    m = vi.attention_mask((2, 2, 2), padded=10)
    assert m.shape == (10, 10)
    assert (m[:4, :4] == 0).all() and (m[4:8, 4:8] == 0).all()
    assert (m[:4, 4:] < -1000).all() and (m[4:8, :4] < -1000).all()
    assert m[8, 8] == 0 and m[8, 9] < -1000 and (m[:8, 8:] < -1000).all()


def test_video_is_split_between_frames():
    grid = (4, 4, 4)
    px = np.random.default_rng(1).standard_normal((64, 1536)).astype(np.float32)
    calls = vi.vit_calls(px, grid, compiled_patches=40, num_grid_per_side=48)
    assert [c.tokens for c in calls] == [8, 8]
    assert calls[0].pixel_values.shape == (40, 1536)
    np.testing.assert_array_equal(calls[1].pixel_values[:32], px[32:])
    assert (calls[1].pixel_values[32:] == 0).all()
    with pytest.raises(ValueError):
        vi.vit_calls(px, (1, 8, 8), compiled_patches=32, num_grid_per_side=48)
