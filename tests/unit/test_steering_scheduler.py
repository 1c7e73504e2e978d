"""Slot steering inside the one decode loop (engine/scheduler.py), over the FakeEngine
(a stand-in: the real engines run in tests/agent/test_thinking.py and on the simulator in
tests/native/test_bm1684x_thinking.py).  Here the fake plays a device-greedy engine (it
returns the token, no logits) beside a host-sampling one, with two slots in one batch:
the forced `</think>` replaces whatever the step chose, in that slot only."""

from __future__ import annotations

import numpy as np
import pytest

from qwen3vl_app.engine.base import Prompt
from qwen3vl_app.engine.loop_guard import LoopConfig, LoopDetector
from qwen3vl_app.engine.sampling import SamplingParams
from qwen3vl_app.engine.scheduler import BatchScheduler, Cancel, SlotRequest
from qwen3vl_app.engine.steering import LOOP_STOP, THINK_END, Steering
from tests.support.fake_engine import FakeEngine

CLOSE = (198, THINK_END, 271)  # "\n", </think>, "\n\n"


def run(engine, requests: list[tuple[list[int], Steering | None]], max_tokens: int = 12):
    sched = BatchScheduler(engine, max_batch=2)
    outs: list[list] = [[] for _ in requests]
    for i, (ids, steer) in enumerate(requests):
        prompt = Prompt(ids, np.tile(np.arange(len(ids), dtype=np.int64), (3, 1)))
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        sched.pending.append(SlotRequest(prompt, params, (), Cancel(), outs[i].append, steer=steer))
    sched.run_until_idle()
    return outs


@pytest.mark.parametrize("logits", [False, True], ids=["device-picks", "host-samples"])
def test_budget_forces_the_close_in_its_slot_only(tiny_tokenizer, logits):
    ids = tiny_tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n")
    alone = run(FakeEngine(tiny_tokenizer, logits=logits), [(ids, None)])[0]
    steer = Steering(thinking=True, thinking_model=True, budget=3, close_ids=CLOSE)
    steered, other = run(FakeEngine(tiny_tokenizer, logits=logits), [(ids, steer), (ids, None)])
    tokens = [g.token_id for g in steered]
    assert tokens[:3] == [g.token_id for g in alone[:3]]  # the engine's own choice until the budget
    assert tuple(tokens[3:6]) == CLOSE  # then the close, whatever the engine chose
    assert len(tokens) == 12 and steered[-1].finish_reason == "length"
    assert [g.token_id for g in other] == [g.token_id for g in alone]  # the other slot is untouched
    assert steer.reasoning_tokens == 5


def test_loop_guard_ends_the_slot_with_its_marker(tiny_tokenizer):
    ids = tiny_tokenizer.encode("count")
    loop = Steering(loop=LoopDetector(LoopConfig(span=16, max_period=4)))
    engine = FakeEngine(tiny_tokenizer, logits=False)  # greedy on the fake: it repeats its last word
    guarded, plain = run(engine, [(ids, loop), (ids, None)], max_tokens=200)
    assert guarded[-1].finish_reason == "stop" and guarded[-1].stopped_by == LOOP_STOP
    assert len(guarded) < 200 and loop.loop_found is not None
    assert plain[-1].finish_reason == "length" and len(plain) == 200
