"""Speculative decoding on the BM1684X simulator: the verify nets of a `--speculative 4`
tiny bmodel (scripts/llm_convert_patched.py; native/src/verify.cpp).

- One verify step gives, row by row, the logits plain decode steps give for the same
  tokens, and a commit that keeps some rows leaves the cache as those decode steps would
  (the next decode agrees), also when a draft token was refused.
- Through the scheduler at temperature 0 a speculative answer is the plain answer token for
  token (an extraction-style request whose `prediction` is the answer with one token in
  five edited; drafts shortened near max_tokens exercise the padded rows), and it needs at
  least 2x fewer device launches per generated token (the native module counts them).
  Prompt lookup and a sampled free-form prompt run in `bench/bench_sim_speculative.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

from qwen3vl_app.engine.sampling import SamplingParams
from tests.unit.test_speculative import generate

pytestmark = [pytest.mark.bm1684x, pytest.mark.slow]

K = 4
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=2)


@pytest.fixture(scope="module")
def spec_engine(native_module, tiny_bmodel_spec_dir):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    eng = BM1684XEngine(tiny_bmodel_spec_dir, devid=0)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompt(tiny_bmodel_spec_dir):
    from qwen3vl_app.prompt.template import build_prompt
    from qwen3vl_app.tokenizer import ChatTokenizer

    tok = ChatTokenizer(tiny_bmodel_spec_dir)
    text = "Copy the plate number exactly: KA-05-MX-2291, then the invoice total 4,120.50 EUR."
    return build_prompt(tok, [{"role": "user", "content": text}])


def test_the_build_declares_verify(spec_engine, bm_engine):
    assert spec_engine.rt.verify_rows == K + 1
    assert spec_engine.capabilities.verify and spec_engine.max_draft == K
    assert {"embedding_verify", "lm_head_verify", "block_verify_0"} <= set(spec_engine.rt.networks)
    assert bm_engine.rt.verify_rows == 0 and not bm_engine.capabilities.verify  # a build without the nets


def test_a_verify_step_gives_the_logits_of_decode_steps_and_commits_its_kept_rows(spec_engine, prompt):
    eng = spec_engine
    first = eng.prefill_slot(0, prompt).logits
    tokens, plain = [int(np.argmax(first))], []
    for _ in range(3):
        out = eng.decode_batch({0: tokens[-1]})[0].logits
        plain.append(out)
        tokens.append(int(np.argmax(out)))
    eng.release_slot(0)
    # again: the first two tokens, then a refused draft (two wrong tokens and padding rows)
    assert np.array_equal(eng.prefill_slot(0, prompt).logits, first)
    rows = eng.verify_batch({0: [tokens[0], tokens[1], 999, 7, 11]})[0]
    assert len(rows) == K + 1
    for got, want in zip(rows[:2], plain[:2], strict=True):
        assert int(np.argmax(got.logits)) == int(np.argmax(want))
        np.testing.assert_allclose(got.logits, want, atol=0.02)
    eng.commit_slot(0, 2)
    assert eng.rt.token_length == len(prompt.input_ids) + 2
    after = eng.decode_batch({0: tokens[2]})[0].logits  # over the kept rows, not the refused ones
    np.testing.assert_allclose(after, plain[2], atol=0.02)
    with pytest.raises(RuntimeError, match="without a verify step"):
        eng.commit_slot(0, 1)
    eng.release_slot(0)


def launches(eng) -> int:
    return eng.device_counters()["launches"]


def test_speculative_answers_equal_plain_ones_with_fewer_launches_per_token(spec_engine, prompt):
    eng = spec_engine
    n0 = launches(eng)
    plain = generate(eng, [prompt], GREEDY)[0]
    n1 = launches(eng)
    answer = plain[0]
    assert len(answer) == GREEDY.max_tokens
    edited = [t if (i + 1) % 5 else (t + 7) % 1000 for i, t in enumerate(answer)]
    predicted = generate(eng, [prompt], GREEDY, k=K, predictions=[edited])[0]
    n2 = launches(eng)
    assert predicted[0] == answer
    for a, b in zip(plain[1], predicted[1], strict=True):
        assert b.choice.logprob == pytest.approx(a.choice.logprob, abs=0.02)
    req = predicted[2]
    assert req.accepted > 0 and req.drafted > req.accepted  # kept and refused drafts both
    plain_per_token = (n1 - n0) / len(answer)
    spec_per_token = (n2 - n1) / len(answer)
    assert plain_per_token >= 2 * spec_per_token, (plain_per_token, spec_per_token)
