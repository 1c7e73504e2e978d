"""A lighter lm_head (scripts/lm_head_quant.py: `--lm_head w8|w4`) and the device-cost and
device-memory readings of a bmodel file, on the BM1684X cmodel simulator.

The W8/W4 builds differ from the bf16 one only in lm_head (same checkpoint, same block
options), so the hidden state every step feeds lm_head is the same given the same tokens.
All three builds are fed the same text token by token (teacher forcing: the random tiny
model's own greedy output is one token repeated, which would compare a single hidden
state) and the greedy choice of every step is compared with the bf16 head's.  The number
of steps is kept modest (a simulated logits step takes a second or more);
`QWEN3VL_LM_HEAD_STEPS` runs a longer one.
"""

from __future__ import annotations

import glob
import os
import subprocess

import numpy as np
import pytest

from qwen3vl_app.engine.bm1684x import memory
from qwen3vl_app.engine.bm1684x.bmodel_file import read_bmodel

from .conftest import _build_tiny_bmodel
from .test_bm1684x import _text_prompt

pytestmark = pytest.mark.bm1684x

STEPS = int(os.environ.get("QWEN3VL_LM_HEAD_STEPS", "8"))
# Floors for the random tiny model (see test_quantised_heads_agree_with_bf16).
FLOOR = {"w8": 0.9, "w4": 0.75}


def _bmodel(folder):
    return next(folder.glob("*.bmodel"))


def _model_tool_weight(bmodel) -> int | None:
    """`weight:` of `model_tool --info` (the vendor's tool, in the converter's venv)."""
    from qwen3vl_app.devtools.tiny_model import cache_root

    tools = glob.glob(str(cache_root() / "tpu-mlir-venv-*/lib/python3.10/site-packages/tpu_mlir/bin/model_tool"))
    if not tools:
        return None
    out = subprocess.run([tools[0], "--info", str(bmodel)], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("device mem size:"))
    return int(line.split("weight:")[1].split(",")[0])


@pytest.fixture(scope="session")
def quant_dirs(tiny_bmodel_dir):
    return {kind: _build_tiny_bmodel("--lm-head", kind) for kind in ("w8", "w4")}


def test_bmodel_file_agrees_with_the_runtime_and_model_tool(native_module, tiny_bmodel_dir):
    bmodel = _bmodel(tiny_bmodel_dir)
    info = read_bmodel(bmodel)
    rt = native_module.Runtime(str(bmodel), 0)
    try:
        assert sorted(info.nets) == sorted(rt.networks)
        hist = next(t for t in info.nets["block_cache_0"].stages[0].inputs if t.name == "history_k")
        assert hist.shape == (1, rt.seq_len, rt.kv_heads, rt.head_dim) and hist.dtype == "bf16"
        assert info.nets["lm_head"].stages[0].outputs[0].shape == (1, rt.vocab_size)
    finally:
        rt.close()
    # the llm_convert bf16 head is the embedding table itself (tied), stored once
    assert info.shared_weights("lm_head", "embedding")
    expected = _model_tool_weight(bmodel)
    if expected is not None:
        assert info.weight_bytes == expected


def test_quantised_heads_are_lighter_and_untied(tiny_bmodel_dir, quant_dirs):
    bf16 = read_bmodel(_bmodel(tiny_bmodel_dir))
    table = bf16.nets["lm_head"].weight_bytes
    for kind, share in (("w8", 0.55), ("w4", 0.3)):
        q = read_bmodel(_bmodel(quant_dirs[kind]))
        head = q.nets["lm_head"].weight_bytes
        print(f"\nlm_head {kind}: {head} bytes read per token vs bf16 {table} ({100 * (1 - head / table):.0f} % saved)")
        assert 0 < head < share * table
        assert not q.shared_weights("lm_head", "embedding")  # the embedding keeps its bf16 table
        for name in q.nets:  # nothing else changed
            if name != "lm_head":
                assert q.nets[name].weight_bytes == bf16.nets[name].weight_bytes, name


TEXT = (
    "The quick brown fox jumps over the lazy dog while a tiny model on a simulated chip counts every byte "
    "it reads, and the lighter head should pick the same tokens as the heavy one. "
) * 4


def _run(folder, tokens: list[int]) -> list[np.ndarray]:
    """Logits after the prompt and after each of `tokens` fed in turn."""
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    engine = BM1684XEngine(folder)
    try:
        logits = [np.asarray(engine.prefill_slot(0, _text_prompt(folder)).logits)]
        for token in tokens:
            logits.append(np.asarray(engine.decode_batch({0: token})[0].logits))
        return logits
    finally:
        engine.close()


