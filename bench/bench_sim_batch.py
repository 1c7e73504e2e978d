"""Batch-1 vs batch-4 bmodel on the cmodel simulator: device work per generated token.

    make bench-sim                 # or: python bench/bench_sim_batch.py [--steps N]

Builds (and caches) the tiny bmodel at batch 1 and at batch 4 (scripts/llm_convert_patched.py),
fills every slot with a text prompt, then times decode steps.  Per generated token it prints
the device launches, device-to-device copies and simulator milliseconds (one batch-1 step
makes one token, one batch-4 step makes four).  The simulator's milliseconds are not the
box's, whose decode is bound by reading the weights once per step: compare runs, not
absolute values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(script: str, *args: str) -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def measure(folder: Path, steps: int) -> dict:
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine
    from tests.native.test_bm1684x import _text_prompt

    engine = BM1684XEngine(folder)
    try:
        prompt = _text_prompt(folder)
        n = engine.max_batch
        if n > 1:
            tokens = {s: int(np.argmax(engine.prefill_slot(s, prompt).logits)) for s in range(n)}
        else:
            tokens = {0: int(np.argmax(engine.prefill_slot(0, prompt).logits))}
        ms, launches, d2d = [], [], []
        for _ in range(steps):
            before = engine.device_counters()
            t0 = time.perf_counter()
            outs = engine.decode_batch(tokens)
            ms.append((time.perf_counter() - t0) * 1000)
            after = engine.device_counters()
            launches.append(after["launches"] - before["launches"])
            d2d.append(after["d2d_copies"] - before["d2d_copies"])
            tokens = {s: int(np.argmax(o.logits)) for s, o in outs.items()}
        return {
            "batch": n,
            "layers": engine.rt.num_layers,
            "sim_ms_per_step": round(statistics.median(ms), 1),
            "sim_ms_per_token": round(statistics.median(ms) / n, 1),
            "launches_per_token": launches[-1] / n,
            "d2d_per_token": d2d[-1] / n,
        }
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2, help="decode steps to time per build")
    args = ap.parse_args()
    rows = [
        measure(build("build_tiny_bmodel.py"), args.steps),
        measure(build("llm_convert_patched.py", "--batch", "4"), args.steps),
    ]
    print(json.dumps(rows, indent=2))
    keys = ("sim_ms_per_step", "sim_ms_per_token", "launches_per_token", "d2d_per_token")
    print(f"\n{'per generated token':<24}" + "".join(f"{'batch ' + str(r['batch']):>12}" for r in rows))
    for k in keys:
        print(f"{k:<24}" + "".join(f"{r[k]:>12}" for r in rows))


if __name__ == "__main__":
    main()
