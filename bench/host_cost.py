"""Host milliseconds per generated token, the device's time taken out.

    from host_cost import host_ms_per_token  # from a script in bench/
    host_ms_per_token(engine, prompt, SamplingParams(...), tokens=8)

Runs one request through the real scheduler (engine/scheduler.py) on the engine and, for
every decode token, takes the wall time between two deliveries less the time the host
spent inside device launches and waits (the native counters' `device_ms`).  What is left
is the engine thread's own work per token: the scheduler, the engine's Python and C++
host code, host<->device copies, decoding the logits and sampling.  Detokenising and
writing the stream happen in the request's greenlet on the hub, overlapped with the next
launch (engine/runner.py TokenChannel), so they are not on this path.  Used by
`make bench-sim` (bench/bench_sim.py).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from qwen3vl_app.engine.sampling import Sampler, SamplingParams
from qwen3vl_app.engine.scheduler import BatchScheduler, Cancel, Generated, SlotRequest


def host_ms_per_token(engine, prompt, params: SamplingParams, tokens: int = 8) -> float:
    """Median host milliseconds per decode token (device time excluded) of a `tokens`-token
    generation; the engine must expose `device_counters()` (the BM1684X engine does)."""
    marks: list[tuple[float, float]] = []

    def deliver(item) -> None:
        if isinstance(item, BaseException):
            raise item
        marks.append((time.perf_counter(), engine.device_counters()["device_ms"]))

    params = SamplingParams(**{**params.__dict__, "max_tokens": tokens})
    sched = BatchScheduler(engine, 1)
    got: list = []
    sched.pending.append(SlotRequest(prompt, params, (), Cancel(), lambda x: (got.append(x), deliver(x))))
    sched.run_until_idle()
    assert all(isinstance(g, Generated) for g in got), got
    # marks[0] follows the prefill; each later one a decode step
    per = [(t1 - t0) * 1000 - (d1 - d0) for (t0, d0), (t1, d1) in zip(marks, marks[1:], strict=False)]
    return statistics.median(per)


def draw_ms(params: SamplingParams, candidates: int = 50, repeat: int = 200) -> float:
    """Host milliseconds of the device path's host part: the draw among a head's candidates."""
    rng = np.random.default_rng(0)
    probs = np.sort(rng.random(candidates).astype(np.float32))[::-1]
    probs /= probs.sum()
    ids = np.arange(candidates, dtype=np.int32)
    s = Sampler(params, [])
    t0 = time.perf_counter()
    for _ in range(repeat):
        s.draw(probs, ids)
    return (time.perf_counter() - t0) * 1000 / repeat