def test_quantised_heads_agree_with_bf16(native_module, tiny_bmodel_dir, quant_dirs):
    """The greedy token of the W8/W4 heads against the bf16 head's at every step.

    A token can flip only where the bf16 head's top-two margin is below twice the quantised
    head's logit error; the test checks that every flip is such a step, so a disagreement is
    quantisation noise on a near-tie of this random-weight model, never a wrong head (a
    broken or misordered table agrees at ~1/vocab and misses the error bound by far).  The
    floors leave room for such near-ties (measured over 33 steps: W8 and W4 both agree at every
    step; the smallest bf16 margin, 0.008, is as small as the W8 head's largest error and
    a tenth of the W4 head's, so a flip there would be legitimate)."""
    from qwen3vl_app.tokenizer import ChatTokenizer

    tokens = ChatTokenizer(tiny_bmodel_dir).encode(TEXT)[:STEPS]
    ref = _run(tiny_bmodel_dir, tokens)
    ref_tokens = [int(np.argmax(x)) for x in ref]
    assert len(set(ref_tokens)) > 1  # the steps do not all see the same hidden state
    margins = np.array([np.diff(np.sort(x)[-2:])[0] for x in ref])
    for kind, folder in quant_dirs.items():
        logits = _run(folder, tokens)
        toks = [int(np.argmax(x)) for x in logits]
        agree = float(np.mean(np.array(toks) == np.array(ref_tokens)))
        err = np.array([np.max(np.abs(a - b)) for a, b in zip(ref, logits, strict=True)])
        scale = np.array([np.max(np.abs(a)) for a in ref])
        print(
            f"\nlm_head {kind}: greedy agreement {agree:.3f} over {len(ref)} steps; max |logit error| "
            f"{err.max():.4f} ({100 * (err / scale).max():.2f} % of the largest logit); bf16 top-2 margin "
            f"median {np.median(margins):.4f}, min {margins.min():.4f}"
        )
        for i, (a, b) in enumerate(zip(ref_tokens, toks, strict=True)):
            if a != b:
                assert margins[i] <= 2 * err[i], f"step {i}: a {kind} flip with margin {margins[i]} > 2 x {err[i]}"
        # int8 with a scale per row: steps of 1/127 of a row's range (~1 % of the logits); int4 with a
        # scale per 64 values: 1/15 (measured 0.8 % and 10.8 % of the largest logit)
        assert (err / scale).max() < (0.02 if kind == "w8" else 0.2)
        assert agree >= FLOOR[kind]


def test_a_bmodel_too_large_for_the_device_is_refused_with_the_sizes(native_module, tiny_bmodel_dir, monkeypatch):
    """MOCK: the device's heap statistics.  The simulator reports no heaps and its memory
    pool aborts the process when it runs out (so a real shortage cannot be staged here);
    the bmodel file, its sizes and the engine's load path are real."""
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    need = memory.bmodel_needs(_bmodel(tiny_bmodel_dir))
    assert need is not None and need.weights == read_bmodel(_bmodel(tiny_bmodel_dir)).weight_bytes
    heaps = [{"id": 0, "total": 16 << 20, "avail": 12 << 20, "used": 4 << 20}, {"id": 2, "total": 1 << 20, "avail": 0}]
    monkeypatch.setattr(native_module, "device_heaps", lambda devid=0: heaps)
    with pytest.raises(memory.DeviceMemoryError) as e:
        BM1684XEngine(tiny_bmodel_dir)
    text = str(e.value)
    assert text.startswith("not enough device memory to load tiny-qwen3vl.bmodel on device 0; it needs ")
    assert f"weights {need.weights / (1 << 20):,.0f} MiB" in text
    assert "the device has 12 MiB free (npu 12 MiB free of 16 MiB, vpp 0 MiB free of 1 MiB)" in text


def test_health_says_not_enough_device_memory(native_module, tiny_bmodel_dir, monkeypatch, tmp_path):
    """/health of a real app whose bm1684x engine does not fit (MOCK: heap statistics, as above)."""
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine
    from qwen3vl_app.tokenizer import ChatTokenizer
    from tests.support import inprocess

    monkeypatch.setattr(native_module, "device_heaps", lambda devid=0: [{"id": 0, "total": 1 << 20, "avail": 1 << 20}])
    app = inprocess.build(
        tiny_bmodel_dir, ChatTokenizer(tiny_bmodel_dir), None, load_fn=lambda: BM1684XEngine(tiny_bmodel_dir)
    )
    app.state.runner.start_loading()
    app.state.runner._ready.wait(60)
    resp = app.get("/health")
    assert resp.status_code == 503
    details = resp.get_json()["details"]
    assert details.startswith("model failed to load: DeviceMemoryError: not enough device memory to load tiny-qwen3vl")
    assert "it needs " in details and "the device has 1 MiB free" in details
