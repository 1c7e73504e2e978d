"""The published bmodels' layout: compiled without --do_sample, so `lm_head` returns the
token id (top-k on the device) instead of logits.  Slow on purpose: that lm_head takes
1-2 minutes per call on the cmodel; one prefill and one decode run, and their tokens must
equal the argmax of transformers' logits on the same weights.

The same build carries `--chunk_length 64`: block_cache with one stage per KV length
(64/128/256), so the decode also shows the smallest fitting stage is used."""

from __future__ import annotations

import pytest

from tests.native.conftest import _build_tiny_bmodel
from tests.native.test_bm1684x import _text_prompt, _torch_greedy

pytestmark = [pytest.mark.bm1684x, pytest.mark.slow]


@pytest.fixture(scope="module")
def published_dir(native_module) -> object:
    return _build_tiny_bmodel("--published", "--chunk-length", "64")


def test_token_id_lm_head_matches_transformers_argmax(published_dir, torch_model):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    eng = BM1684XEngine(published_dir)
    try:
        rt = eng.rt
        assert not rt.lm_head_logits and not eng.capabilities.logits and rt.vocab_size == 0
        assert rt.decode_stages == [64, 128, 256]
        prompt = _text_prompt(published_dir)
        ref_tokens, _ = _torch_greedy(torch_model, prompt, 1)
        first = eng.prefill_slot(0, prompt)
        assert first.logits is None and first.token_id == ref_tokens[0]
        before = rt.counters()
        second = eng.decode_batch({0: first.token_id})[0]
        assert second.token_id == ref_tokens[1]
        assert rt.last_decode_kv_length == 64 and len(prompt.input_ids) < 64
        step = {k: v - before[k] for k, v in rt.counters().items()}
        assert step["launches"] == rt.num_layers + 2 and step["d2d_copies"] == 0, step
        assert step["d2s_bytes"] == 4, step  # the token id, not logits
    finally:
        eng.close()
