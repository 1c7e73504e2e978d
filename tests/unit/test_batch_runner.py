"""The runner sizes --max-batch to what the loaded engine declares, and admission follows."""

from __future__ import annotations

import gevent
import pytest

from qwen3vl_app.engine.base import Engine, Limits, StepOutput
from qwen3vl_app.engine.runner import EngineRunner
from qwen3vl_app.errors import QueueFull
from qwen3vl_app.settings import Settings


class SingleSequenceEngine(Engine):
    """Stand-in for an engine without batch support (loading the bm1684x one needs the
    simulator): it inherits the base class's max_batch of 1."""

    name = "single"
    limits = Limits(max_context=16, max_input_tokens=16)

    def prefill_slot(self, slot, prompt):
        return StepOutput(token_id=0)

    def decode_batch(self, tokens):
        return {slot: StepOutput(token_id=0) for slot in tokens}


def test_runner_lowers_max_batch_to_the_engine_and_admits_accordingly():
    runner = EngineRunner(Settings(max_batch=4, max_queue=0), SingleSequenceEngine)
    try:
        runner.wait_ready()
        gevent.sleep(0.01)  # the surplus permits are taken by a greenlet
        assert runner.max_batch == 1 and runner.scheduler is not None and len(runner.scheduler.slots) == 1
        with runner.turn():
            with pytest.raises(QueueFull):
                with runner.turn():
                    pass
    finally:
        runner.close()


def test_runner_builds_a_scheduler_when_the_engine_batches():
    class Batching(SingleSequenceEngine):
        max_batch = 8

    runner = EngineRunner(Settings(max_batch=3, max_queue=0), Batching)
    try:
        runner.wait_ready()
        assert runner.max_batch == 3 and runner.scheduler is not None and len(runner.scheduler.slots) == 3
        with runner.turn(), runner.turn(), runner.turn():
            with pytest.raises(QueueFull):
                with runner.turn():
                    pass
    finally:
        runner.close()
