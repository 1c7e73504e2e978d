import numpy as np
import pytest

from qwen3vl_app.engine.sampling import Sampler, SamplingParams


def logits(n=1000, seed=0):
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


def test_greedy_is_argmax():
    x = logits()
    assert Sampler(SamplingParams(temperature=0), []).choose(x).token_id == int(np.argmax(x))


def test_seed_reproducible_and_seeds_differ():
    x = logits()
    a = [Sampler(SamplingParams(temperature=1.0, seed=7), []).choose(x).token_id for _ in range(3)]
    assert len(set(a)) == 1
    draws = {Sampler(SamplingParams(temperature=1.5, seed=s), []).choose(x).token_id for s in range(20)}
    assert len(draws) > 1


def test_top_k_restricts_support():
    x = logits()
    top3 = set(np.argsort(-x)[:3].tolist())
    s = Sampler(SamplingParams(temperature=5.0, top_k=3, seed=1), [])
    assert {s.choose(x).token_id for _ in range(200)} <= top3


def test_top_p_restricts_support():
    x = np.full(100, -10.0, dtype=np.float32)
    x[5], x[6] = 10.0, 9.0  # ~73% / 27%
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=3), [])
    assert {s.choose(x).token_id for _ in range(100)} == {5}


def test_repetition_penalty_discourages_prompt_tokens():
    x = np.zeros(10, dtype=np.float32)
    x[2], x[3] = 2.0, 1.5
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), [2]).choose(x).token_id == 3


def test_frequency_and_presence_penalties_apply_to_generated():
    x = np.zeros(10, dtype=np.float32)
    x[1], x[2] = 1.0, 0.9
    s = Sampler(SamplingParams(temperature=0, presence_penalty=0.5), [])
    assert [s.choose(x).token_id for _ in range(2)] == [1, 2]
    s = Sampler(SamplingParams(temperature=0, frequency_penalty=0.06), [])
    assert [s.choose(x).token_id for _ in range(3)] == [1, 1, 2]


def test_logprobs_sorted_and_normalised():
    x = logits(50)
    c = Sampler(SamplingParams(temperature=0, logprobs=True, top_logprobs=5), []).choose(x)
    lps = [lp for _, lp in c.top_logprobs]
    assert lps == sorted(lps, reverse=True)
    assert c.top_logprobs[0][0] == c.token_id
    assert c.logprob == pytest.approx(float(x[c.token_id] - np.log(np.exp(x.astype(np.float64)).sum())), abs=1e-5)


def test_mask_and_logit_bias():
    import numpy as np

    from qwen3vl_app.engine.sampling import Sampler, SamplingParams

    logits = np.array([5.0, 4.0, 3.0, 2.0, 1.0], dtype=np.float32)
    allowed = np.array([False, False, True, True, False])
    assert Sampler(SamplingParams(temperature=0.0), []).choose(logits, allowed).token_id == 2
    picks = {Sampler(SamplingParams(temperature=2.0, seed=s), []).choose(logits, allowed).token_id for s in range(50)}
    assert picks == {2, 3}
    biased = Sampler(SamplingParams(temperature=0.0, logit_bias=((4, 100.0), (0, -100.0))), [])
    assert biased.choose(logits).token_id == 4
    # a mask shorter than the logits row forbids the ids past its end
    assert Sampler(SamplingParams(temperature=0.0), []).choose(logits, np.array([False, True])).token_id == 1


@pytest.mark.parametrize("spread", [0.5, 3.0, 12.0])  # flat (the head grows to the whole vocab) .. peaked
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_nucleus_from_a_partial_sort_equals_the_full_sort(spread, top_p):
    """Without top_k only the head of the distribution is sorted; the nucleus it gives must
    be the one a sort of the whole vocabulary gives: the same tokens, order and mass."""
    from qwen3vl_app.engine.sampling import _nucleus_head, _softmax

    x = (np.random.default_rng(int(spread * 10)).standard_normal(151_936) * spread).astype(np.float32)
    x[:40] = x.max()  # ties at the top
    head, probs = _nucleus_head(x, top_p)
    order = np.argsort(-x, kind="stable")
    full = _softmax(x)[order]
    keep = int(np.searchsorted(np.cumsum(full), top_p) + 1)
    assert keep <= len(head)
    np.testing.assert_array_equal(np.sort(head[:keep]), np.sort(order[:keep]))
    np.testing.assert_allclose(probs[:keep], full[:keep], rtol=1e-12)


def test_untruncated_sampling_follows_the_distribution():
    """top_p 1 and no top_k draw from the whole softmax without sorting it."""
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    s = Sampler(SamplingParams(temperature=1.0, top_p=1.0, seed=11), [])
    counts = np.bincount([s.choose(x).token_id for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)


# ---- device heads: which requests they serve, and the host's draw among their candidates ----


def test_device_plan_takes_only_requests_the_heads_serve_exactly():
    from qwen3vl_app.engine.sampling import DevicePlan, device_plan

    base = SamplingParams(temperature=0.7, top_k=20, top_p=0.8)
    assert device_plan(base, False, 50) == DevicePlan(greedy=False, temperature=0.7, top_k=20)
    assert device_plan(SamplingParams(temperature=0), False, 50) == DevicePlan(greedy=True)
    assert device_plan(SamplingParams(temperature=0, repetition_penalty=1.2), False, 50) == DevicePlan(
        greedy=True, repetition_penalty=1.2
    )
    assert device_plan(base, False, 0) is None  # no heads
    assert device_plan(base, True, 50) is None  # a grammar needs the full logits
    for host_only in (
        {"top_k": 0},  # the full vocabulary
        {"top_k": 51},  # wider than the head
        {"logprobs": True},
        {"logit_bias": ((5, 1.0),)},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"repetition_penalty": 1e-3},  # overflows float32 on the device
    ):
        assert device_plan(SamplingParams(**{**base.__dict__, **host_only}), False, 50) is None, host_only


def _device_candidates(x, params, prompt):
    """What sample_head computes: penalty, then the top-k of the logits (most likely first,
    equal logits in id order) divided by the temperature, softmaxed (float32)."""
    s = Sampler(params, prompt)
    y = x.copy()
    s._penalise(y)
    order = np.lexsort((np.arange(y.size), -y))[: params.top_k]
    z = (y[order] / np.float32(params.temperature)).astype(np.float32)
    e = np.exp(z - z.max())
    return (e / e.sum()).astype(np.float32), order.astype(np.int32)


def test_draw_among_candidates_is_the_draw_from_the_logits():
    x = np.round(logits(5000, seed=3) * 8) / 8  # bf16-like logits: many equal values
    prompt = [int(i) for i in np.argsort(-x)[:6:2]]  # some of the likeliest tokens are penalised
    for seed in range(200):
        params = SamplingParams(temperature=0.8, top_k=17, top_p=0.7, repetition_penalty=1.3, seed=seed)
        probs, ids = _device_candidates(x, params, prompt)
        host, dev = Sampler(params, prompt), Sampler(params, prompt)
        assert dev.draw(probs, ids).token_id == host.choose(x).token_id, seed


def test_top_k_keeps_the_lowest_ids_among_equal_logits_at_its_edge():
    x = np.array([0.0, 2.0, 1.0, 1.0, 1.0, 3.0, 1.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=1e3, top_k=4, seed=0), [])
    assert {s.choose(x).token_id for _ in range(300)} == {5, 1, 2, 3}
