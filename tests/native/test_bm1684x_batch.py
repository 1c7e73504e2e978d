"""A batch-4 bmodel (`llm_convert -b 4` through our wrapper) on the bm1684x engine: slots
prefill one at a time through the batch-1 prefill nets, decode together through the
batch-4 decode nets (each slot's K/V written in place, one embedding and one lm_head launch
per step).  Checked against transformers on the same checkpoint, bit for bit against the
batch-1 build on the same sequences, and against the same engine with one slot alone.
Few device calls: a simulated step takes seconds."""

from __future__ import annotations

import numpy as np
import pytest

from tests.native.test_bm1684x import _assert_close, _image_prompt, _text_prompt, _torch_greedy

pytestmark = pytest.mark.bm1684x


@pytest.fixture(scope="module")
def b4_engine(native_module, tiny_bmodel_b4_dir):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    eng = BM1684XEngine(tiny_bmodel_b4_dir)
    yield eng
    eng.close()


def test_batch_build_declares_its_slots(b4_engine):
    rt = b4_engine.rt
    assert rt.batch == b4_engine.max_batch == 4
    # per-slot history inputs, new rows written in place, batch embedding and lm_head
    assert rt.batch_slot_kv and rt.batch_heads
    assert {"embedding_cache_batch", "lm_head_batch"} <= set(rt.networks)
    # each slot's new row goes to its next history row: a slot holds SEQLEN tokens, as batch 1
    assert b4_engine.limits.max_context == rt.max_context == rt.seq_len
    assert rt.slot_lengths == [0, 0, 0, 0]
    with pytest.raises(RuntimeError, match="before their prefill"):
        b4_engine.decode_batch({1: 5})
    with pytest.raises(RuntimeError, match="prefill_slot"):
        rt.prefill(np.array([1, 2], np.int32), np.zeros((3, 2), np.int32))


def _step(engine, tokens: dict[int, int]):
    before = engine.rt.counters()
    outs = engine.decode_batch(tokens)
    after = engine.rt.counters()
    return outs, {k: after[k] - before[k] for k in ("launches", "d2d_copies", "syncs")}


def _batch1_logits(engine, prompt, tokens: list[int]) -> list[np.ndarray]:
    """The batch-1 build's logits for `prompt` then `tokens` fed one at a time."""
    out = [engine.prefill_slot(0, prompt).logits]
    for t in tokens:
        out.append(engine.decode_batch({0: t})[0].logits)
    return out


def test_slots_decode_together_as_alone_and_as_transformers(b4_engine, bm_engine, tiny_bmodel_b4_dir, torch_model):
    eng, layers = b4_engine, b4_engine.rt.num_layers
    text = _text_prompt(tiny_bmodel_b4_dir)
    image = _image_prompt(tiny_bmodel_b4_dir, eng.limits.max_pixels, seed=4)
    ref_t, ref_t_logits = _torch_greedy(torch_model, text, 3)
    ref_i, ref_i_logits = _torch_greedy(torch_model, image, 3)

    got_t = [eng.prefill_slot(0, text).logits]
    got_i = [eng.prefill_slot(2, image).logits]
    _assert_close(got_t[0], ref_t_logits[0], "slot 0 prefill")
    _assert_close(got_i[0], ref_i_logits[0], "slot 2 prefill")
    together = []
    for i in range(2):  # teacher-forced with transformers' tokens: compared step by step
        outs, cost = _step(eng, {0: ref_t[i], 2: ref_i[i]})
        _assert_close(outs[0].logits, ref_t_logits[i + 1], f"slot 0 step {i} (with slot 2)")
        _assert_close(outs[2].logits, ref_i_logits[i + 1], f"slot 2 step {i} (with slot 0)")
        # one embedding, one launch per layer and one lm_head for both slots, one wait;
        # every new K/V row written in place by the nets: no copies
        assert cost == {"launches": layers + 2, "d2d_copies": 0, "syncs": 1}, cost
        together.append(outs[0].logits)
        got_t.append(outs[0].logits)
        got_i.append(outs[2].logits)

    # slot 2 leaves for a step: slot 0 goes on, slot 2's KV region is left as it was
    outs, cost = _step(eng, {0: ref_t[2]})
    _assert_close(outs[0].logits, ref_t_logits[3], "slot 0 step 2 (alone)")
    assert cost == {"launches": layers + 2, "d2d_copies": 0, "syncs": 1}, cost
    got_t.append(outs[0].logits)
    outs, _ = _step(eng, {2: ref_i[2]})
    _assert_close(outs[2].logits, ref_i_logits[3], "slot 2 step 2 (after sitting one out)")
    got_i.append(outs[2].logits)

    L_t, L_i = len(text.input_ids), len(image.input_ids)
    assert eng.rt.slot_lengths == [L_t + 3, 0, L_i + 3, 0]

    # the same sequence alone in another slot gives the same numbers as it did batched
    eng.prefill_slot(3, text)
    alone = eng.decode_batch({3: ref_t[0]})[3].logits
    np.testing.assert_array_equal(alone, together[0])

    # slot 0 prefilled again, alone
    out = eng.prefill_slot(0, text)
    _assert_close(out.logits, ref_t_logits[0], "prefill of slot 0")
    assert eng.rt.slot_lengths[0] == L_t

    # bit-identical to the batch-1 build fed the same sequences, with both runtimes open in
    # this process: only the first opened shares its activation memory (native/src/device.cpp;
    # when both did, the later load re-laid the memory under the earlier one's nets)
    assert not (bm_engine.rt.shares_memory and eng.rt.shares_memory)
    for name, prompt, ref, got in (("text", text, ref_t, got_t), ("image", image, ref_i, got_i)):
        for step, (a, b) in enumerate(zip(_batch1_logits(bm_engine, prompt, ref[:3]), got, strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} step {step}: batch-4 build against batch 1")


def test_server_batches_on_a_batch_bmodel(native_module, tiny_bmodel_b4_dir, tmp_path):
    """Real gunicorn + gevent, --max-batch 4 on the batch-4 bmodel: two requests at once
    give what each gives alone on the same server (temperature 0, token ids compared)."""
    import threading

    from tests.conftest import run_server

    bodies = [
        {"messages": [{"role": "user", "content": text}], "max_tokens": 3, "temperature": 0, "logprobs": True}
        for text in ("Hello there", "What is a TPU?")
    ]

    def tokens(r) -> list[str]:
        assert r.status_code == 200, r.text
        return [t["token"] for t in r.json()["choices"][0]["logprobs"]["content"]]

    with run_server(tiny_bmodel_b4_dir, tmp_path, "--max-batch", "4", workers=1, timeout=300) as s:
        assert s.get("/health").json()["max_batch"] == 4
        alone = [tokens(s.post("/v1/chat/completions", json=b, timeout=300)) for b in bodies]
        together: dict[int, list[str]] = {}

        def run(i: int) -> None:
            together[i] = tokens(s.post("/v1/chat/completions", json=bodies[i], timeout=300))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [together[0], together[1]] == alone
