"""Speculative decoding (engine/speculative.py, the scheduler's verify steps, the torch
engine's verify_batch/commit_slot): the tokens are exactly those of plain decoding.

On the torch engine (tiny random-weight model, float32 on CPU) every case compares a
speculative run with a K = 0 run of the same request, token for token: greedy with end
tokens and max_tokens landing inside a draft, a grammar mask per position, logprobs of
accepted tokens, cancellation, several slots with their own drafts in one batch, prefix
reuse, and seeded sampling.  The random model mostly repeats itself, so drafts from the
text so far are accepted; predictions with planted errors make them fail where planned.

The distribution test runs the scheduler over `MarkovEngine`, a stand-in for a model
(small vocabulary, logits a fixed function of the last token) that implements the verify
seam: what is tested there is the scheduler's acceptance rule, not a model.
"""

from __future__ import annotations

import numpy as np
import pytest

from qwen3vl_app.engine.base import Capabilities, Engine, Limits, Prompt, StepOutput
from qwen3vl_app.engine.sampling import SamplingParams
from qwen3vl_app.engine.scheduler import BatchScheduler, Cancel, Generated, SlotRequest
from qwen3vl_app.engine.speculative import Drafter

# -- the drafter alone ----------------------------------------------------------------


def test_drafter_copies_what_followed_the_latest_match_of_the_suffix():
    d = Drafter([1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    d.extend([2, 3])  # suffix (2, 3) last seen before 7 8
    assert d.propose(3) == [7, 8, 2]
    d.extend([6, 6, 6, 6])
    assert d.propose(4) == [6, 6, 6, 6]  # a loop continues itself past the end of the text


def test_drafter_without_a_match_proposes_nothing():
    d = Drafter([1, 2, 3, 4])
    d.extend([5, 6])
    assert d.propose(8) == []
    assert Drafter([1, 2, 1, 2]).propose(0) == []


def test_drafter_steps_over_a_replaced_token_of_the_prediction():
    d = Drafter([100, 101], prediction=[5, 5, 5, 5, 9, 5, 5, 5, 5, 5])
    d.extend([5, 5, 5, 5, 7])  # the answer has 7 where the prediction has 9
    assert d.propose(3) == [5, 5, 5]  # from just past the 9, not from the last run of 5s


def test_drafter_follows_the_prediction_and_finds_its_place_again():
    d = Drafter([100, 101], prediction=[1, 2, 3, 4, 5, 6, 7, 8])
    assert d.propose(3) == [1, 2, 3]  # nothing generated: the prediction's start
    d.extend([1, 2, 3])
    assert d.propose(3) == [4, 5, 6]
    d.extend([4, 40])  # the answer leaves the prediction...
    d.extend([41, 5, 6])  # ...and comes back to it: realigned on the last tokens
    assert d.propose(2) == [7, 8]
    d.extend([7, 8])
    assert d.propose(4) == []  # prediction used up, no n-gram of the text repeats


# -- a model stand-in with the verify seam: the acceptance rule's statistics -------------

VOCAB = 6


class MarkovEngine(Engine):
    """Not a model: next-token logits are a fixed table row picked by the last token fed,
    so verifying K tokens is K table lookups.  Stands in for a model to test the
    scheduler's speculative acceptance on a small vocabulary."""

    name = "markov"
    limits = Limits(max_context=4096, max_input_tokens=4096)
    capabilities = Capabilities(logits=True, verify=True)
    max_batch = 4

    def __init__(self):
        rng = np.random.default_rng(7)
        self.table = rng.normal(0, 1.0, (VOCAB, VOCAB)).astype(np.float32)
        self.table[:, 0] += 1.5  # token 0 likely after anything: drafts of 0s get accepted often
        self.held: dict[int, list[int]] = {}
        self.pending: dict[int, list[int]] = {}
        self.verify_steps = 0

    def prefill_slot(self, slot, prompt):
        self.held[slot] = list(prompt.input_ids)
        return StepOutput(logits=self.table[prompt.input_ids[-1]].copy())

    def decode_batch(self, tokens):
        for s, t in tokens.items():
            self.held[s].append(t)
        return {s: StepOutput(logits=self.table[t].copy()) for s, t in tokens.items()}

    def verify_batch(self, tokens):
        self.verify_steps += 1
        self.pending = {s: list(fed) for s, fed in tokens.items()}
        return {s: [StepOutput(logits=self.table[t].copy()) for t in fed] for s, fed in tokens.items()}

    def commit_slot(self, slot, keep):
        self.held[slot].extend(self.pending.pop(slot)[:keep])


def generate(engine, prompts, params, k=0, predictions=None, eos=(), batch=1, constrain=None, cancel_after=None):
    """Run `prompts` through one scheduler; per prompt (tokens, Generated items, request)."""
    sched = BatchScheduler(engine, batch)
    runs = []
    for i, prompt in enumerate(prompts):
        got: list = []
        cancel = Cancel()

        def deliver(item, got=got, cancel=cancel):
            got.append(item)
            if cancel_after is not None and sum(isinstance(g, Generated) for g in got) >= cancel_after:
                cancel.set()

        pred = tuple(predictions[i]) if predictions else ()
        mask = constrain[i] if constrain else None
        req = SlotRequest(prompt, params, eos, cancel, deliver, speculative=k, prediction=pred, constrain=mask)
        sched.pending.append(req)
        runs.append((got, req))
    sched.run_until_idle()
    out = []
    for got, req in runs:
        errors = [g for g in got if isinstance(g, BaseException)]
        assert not errors, errors
        gens = [g for g in got if isinstance(g, Generated)]
        out.append(([g.token_id for g in gens], gens, req))
    return out


def text_prompt(ids):
    return Prompt(list(ids), np.tile(np.arange(len(ids), dtype=np.int64), (3, 1)))


def test_sampled_tokens_keep_their_distribution_under_speculation():
    """With a draft of 0s on every step, the token after a 0 must still follow the model's
    distribution: chi-square against the exact probabilities, over many runs."""
    engine = MarkovEngine()
    prompt = text_prompt([3, 0])
    counts = np.zeros(VOCAB)
    for seed in range(150):  # seeded runs: the outcome is fixed, never flaky
        params = SamplingParams(max_tokens=12, temperature=1.0, seed=seed)
        ((ids, _, req),) = generate(engine, [prompt], params, k=4, predictions=[[0] * 12])
        prev = 0
        for t in ids:
            if prev == 0:
                counts[t] += 1
            prev = t
    assert engine.verify_steps > 100 and counts.sum() > 500
    p = np.exp(engine.table[0] - engine.table[0].max())
    p /= p.sum()
    expected = counts.sum() * p
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, (counts, expected)  # 5 degrees of freedom: p = 0.001
    # the teeth: always accepting the drafted 0 would be far off
    biased = counts.copy()
    biased[0] += counts.sum() * (1 - p[0])
    assert float(((biased - expected) ** 2 / expected).sum()) > 100


def test_seeded_sampling_gives_the_same_tokens_with_or_without_drafts():
    engine = MarkovEngine()
    params = SamplingParams(max_tokens=40, temperature=0.9, top_p=0.95, seed=11)
    prompt = text_prompt([1, 2, 0])
    ((plain, _, _),) = generate(engine, [prompt], params)
    wrong = [t if i % 5 else (t + 1) % VOCAB for i, t in enumerate(plain)]
    ((spec, _, req),) = generate(engine, [prompt], params, k=6, predictions=[wrong])
    assert spec == plain
    assert req.accepted > 0 and req.drafted > req.accepted


# -- the torch engine ------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir():
    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint()


@pytest.fixture(scope="module")
def tok(model_dir):
    from qwen3vl_app.tokenizer import ChatTokenizer

    return ChatTokenizer(model_dir)


@pytest.fixture(scope="module")
def engine(model_dir):
    from qwen3vl_app.engine.torch.engine import TorchEngine

    return TorchEngine(model_dir, dtype="float32", threads=2)


def chat(tok, text):
    from qwen3vl_app.prompt.template import build_prompt

    return build_prompt(tok, [{"role": "user", "content": text}])


GREEDY = SamplingParams(max_tokens=16, temperature=0.0, logprobs=True, top_logprobs=3)
# A penalty makes the random model's greedy output vary instead of one repeated token.
VARIED = SamplingParams(max_tokens=16, temperature=0.0, frequency_penalty=1.5, logprobs=True, top_logprobs=2)


def corrupt(ids, every=4):
    return [t if (i + 1) % every else (t + 7) % 1000 for i, t in enumerate(ids)]


def assert_same(plain, spec):
    ids_a, gens_a, _ = plain
    ids_b, gens_b, _ = spec
    assert ids_b == ids_a
    assert [g.finish_reason for g in gens_b] == [g.finish_reason for g in gens_a]
    for a, b in zip(gens_a, gens_b, strict=True):
        if a.choice.logprob is not None:
            assert b.choice.logprob == pytest.approx(a.choice.logprob, abs=1e-4)
            assert [t for t, _ in b.choice.top_logprobs or []] == [t for t, _ in a.choice.top_logprobs or []]


def test_greedy_output_and_logprobs_equal_plain_decoding(engine, tok):
    prompt = chat(tok, "Copy this: the quick brown fox jumps over the lazy dog")
    for params in (GREEDY, VARIED):
        plain = generate(engine, [prompt], params)[0]
        lookup = generate(engine, [prompt], params, k=4)[0]
        assert_same(plain, lookup)
        predicted = generate(engine, [prompt], params, k=8, predictions=[corrupt(plain[0])])[0]
        assert_same(plain, predicted)
        req = predicted[2]
        assert req.accepted > 0 and req.drafted > req.accepted  # drafts both kept and refused
        assert req.steps < len(plain[0])  # fewer engine steps than tokens


def test_end_token_and_max_tokens_inside_a_draft(engine, tok):
    prompt = chat(tok, "Count: one two three four five six")
    plain = generate(engine, [prompt], VARIED)[0]
    ids = plain[0]
    eos = (ids[9],)  # an end token that the draft carries on past
    stop_plain = generate(engine, [prompt], VARIED, eos=eos)[0]
    stop_spec = generate(engine, [prompt], VARIED, k=8, eos=eos, predictions=[ids])[0]
    assert_same(stop_plain, stop_spec)
    assert stop_spec[1][-1].finish_reason == "stop" and len(stop_spec[0]) == ids.index(ids[9]) + 1
    short = SamplingParams(max_tokens=7, temperature=0.0, frequency_penalty=1.5)
    short_spec = generate(engine, [prompt], short, k=8, predictions=[ids])[0]
    assert short_spec[0] == ids[:7] and short_spec[1][-1].finish_reason == "length"
    # the engine kept what it should: the same slot continues exactly on the next request
    assert_same(generate(engine, [prompt], VARIED)[0], generate(engine, [prompt], VARIED, k=4)[0])


def test_a_grammar_mask_applies_at_every_drafted_position(engine, tok):
    from qwen3vl_app.engine.constraints import compile_grammar

    schema = {
        "type": "object",
        "properties": {"plate": {"enum": ["KA-01-AB-1234"]}, "colour": {"enum": ["dark blue", "white"]}},
        "required": ["plate", "colour"],
    }
    grammar = compile_grammar(json_schema=schema, tokenizer=tok)
    prompt = chat(tok, 'The car KA-01-AB-1234 is dark blue. Reply {"plate": "KA-01-AB-1234", "colour": "dark blue"}')
    params = SamplingParams(max_tokens=40, temperature=0.0, logprobs=True)

    def masks():
        return [lambda: grammar.mask(tok)]

    plain = generate(engine, [prompt], params, constrain=masks())[0]
    text = tok.decode(plain[0])
    assert "KA-01-AB-1234" in text
    spec = generate(engine, [prompt], params, k=6, constrain=masks())[0]
    assert_same(plain, spec)
    # a prediction the grammar forbids in places: refused there, kept elsewhere
    bad = tok.encode('{"plate": "KA-01-AB-1234", "colour": "pink"}')
    spec = generate(engine, [prompt], params, k=6, constrain=masks(), predictions=[bad])[0]
    assert_same(plain, spec)
    assert spec[2].accepted > 0 and spec[2].drafted > spec[2].accepted


def test_cancellation_stops_within_one_step_and_leaves_the_slot_consistent(engine, tok):
    prompt = chat(tok, "Say something long.")
    plain = generate(engine, [prompt], VARIED)[0]
    got = generate(engine, [prompt], VARIED, k=8, predictions=[plain[0]], cancel_after=3)[0]
    assert 3 <= len(got[0]) <= 3 + 9 and got[0] == plain[0][: len(got[0])]
    assert len(got[0]) < len(plain[0])
    # the slot's kept KV (prefix reuse) serves the next request exactly
    again = generate(engine, [prompt], VARIED, k=4)[0]
    assert again[1][0].cached_tokens > 0
    assert_same(plain, again)


def test_several_slots_each_with_its_own_draft_in_one_batch(engine, tok):
    texts = ["Copy: red green blue red green blue", "Write about rivers.", "A B C D E F", "Numbers 1 2 3 4"]
    prompts = [chat(tok, t) for t in texts]
    params = [SamplingParams(max_tokens=n, temperature=0.0, frequency_penalty=1.5) for n in (20, 9, 16, 12)]
    alone = [generate(engine, [p], q)[0][0] for p, q in zip(prompts, params, strict=True)]
    # one scheduler, 3 slots for 4 requests (the 4th joins when the shortest ends); one
    # slot drafts from a right prediction, one from a wrong one, two from their own text
    sched_runs = []
    for p, q, pred in zip(prompts, params, [alone[0], corrupt(alone[1], 2), [], []], strict=True):
        sched_runs.append((p, q, pred))
    from qwen3vl_app.engine.scheduler import BatchScheduler

    sched = BatchScheduler(engine, 3)
    outs = []
    for p, q, pred in sched_runs:
        got: list = []
        sched.pending.append(SlotRequest(p, q, (), Cancel(), got.append, speculative=5, prediction=tuple(pred)))
        outs.append(got)
    sched.run_until_idle()
    assert [[g.token_id for g in got if isinstance(g, Generated)] for got in outs] == alone
    assert sched.accepted > 0 and sched.steps < sum(len(a) for a in alone) / 3


def test_seeded_sampling_on_the_torch_engine_is_unchanged(engine, tok):
    prompt = chat(tok, "Tell a story.")
    params = SamplingParams(max_tokens=24, temperature=0.8, top_k=50, seed=5, logprobs=True)
    plain = generate(engine, [prompt], params)[0]
    spec = generate(engine, [prompt], params, k=6, predictions=[corrupt(plain[0], 3)])[0]
    assert_same(plain, spec)
    assert spec[2].accepted > 0
