"""Multi-turn reuse on the torch engine: a follow-up prefill that reuses the previous turn's
KV gives the logits of a fresh prefill, the vision cache skips the encoder for a repeated
image, and neither ever serves a different image or prompt."""

import numpy as np
import pytest
from PIL import Image

from qwen3vl_app.engine.base import Prompt
from qwen3vl_app.engine.reuse import CachedSequence, VisionCache, reusable_prefix, vision_spans
from qwen3vl_app.processing.vision import preprocess_image
from qwen3vl_app.prompt.template import build_prompt
from qwen3vl_app.tokenizer import ChatTokenizer
from tests.support.media_samples import gradient_rgb

# Reused and fresh prefills run the same float32 math over different chunkings of the
# sequence (suffix-only attention over cached KV vs one pass), so they agree to rounding.
ATOL = 1e-4


@pytest.fixture(scope="module")
def model_dir():
    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint()


@pytest.fixture(scope="module")
def tok(model_dir):
    return ChatTokenizer(model_dir)


def make_engine(model_dir, vision_cache_mb=64):
    from qwen3vl_app.engine.torch.engine import TorchEngine

    return TorchEngine(model_dir, dtype="float32", threads=2, vision_cache_mb=vision_cache_mb)


@pytest.fixture(scope="module")
def engine(model_dir):
    return make_engine(model_dir)


@pytest.fixture(scope="module")
def ref(model_dir):
    """A second engine whose every prefill starts from nothing: the reference."""
    return make_engine(model_dir, vision_cache_mb=0)


def fresh_prefill(ref, prompt):
    ref.release_slot(0)  # forget what it holds: a full prefill
    out = ref.prefill_slot(0, prompt)
    assert out.cached_tokens == 0
    return out.logits


@pytest.fixture(scope="module")
def fresh(ref):
    return lambda prompt: fresh_prefill(ref, prompt)


def image(seed, h=96, w=128):
    return preprocess_image(Image.fromarray(gradient_rgb(h, w, seed)), 4096, 64 * 64)


SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 20}


def turn1(tok, images):
    msgs = [
        SYSTEM,
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare the two pictures."}],
        },
    ]
    return msgs, build_prompt(tok, msgs, images)


def generate(engine, prompt, steps=6):
    out = engine.prefill_slot(0, prompt)
    ids = []
    for _ in range(steps):
        t = int(np.argmax(out.logits))
        ids.append(t)
        out = engine.decode_batch({0: t})[0]
    return out, ids


def test_follow_up_turns_prefill_only_the_new_suffix(engine, ref, fresh, tok):
    imgs = [image(1), image(2)]
    msgs, p1 = turn1(tok, imgs)
    out1 = engine.prefill_slot(0, p1)
    assert out1.cached_tokens == 0
    np.testing.assert_allclose(out1.logits, fresh(p1), atol=ATOL)
    _, reply_ids = generate(engine, p1)
    reply = tok.decode(reply_ids)
    msgs2 = msgs + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And the colours?"}]
    p2 = build_prompt(tok, msgs2, imgs)
    out2 = engine.prefill_slot(0, p2)
    # The whole first prompt (images included) is reused; at most the re-tokenized reply differs.
    assert len(p1.input_ids) <= out2.cached_tokens < len(p2.input_ids)
    np.testing.assert_allclose(out2.logits, fresh(p2), atol=ATOL)
    # and decoding on top of a reused cache matches a fresh one step by step
    t = int(np.argmax(out2.logits))
    fresh_prefill(ref, p2)
    np.testing.assert_allclose(engine.decode_batch({0: t})[0].logits, ref.decode_batch({0: t})[0].logits, atol=ATOL)


def test_a_near_identical_image_is_never_served_from_the_cache(engine, fresh, tok):
    a = image(3)
    b_pixels = gradient_rgb(96, 128, 3)
    b_pixels[40:48, 50:58] ^= 0x80  # one 8x8 patch differs
    b = preprocess_image(Image.fromarray(b_pixels), 4096, 64 * 64)
    assert not np.array_equal(a.pixel_values, b.pixel_values)
    second = image(4)
    _, pa = turn1(tok, [a, second])
    engine.prefill_slot(0, pa)
    _, pb = turn1(tok, [b, second])
    out = engine.prefill_slot(0, pb)
    first_image_start = vision_spans(pb.input_ids, pb.vision)[0].start
    assert out.cached_tokens == first_image_start  # the system prompt only
    reuse_error = np.abs(out.logits - fresh(pb)).max()
    assert reuse_error <= ATOL
    # The teeth: serving image a's KV for image b would be seen, far beyond the reuse error.
    assert np.abs(fresh(pa) - fresh(pb)).max() > 10 * max(reuse_error, 1e-6)


