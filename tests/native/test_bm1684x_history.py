"""History-KV bmodels (llm_convert --use_history_kv) on the simulator.  A prompt longer than
one prefill chunk (64 tokens in the tiny build) runs in chunks, each on top of the rows
before it; a chat's follow-up turn computes only what the KV cache does not hold.  Reused
and fresh prefills give the same logits, and both match transformers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qwen3vl_app.engine.base import Prompt
from qwen3vl_app.engine.reuse import vision_spans
from tests.conftest import run_server
from tests.native.test_bm1684x import _assert_close, _image, _tokenizer, _torch_greedy

pytestmark = pytest.mark.bm1684x


def _engine(folder, **kw):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    return BM1684XEngine(folder, **kw)


def _messages(words: int, question: str = "What is this?") -> list[dict]:
    system = " ".join(f"rule{i}" for i in range(words))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]


def _prompt(folder, messages, seeds, max_pixels) -> Prompt:
    from qwen3vl_app.processing.vision import preprocess_image
    from qwen3vl_app.prompt.template import build_prompt

    images = [preprocess_image(_image(s), min_pixels=32 * 32, max_pixels=max_pixels) for s in seeds]
    return build_prompt(_tokenizer(folder), messages, images)


def _launches(engine, net: str) -> int:
    return engine.timings().get(net, (0, 0.0))[0]


def _forget(engine) -> None:
    """A one-token prompt that shares nothing with a chat (not <|im_start|>): the next
    prefill starts from an empty cache."""
    engine.prefill_slot(0, Prompt([0], np.zeros((3, 1), dtype=np.int64)))


def test_history_build_limits_and_capabilities(tiny_bmodel_history_dir, bm_engine):
    eng = _engine(tiny_bmodel_history_dir)
    try:
        rt = eng.rt
        assert rt.history_kv and rt.prefill_dynamic
        assert rt.max_input_length == 64 and rt.seq_len == 256
        # chunked prefill: the prompt may fill the context, not just one chunk
        assert eng.limits.max_input_tokens == eng.limits.max_context == 256
        assert eng.capabilities.prefix_cache
    finally:
        eng.close()
    # a static build always prefills from position 0 and says so
    assert not bm_engine.rt.history_kv and not bm_engine.capabilities.prefix_cache
    assert bm_engine.limits.max_input_tokens == bm_engine.rt.max_input_length


def test_prompt_over_several_chunks_matches_transformers(tiny_bmodel_history_dir, torch_model):
    """Three chunks, the image's block straddling a chunk boundary (its rows and deepstack
    features split over two chunks)."""
    eng = _engine(tiny_bmodel_history_dir)
    try:
        max_pixels = eng.limits.max_pixels
        for words in range(30, 90):
            prompt = _prompt(tiny_bmodel_history_dir, _messages(words), [1], max_pixels)
            (span,) = vision_spans(prompt.input_ids, prompt.vision)
            if span.start // 64 != (span.end - 1) // 64 and len(prompt.input_ids) > 128:
                break
        else:
            pytest.fail("no system prompt length puts the image across a chunk boundary")
        ref_tokens, ref_logits = _torch_greedy(torch_model, prompt, 1)
        out = eng.prefill_slot(0, prompt)
        assert out.cached_tokens == 0
        _assert_close(out.logits, ref_logits[0], f"{len(prompt.input_ids)}-token prefill")
        _assert_close(eng.decode_batch({0: ref_tokens[0]})[0].logits, ref_logits[1], "decode after a chunked prefill")
        assert _launches(eng, "block_kv_0") == len(prompt.input_ids) // 64  # every chunk after the first
    finally:
        eng.close()


def test_follow_up_turn_computes_only_the_new_tokens(tiny_bmodel_history_dir):
    """Turn 2 re-sends turn 1, the reply and a question: the cached rows are kept, the
    image is not encoded again, and the logits equal a prefill from an empty cache
    (tolerance 1e-3 of the logit scale; measured: identical).  Turn 2 with another image
    at the same place keeps only the rows before that image."""
    eng = _engine(tiny_bmodel_history_dir)  # --vision-cache-mb 0: a skipped vit is the KV's doing
    try:
        max_pixels = eng.limits.max_pixels
        first = _messages(40)
        p1 = _prompt(tiny_bmodel_history_dir, first, [1], max_pixels)
        out = eng.prefill_slot(0, p1)
        reply = [int(np.argmax(out.logits))]
        reply.append(int(np.argmax(eng.decode_batch({0: reply[-1]})[0].logits)))
        follow = [*first, {"role": "assistant", "content": "It is a picture."}, {"role": "user", "content": "Why?"}]
        p2 = _prompt(tiny_bmodel_history_dir, follow, [1], max_pixels)
        assert p2.input_ids[: len(p1.input_ids)] == p1.input_ids

        vit, kv = _launches(eng, "vit"), _launches(eng, "block_kv_0")
        reused = eng.prefill_slot(0, p2)
        assert reused.cached_tokens == len(p1.input_ids)  # the reply's tokens differ from the text re-sent
        assert _launches(eng, "vit") == vit and _launches(eng, "block_kv_0") == kv + 1
        reused_next = eng.decode_batch({0: int(np.argmax(reused.logits))})[0].logits

        # the same turn with another picture: recomputed from the image's first row
        other = _prompt(tiny_bmodel_history_dir, follow, [2], max_pixels)
        assert other.input_ids == p2.input_ids  # placeholders look alike: only the pixels differ
        (span,) = vision_spans(other.input_ids, other.vision)
        swapped = eng.prefill_slot(0, other)
        assert swapped.cached_tokens == span.start and _launches(eng, "vit") == vit + 1

        _forget(eng)
        fresh = eng.prefill_slot(0, p2)
        assert fresh.cached_tokens == 0
        scale = float(np.abs(fresh.logits).max())
        np.testing.assert_allclose(reused.logits, fresh.logits, rtol=0, atol=1e-3 * scale)
        np.testing.assert_allclose(
            reused_next, eng.decode_batch({0: int(np.argmax(fresh.logits))})[0].logits, rtol=0, atol=1e-3 * scale
        )
        _forget(eng)
        np.testing.assert_allclose(swapped.logits, eng.prefill_slot(0, other).logits, rtol=0, atol=1e-3 * scale)
        assert float(np.abs(swapped.logits - fresh.logits).max()) > 1e-2 * scale  # the image matters
    finally:
        eng.close()


def test_a_kept_prefix_never_covers_a_different_prompt(tiny_bmodel_history_dir):
    """A prompt that only shares the chat preamble keeps only that; a repeated prompt
    leaves its last token to run (the prefill must yield logits)."""
    eng = _engine(tiny_bmodel_history_dir)
    try:
        max_pixels = eng.limits.max_pixels
        p1 = _prompt(tiny_bmodel_history_dir, _messages(20), [3], max_pixels)
        eng.prefill_slot(0, p1)
        again = eng.prefill_slot(0, dataclasses.replace(p1))
        assert again.cached_tokens == len(p1.input_ids) - 1
        p2 = _prompt(tiny_bmodel_history_dir, _messages(20, "Something else entirely?"), [3], max_pixels)
        common = next(i for i, (a, b) in enumerate(zip(p1.input_ids, p2.input_ids, strict=False)) if a != b)
        assert eng.prefill_slot(0, p2).cached_tokens == common
    finally:
        eng.close()


def test_server_reports_cached_tokens(tiny_bmodel_history_dir, tmp_path):
    """Through gunicorn: /v1/models says the build reuses prefixes, a prompt longer than one
    chunk is served, and the follow-up's usage counts the reused tokens."""
    with run_server(tiny_bmodel_history_dir, tmp_path, workers=1) as s:
        caps = s.get("/v1/models").json()["data"][0]["capabilities"]
        assert caps["prefix_cache"] is True
        messages = [
            {"role": "system", "content": " ".join(f"rule{i}" for i in range(50))},
            {"role": "user", "content": "Hello there"},
        ]
        usages = []
        for question in ("And then?", None):
            r = s.post(
                "/v1/chat/completions",
                timeout=300,
                json={"messages": messages, "max_tokens": 2, "temperature": 0},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            usages.append(body["usage"])
            if question:
                messages += [
                    {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                    {"role": "user", "content": question},
                ]
        first, second = usages
        assert first["prompt_tokens"] > 64  # more than one prefill chunk
        assert first["prompt_tokens_details"]["cached_tokens"] == 0
        assert second["prompt_tokens_details"]["cached_tokens"] >= first["prompt_tokens"]
