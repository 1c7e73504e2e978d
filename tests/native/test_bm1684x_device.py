"""What a real SE7 does that the simulator hides, made visible: unzeroed device memory in
the KV cache (filled here with bf16 NaN), and the device work per decode token (counted by
the runtime: launches, copies, bytes).  Few device calls: each takes about a second."""

from __future__ import annotations

import numpy as np
import pytest

from tests.native.test_bm1684x import _image_prompt, _text_prompt

pytestmark = pytest.mark.bm1684x

BF16_NAN = 0x7FC0


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def test_nan_in_the_kv_cache_never_reaches_the_logits(native_module, bm_engine, tiny_bmodel_dir):
    rt = bm_engine.rt
    hooks = native_module.testing
    rt.reset()
    for layer in range(rt.num_layers):
        for which in (0, 1):
            assert not hooks.read_kv_cache(rt, layer, which).any(), "reset() leaves a zero KV cache"
    prompt = _text_prompt(tiny_bmodel_dir)
    first = bm_engine.prefill_slot(0, prompt).logits
    token = int(np.argmax(first))
    clean = bm_engine.decode_batch({0: token})[0].logits

    hooks.fill_kv_cache(rt, BF16_NAN)
    assert (hooks.read_kv_cache(rt, rt.num_layers - 1, 1) == BF16_NAN).all()
    np.testing.assert_array_equal(bm_engine.prefill_slot(0, prompt).logits, first)
    before = rt.counters()
    again = bm_engine.decode_batch({0: token})[0].logits  # attends over every cache row, masked or not
    first_step = _delta(rt.counters(), before)
    np.testing.assert_array_equal(again, clean)

    # a decode token costs what the vendor's path costs: embedding + layers + lm_head
    # launches, no device-to-device copies, one wait for the logits
    before = rt.counters()
    bm_engine.decode_batch({0: int(np.argmax(again))})[0]
    step = _delta(rt.counters(), before)
    assert step["launches"] == rt.num_layers + 2, step
    assert step["d2d_copies"] == 0 and step["memsets"] == 0, step
    assert step["syncs"] == 1, step
    # token id + positions + the aligned 64-byte piece of the mask holding the newly opened
    # slot; the first step after a prefill uploads the whole mask once
    assert step["s2d_copies"] == 3 and step["s2d_bytes"] == 4 + 12 + 64, step
    assert first_step["s2d_bytes"] == 4 + 12 + 2 * (rt.seq_len + 1), first_step
    assert step["d2s_bytes"] == rt.vocab_size * 4, step  # the logits, for host sampling


def test_vision_stays_on_the_device(bm_engine, tiny_bmodel_dir):
    rt = bm_engine.rt
    assert rt.has_add and rt.vit_outputs == 3
    prompt = _image_prompt(tiny_bmodel_dir, bm_engine.limits.max_pixels, seed=4)
    bm_engine.prefill_slot(0, prompt)  # the mask of this shape is now on the device
    before = rt.counters()
    bm_engine.prefill_slot(0, _image_prompt(tiny_bmodel_dir, bm_engine.limits.max_pixels, seed=5))
    d = _delta(rt.counters(), before)
    n_ds = rt.vit_outputs - 1
    # embedding, one vit call, the layers, `add` per deepstack feature, lm_head
    assert d["launches"] == 1 + 1 + rt.num_layers + n_ds + 1, d
    # vit outputs reach their prompt rows on the device (one contiguous run of rows)
    assert d["d2d_copies"] == 1 + n_ds, d
    assert d["d2s_bytes"] == rt.vocab_size * 4, d  # only the logits come back
    P, dim = rt.vit_patches, rt.vit_patch_dim
    inputs = P * dim * 4 + P * 2 * 4 + P * 4 * 4 + P * 4 * 4  # pixels, ids, pos_idx, weights; no mask
    prompt_side = rt.max_input_length * 4 + 3 * rt.max_input_length * 4  # ids, positions
    assert d["s2d_bytes"] == inputs + prompt_side, d


def test_rows_a_longer_sequence_left_are_not_zeroed(native_module, tiny_bmodel_dynamic_dir):
    """A prefill leaves the rows past its prompt as an earlier, longer sequence wrote them
    (finite K/V the decode mask closes): no memsets, and the same logits as on a zeroed
    cache.  The dynamic build writes only the prompt's rows, so those rows stay stale."""
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine
    from qwen3vl_app.prompt.template import build_prompt
    from tests.native.test_bm1684x import _tokenizer

    eng = BM1684XEngine(tiny_bmodel_dynamic_dir)
    try:
        rt = eng.rt
        short = _text_prompt(tiny_bmodel_dynamic_dir)
        story = "Hello! Who are you? Tell me a long story about the sea, the wind and the ships."
        long = build_prompt(_tokenizer(tiny_bmodel_dynamic_dir), [{"role": "user", "content": story}])
        assert len(long.input_ids) > len(short.input_ids) + 8
        eng.prefill_slot(0, long)
        eng.decode_batch({0: 1})
        before = rt.counters()
        first = eng.prefill_slot(0, short).logits
        assert _delta(rt.counters(), before)["memsets"] == 0
        token = int(np.argmax(first))
        over_stale = eng.decode_batch({0: token})[0].logits

        rt.reset()  # every row zero
        np.testing.assert_array_equal(eng.prefill_slot(0, short).logits, first)
        np.testing.assert_array_equal(eng.decode_batch({0: token})[0].logits, over_stale)
    finally:
        eng.close()
