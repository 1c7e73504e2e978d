"""The vision cache on the bm1684x engine: a repeated image is placed from the rows kept
on the host and the vit is not launched; the logits are identical.  A near-identical
image (one pixel changed) is a miss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.native.test_bm1684x import _image_prompt

pytestmark = pytest.mark.bm1684x


def _vit_launches(engine) -> int:
    return engine.timings().get("vit", (0, 0.0))[0]


def test_repeated_image_skips_the_vit(native_module, tiny_bmodel_dir):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    eng = BM1684XEngine(tiny_bmodel_dir, vision_cache_mb=1)
    try:
        rt = eng.rt
        first = eng.prefill_slot(0, _image_prompt(tiny_bmodel_dir, eng.limits.max_pixels, seed=5))
        launches = _vit_launches(eng)
        assert launches >= 1 and len(eng.vision_cache) == 1
        tokens = sum(v.num_tokens for v in _image_prompt(tiny_bmodel_dir, eng.limits.max_pixels, seed=5).vision)
        assert eng.vision_cache.bytes == rt.vit_outputs * tokens * rt.hidden_size * 2  # bf16 rows on the host

        # the same picture, preprocessed again (a new object: the key comes from the pixels)
        again = eng.prefill_slot(0, _image_prompt(tiny_bmodel_dir, eng.limits.max_pixels, seed=5))
        assert _vit_launches(eng) == launches
        np.testing.assert_array_equal(again.logits, first.logits)

        # one pixel value different: a miss, the vit runs
        near = _image_prompt(tiny_bmodel_dir, eng.limits.max_pixels, seed=5)
        pixels = near.vision[0].pixel_values.copy()
        pixels[0, 0] += 0.5
        near.vision[0] = dataclasses.replace(near.vision[0], pixel_values=pixels)
        eng.prefill_slot(0, near)
        assert _vit_launches(eng) == launches + 1 and len(eng.vision_cache) == 2
    finally:
        eng.close()


def test_cache_off_keeps_nothing(native_module, tiny_bmodel_dir):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    eng = BM1684XEngine(tiny_bmodel_dir)  # --vision-cache-mb 0
    try:
        eng.prefill_slot(0, _image_prompt(tiny_bmodel_dir, eng.limits.max_pixels, seed=6))
        assert len(eng.vision_cache) == 0 and eng.rt.last_vit_rows == [None]
    finally:
        eng.close()
