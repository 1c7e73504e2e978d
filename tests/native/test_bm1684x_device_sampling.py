"""Sampling on the chip: the `--do_sample` heads (`greedy_head`, `sample_head`) choose a
request's tokens on the device, and the host draws among their candidates.

The same request runs twice through the real scheduler on the tiny bmodel: once with the
logits copied to the host (the reference), once with the device heads.  The candidates
each device step returned must be the host's top-k of the same logits after the same
repetition penalty and temperature (ids in the same order, probabilities to float32
rounding), and the seeded draws among them must be the host's for many seeds.

Slow on purpose: each call of a sort-based head takes 2-4 minutes on the cmodel, so the
module makes two such calls (a two-token sampled generation); `greedy_head` is the same
read path with one candidate and is left to the box (docs/sampling-on-device.md)."""

from __future__ import annotations

import numpy as np
import pytest

from qwen3vl_app.engine.sampling import Sampler, SamplingParams, _softmax, _top_k
from qwen3vl_app.engine.scheduler import BatchScheduler, Cancel, Generated, SlotRequest
from tests.native.test_bm1684x import _text_prompt

pytestmark = [pytest.mark.bm1684x, pytest.mark.slow]

# top_k within sample_head's 50; a strong repetition penalty pushes the prompt's tokens
# (the tiny model's favourite, "\n", among them) and the first generated token out of the
# top-k at each step, so the candidates show whether the device applied it
PARAMS = SamplingParams(max_tokens=2, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=3.0, seed=0)


class Recorder:
    """The real engine, with the output of every step it ran kept (a spy, not a mock)."""

    def __init__(self, engine):
        self.engine = engine
        self.steps: list = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def prefill_slot(self, slot, prompt):
        out = self.engine.prefill_slot(slot, prompt)
        self.steps.append(out)
        return out

    def decode_batch(self, tokens):
        before = self.engine.device_counters()
        outs = self.engine.decode_batch(tokens)
        self.decode_cost = {k: v - before[k] for k, v in self.engine.device_counters().items()}
        self.steps.append(outs[0])
        return outs


def _generate(engine, prompt, params):
    rec = Recorder(engine)
    got: list = []
    sched = BatchScheduler(rec, 1)
    sched.pending.append(SlotRequest(prompt, params, (), Cancel(), got.append))
    sched.run_until_idle()
    assert got and all(isinstance(g, Generated) for g in got), got
    return [g.token_id for g in got], rec


def _host_candidates(logits, history_tokens, prompt_ids, params):
    """The host sampler's candidates for these logits: penalty, temperature, top-k."""
    s = Sampler(params, prompt_ids)
    for t in history_tokens:
        s._record(t)
    x = np.array(logits, dtype=np.float32)
    s._penalise(x)
    x = x / np.float32(params.temperature)
    cand = _top_k(x, params.top_k)
    return cand, _softmax(x[cand])


@pytest.fixture(scope="module")
def device_engine(native_module, tiny_bmodel_dir):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    eng = BM1684XEngine(tiny_bmodel_dir, device_sampling="on")
    yield eng
    eng.close()


def test_device_candidates_and_draws_equal_the_hosts(bm_engine, device_engine, tiny_bmodel_dir):
    assert bm_engine.capabilities.device_candidates == 0  # auto: host sampling on the simulator
    assert device_engine.capabilities.device_candidates == 50
    prompt = _text_prompt(tiny_bmodel_dir)
    host_tokens, host = _generate(bm_engine, prompt, PARAMS)
    assert all(o.logits is not None for o in host.steps)

    dev_tokens, dev = _generate(device_engine, prompt, PARAMS)
    assert all(o.logits is None and o.candidates is not None for o in dev.steps), dev.steps
    assert dev_tokens == host_tokens
    # the decode step read 50 candidates (probabilities + ids), not 151,936 logits
    assert dev.decode_cost["d2s_bytes"] == 2 * 50 * 4 and dev.decode_cost["d2s_copies"] == 1, dev.decode_cost
    assert host.decode_cost["d2s_bytes"] == bm_engine.rt.vocab_size * 4

    unpenalised = SamplingParams(temperature=PARAMS.temperature, top_k=PARAMS.top_k)
    for i, (h, d) in enumerate(zip(host.steps, dev.steps, strict=True)):
        ids, probs = _host_candidates(h.logits, host_tokens[:i], prompt.input_ids, PARAMS)
        dev_probs, dev_ids = d.candidates
        np.testing.assert_array_equal(dev_ids, ids, err_msg=f"step {i}: candidate ids")
        np.testing.assert_allclose(dev_probs, probs, rtol=2e-6, atol=1e-9, err_msg=f"step {i}: probabilities")
        plain, _ = _host_candidates(h.logits, [], [], unpenalised)
        assert list(plain) != list(ids), f"step {i}: the penalty changed nothing, the test proves nothing"
        # the same seeded draws as the host sampler over the full logits
        for seed in range(300):
            params = SamplingParams(**{**PARAMS.__dict__, "seed": seed})
            host_s, dev_s = Sampler(params, prompt.input_ids), Sampler(params, prompt.input_ids)
            for t in host_tokens[:i]:
                host_s._record(t)
                dev_s._record(t)
            assert dev_s.draw(dev_probs, dev_ids).token_id == host_s.choose(h.logits).token_id, (i, seed)
    # the decode step's history held the token it was fed: without it the candidates differ
    without_fed, _ = _host_candidates(host.steps[1].logits, [], prompt.input_ids, PARAMS)
    assert list(without_fed) != list(dev.steps[1].candidates[1]), "the fed token's penalty is not visible"