def test_a_different_prompt_reuses_only_what_matches(engine, fresh, tok):
    engine.prefill_slot(0, build_prompt(tok, [{"role": "user", "content": "alpha beta gamma delta"}]))
    p = build_prompt(tok, [{"role": "user", "content": "alpha beta zeta"}])
    out = engine.prefill_slot(0, p)
    assert 0 < out.cached_tokens < len(p.input_ids) - 1
    np.testing.assert_allclose(out.logits, fresh(p), atol=ATOL)


def test_the_same_prompt_again_still_computes_its_last_token(engine, fresh, tok):
    p = build_prompt(tok, [{"role": "user", "content": "repeat me"}])
    engine.prefill_slot(0, p)
    out = engine.prefill_slot(0, p)
    assert out.cached_tokens == len(p.input_ids) - 1
    np.testing.assert_allclose(out.logits, fresh(p), atol=ATOL)


def test_the_vision_cache_skips_the_encoder_for_a_repeated_image(model_dir, tok):
    engine = make_engine(model_dir)
    calls = []
    run = engine._run_encoder
    engine._run_encoder = lambda item: calls.append(item) or run(item)  # counts real encoder runs
    img = image(5)
    for text in ("first", "second"):  # different text: no prefix reuse past the system prompt
        p = build_prompt(tok, [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image"}]}], [img])
        engine.prefill_slot(0, p)
    assert len(calls) == 1 and len(engine.vision_cache) == 1


def test_vision_cache_stays_within_its_byte_bound():
    cache = VisionCache(1000)
    for i in range(10):
        cache.put(bytes([i]), i, 300)
        assert cache.bytes <= 1000
    assert len(cache) == 3 and cache.get(bytes([9])) == 9 and cache.get(bytes([0])) is None
    cache.put(b"big", "x", 5000)  # larger than the whole cache: not kept
    assert cache.get(b"big") is None


def test_reusable_prefix_never_cuts_a_vision_block(tok):
    imgs = [image(6), image(7)]
    _, p = turn1(tok, imgs)
    spans = vision_spans(p.input_ids, p.vision)
    held = CachedSequence.of(p)
    mid = (spans[1].start + spans[1].end) // 2
    # cached tokens end inside the second image: reuse stops at that image's start
    cut = CachedSequence(held.ids[:mid], [s for s in held.spans if s.end <= mid])
    assert reusable_prefix(cut, p, spans) == spans[1].start
    assert reusable_prefix(None, p, spans) == 0
    empty = Prompt([1], np.zeros((3, 1), dtype=np.int64))
    assert reusable_prefix(held, empty, []) == 0


def test_nothing_is_reused_across_cache_scopes(model_dir, tok):
    """Prefix KV and vision-encoder outputs of one scope (an API key, a cache_salt) are
    never served to another: a different scope computes everything and encodes again."""
    engine = make_engine(model_dir)
    calls = []
    run = engine._run_encoder
    engine._run_encoder = lambda item: calls.append(item) or run(item)
    img = image(8)
    msgs = [SYSTEM, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]

    def prompt(scope):
        p = build_prompt(tok, msgs, [img])
        p.cache_scope = scope
        return p

    engine.prefill_slot(0, prompt(b"alice"))
    assert engine.prefill_slot(0, prompt(b"alice")).cached_tokens == len(prompt(b"").input_ids) - 1
    assert len(calls) == 1
    assert engine.prefill_slot(0, prompt(b"bob")).cached_tokens == 0
    assert len(calls) == 2 and len(engine.vision_cache) == 2  # bob's encoder ran; alice's entry is not his


def test_cache_scope_follows_the_key_unless_shared_and_always_the_salt():
    from qwen3vl_app.serving import cache_scope

    a, b = cache_scope("key", b"A", None), cache_scope("key", b"B", None)
    assert a != b and a == cache_scope("key", b"A", None)
    assert cache_scope("shared", b"A", None) == cache_scope("shared", b"B", None)
    assert cache_scope("shared", b"A", "s1") != cache_scope("shared", b"B", "s2")
    assert cache_scope("key", b"A", "s1") not in (a, cache_scope("key", b"B", "s1"))
