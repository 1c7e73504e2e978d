"""The bm1684x engine on the BM1684X cmodel simulator, against transformers on the same
tiny checkpoint.  Slow-ish (a simulated decode step takes about a second): generated
tokens are kept few.  Run alone with `pytest -m bm1684x`."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from qwen3vl_app.engine.base import Prompt

pytestmark = pytest.mark.bm1684x

N_DECODE = 2


def _tokenizer(folder):
    from qwen3vl_app.tokenizer import ChatTokenizer

    return ChatTokenizer(folder)


def _text_prompt(folder) -> Prompt:
    from qwen3vl_app.prompt.template import build_prompt

    return build_prompt(_tokenizer(folder), [{"role": "user", "content": "Hello! Who are you?"}])


def _image(seed: int, size=(128, 128)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 2) % 256, (y * 2) % 256, ((x + y) * 3) % 256], -1).astype(np.float32)
    noise = rng.integers(0, 64, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _image_prompt(folder, max_pixels: int, seed: int = 0) -> Prompt:
    from qwen3vl_app.processing.vision import preprocess_image
    from qwen3vl_app.prompt.template import build_prompt

    vis = preprocess_image(_image(seed), min_pixels=32 * 32, max_pixels=max_pixels)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    return build_prompt(_tokenizer(folder), messages, [vis])


def _video_prompt(folder) -> Prompt:
    """Four 128x128 frames -> 2 temporal blocks of 16 tokens, each needing its own vit
    call on the 64-patch static encoder."""
    from qwen3vl_app.engine.base import VisionInput
    from qwen3vl_app.processing.vision import patchify
    from qwen3vl_app.prompt.vision import expand_vision, mrope_positions

    frames = np.stack([np.asarray(_image(10 + k)) for k in range(4)])
    pixel_values, grid = patchify(frames)
    vis = VisionInput(kind="video", pixel_values=pixel_values, grid_thw=grid, timestamps=[0.5, 2.5])
    tok = _tokenizer(folder)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    ids = expand_vision(tok.encode(tok.render(messages)), [vis], encode=tok.encode)
    return Prompt(ids, mrope_positions(ids, [vis]), [vis])


def _greedy(engine, prompt: Prompt, n: int):
    out = engine.prefill_slot(0, prompt)
    logits = [out.logits]
    tokens = [int(np.argmax(out.logits))]
    for _ in range(n):
        out = engine.decode_batch({0: tokens[-1]})[0]
        logits.append(out.logits)
        tokens.append(int(np.argmax(out.logits)))
    return tokens, logits


# ---- lifecycle ----


def test_load_unload_twice_in_one_process(native_module, tiny_bmodel_dir):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    for _ in range(2):
        eng = BM1684XEngine(tiny_bmodel_dir)
        assert eng.rt.num_layers == 2 and not eng.rt.closed
        eng.close()
        assert eng.rt.closed
        eng.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            eng.prefill_slot(0, Prompt([1], np.zeros((3, 1), dtype=np.int64)))
    # two at once, too
    a, b = BM1684XEngine(tiny_bmodel_dir), BM1684XEngine(tiny_bmodel_dir)
    a.close()
    b.close()


def test_limits_and_capabilities_come_from_the_bmodel(bm_engine):
    rt = bm_engine.rt
    assert bm_engine.name == "bm1684x"
    assert bm_engine.device == "bm1684x:0 (cmodel)"
    assert (rt.seq_len, rt.max_input_length, rt.hidden_size) == (256, 128, 64)
    assert bm_engine.limits.max_context == 256
    assert bm_engine.limits.max_input_tokens == 128
    assert bm_engine.limits.max_pixels == 128 * 128
    assert bm_engine.capabilities.logits and rt.lm_head_logits and rt.vocab_size == 151936
    assert rt.vit_outputs == 3  # merger + 2 deepstack taps
    assert {"greedy_head", "sample_head"} <= set(rt.networks)
    assert rt.has_greedy_head and rt.has_sample_head and rt.sample_candidates == 50
    # minutes per head call on the simulator: `--device-sampling auto` samples on the host there
    assert bm_engine.device_sampling is False and bm_engine.capabilities.device_candidates == 0


# ---- generation ----


def test_text_prompt_generates_a_few_tokens(bm_engine, tiny_bmodel_dir):
    prompt = _text_prompt(tiny_bmodel_dir)
    tokens, logits = _greedy(bm_engine, prompt, N_DECODE)
    assert len(tokens) == N_DECODE + 1
    for lg in logits:
        assert lg.shape == (151936,) and lg.dtype == np.float32 and np.isfinite(lg).all()
    # the KV cache is reset by prefill: the same prompt gives the same first logits
    again = bm_engine.prefill_slot(0, prompt).logits
    np.testing.assert_array_equal(again, logits[0])


def test_image_prompt_generates_and_the_image_matters(bm_engine, tiny_bmodel_dir):
    prompt = _image_prompt(tiny_bmodel_dir, bm_engine.limits.max_pixels, seed=0)
    assert prompt.vision[0].grid_thw == (1, 8, 8)
    tokens, logits = _greedy(bm_engine, prompt, N_DECODE)
    assert all(np.isfinite(lg).all() for lg in logits)
    other = _image_prompt(tiny_bmodel_dir, bm_engine.limits.max_pixels, seed=1)
    assert other.input_ids == prompt.input_ids
    assert not np.allclose(bm_engine.prefill_slot(0, other).logits, logits[0])


def test_prompt_too_long_is_refused(bm_engine):
    n = bm_engine.limits.max_input_tokens + 1
    with pytest.raises(ValueError):
        bm_engine.prefill_slot(0, Prompt(list(range(n)), np.tile(np.arange(n), (3, 1))))


def test_native_calls_release_the_gil(bm_engine, tiny_bmodel_dir):
    prompt = _text_prompt(tiny_bmodel_dir)
    done = threading.Event()

    def work():
        try:
            bm_engine.prefill_slot(0, prompt)
        finally:
            done.set()

    t = threading.Thread(target=work)
    ticks = []
    start = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        sum(range(2000))  # pure-Python work needs the GIL
    t.join()
    elapsed = time.perf_counter() - start
    gaps = np.diff([start] + ticks)
    assert elapsed > 0.3, "prefill was too quick to tell"
    # Holding the GIL would stall the main thread for the whole call.  Judge the share of
    # the call spent stalled, not one gap: a loaded machine can deschedule us for a while.
    stalled = gaps[gaps > 0.1].sum()
    assert stalled < 0.5 * elapsed, f"the main thread stalled {stalled:.2f}s during a {elapsed:.2f}s native call"
    assert len(ticks) > 20


# ---- against transformers on the same checkpoint ----


def _torch_greedy(model, prompt: Prompt, n: int):
    import torch

    from qwen3vl_app.model_constants import IMAGE_PAD, VIDEO_PAD

    ids = torch.tensor([prompt.input_ids])
    L = ids.shape[1]
    rope = torch.as_tensor(prompt.position_ids, dtype=torch.long).view(3, 1, L)
    kwargs = {}
    images = [v for v in prompt.vision if v.kind == "image"]
    videos = [v for v in prompt.vision if v.kind == "video"]
    if images:
        kwargs["pixel_values"] = torch.from_numpy(np.concatenate([v.pixel_values for v in images]))
        kwargs["image_grid_thw"] = torch.tensor([v.grid_thw for v in images])
    if videos:
        kwargs["pixel_values_videos"] = torch.from_numpy(np.concatenate([v.pixel_values for v in videos]))
        kwargs["video_grid_thw"] = torch.tensor([v.grid_thw for v in videos])
    if prompt.vision:
        kwargs["mm_token_type_ids"] = (ids == IMAGE_PAD).int() + 2 * (ids == VIDEO_PAD).int()
    with torch.inference_mode():
        out = model(
            input_ids=ids, position_ids=torch.cat([torch.arange(L).view(1, 1, L), rope]), use_cache=True, **kwargs
        )
        logits = [out.logits[0, -1].float().numpy()]
        tokens = [int(logits[-1].argmax())]
        cache = out.cache
        for i in range(n):
            pos = torch.tensor([L + i] + [prompt.next_position + i] * 3).view(4, 1, 1)
            out = model(input_ids=torch.tensor([[tokens[-1]]]), position_ids=pos, cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits[0, -1].float().numpy())
            tokens.append(int(logits[-1].argmax()))
    return tokens, logits


def _assert_close(mine, ref, what):
    # bf16 weights and activations on the TPU vs float32 on the CPU
    scale = float(np.abs(ref).max())
    err = float(np.abs(mine - ref).max())
    assert int(mine.argmax()) == int(ref.argmax()), f"{what}: argmax differs"
    assert err <= 0.015 * scale + 5e-3, f"{what}: max abs diff {err:.4f} (logit scale {scale:.3f})"


@pytest.mark.parametrize("kind", ["text", "image", "video"])
def test_prefill_and_decode_match_transformers(bm_engine, tiny_bmodel_dir, torch_model, kind):
    if kind == "text":
        prompt = _text_prompt(tiny_bmodel_dir)
    elif kind == "image":
        prompt = _image_prompt(tiny_bmodel_dir, bm_engine.limits.max_pixels, seed=2)
    else:
        prompt = _video_prompt(tiny_bmodel_dir)
        assert prompt.vision[0].grid_thw == (2, 8, 8)
    ref_tokens, ref_logits = _torch_greedy(torch_model, prompt, N_DECODE)
    logits = []
    out = bm_engine.prefill_slot(0, prompt)
    logits.append(out.logits)
    _assert_close(out.logits, ref_logits[0], f"{kind} prefill")
    for i in range(N_DECODE):
        out = bm_engine.decode_batch({0: ref_tokens[i]})[0]  # teacher-forced: compare step by step
        _assert_close(out.logits, ref_logits[i + 1], f"{kind} decode step {i}")
    assert int(logits[0].argmax()) == ref_tokens[0]


def test_dynamic_build_matches_transformers(native_module, tiny_bmodel_dynamic_dir, torch_model):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    eng = BM1684XEngine(tiny_bmodel_dynamic_dir)
    try:
        assert eng.rt.prefill_dynamic and eng.rt.vit_dynamic and eng.rt.vit_inputs == 4
        for kind, prompt in [
            ("text", _text_prompt(tiny_bmodel_dynamic_dir)),
            ("image", _image_prompt(tiny_bmodel_dynamic_dir, eng.limits.max_pixels, seed=3)),
        ]:
            ref_tokens, ref_logits = _torch_greedy(torch_model, prompt, 1)
            _assert_close(eng.prefill_slot(0, prompt).logits, ref_logits[0], f"dynamic {kind} prefill")
            _assert_close(eng.decode_batch({0: ref_tokens[0]})[0].logits, ref_logits[1], f"dynamic {kind} decode")
    finally:
        eng.close()


def test_serving_path_never_imports_torch(native_module, tiny_bmodel_dir):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine\n"
        "import tests.native.test_bm1684x as t\n"
        f"eng = BM1684XEngine({str(tiny_bmodel_dir)!r})\n"
        "p = t._text_prompt(eng.model_dir)\n"
        "assert eng.prefill_slot(0, p).logits is not None\n"
        "eng.close()\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    assert r.returncode == 0, r.stderr[-3000:]
