"""BM1684X engine on the cmodel simulator: the device work per decode token and per image.

    make bench-sim                 # or: python bench/bench_sim.py [--steps N] [--model DIR]

Prints, for the tiny test bmodel (built and cached on first use): per decode token the
device launches, device-to-device copies, host<->device copies and bytes and host waits
(counted by the native runtime), simulator milliseconds per decode step, and for one image
prompt the host milliseconds (wall time minus time inside device launches) and the same
counts.  The simulator's milliseconds are not the box's: compare runs, not absolute values.
Numbers of the code before the vendor-style decode are in docs/operations.md.
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


def tiny_bmodel() -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_tiny_bmodel.py")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def counters(engine) -> dict | None:
    get = getattr(engine, "device_counters", None)
    return get() if get else None


def delta(after: dict | None, before: dict | None) -> dict | None:
    if after is None or before is None:
        return None
    return {k: after[k] - before[k] for k in after}


def launch_ms(engine) -> float:
    return sum(ms for _, ms in engine.timings().values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="bm1684x model folder (default: the tiny test bmodel)")
    ap.add_argument("--steps", type=int, default=4, help="decode steps to time")
    args = ap.parse_args()
    folder = args.model or tiny_bmodel()

    from bench.host_cost import draw_ms, host_ms_per_token
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine
    from qwen3vl_app.engine.sampling import SamplingParams
    from tests.native.test_bm1684x import _image_prompt, _text_prompt

    engine = BM1684XEngine(folder)
    result: dict = {"model": str(folder), "layers": engine.rt.num_layers}
    try:
        out = engine.prefill_slot(0, _text_prompt(folder))
        token = int(np.argmax(out.logits)) if out.logits is not None else out.token_id
        step_ms, per_token = [], []
        for _ in range(args.steps):
            before = counters(engine)
            t0 = time.perf_counter()
            out = engine.decode_batch({0: token})[0]
            step_ms.append((time.perf_counter() - t0) * 1000)
            per_token.append(delta(counters(engine), before))
            token = int(np.argmax(out.logits)) if out.logits is not None else out.token_id
        # the first step after a prefill uploads the whole decode mask once: report a later one
        result["decode_ms_per_step"] = round(statistics.median(step_ms), 1)
        result["per_decode_token"] = per_token[-1]

        # host work per token on the critical path, device time taken out (bench/host_cost.py)
        sampled = SamplingParams(temperature=0.7, top_p=0.8, top_k=20)
        text = _text_prompt(folder)
        result["host_ms_per_token"] = {
            "host sampling (logits copied)": round(host_ms_per_token(engine, text, sampled), 2),
            "greedy (logits copied)": round(host_ms_per_token(engine, text, SamplingParams(temperature=0)), 2),
            "device sampling, host part (draw among 50)": round(draw_ms(sampled), 3),
        }

        image = _image_prompt(folder, engine.limits.max_pixels, seed=0)
        engine.prefill_slot(0, image)  # warm: shape caches
        image = _image_prompt(folder, engine.limits.max_pixels, seed=1)
        before, dev0 = counters(engine), launch_ms(engine)
        t0 = time.perf_counter()
        engine.prefill_slot(0, image)
        wall = (time.perf_counter() - t0) * 1000
        result["image_prefill_ms"] = round(wall, 1)
        result["image_host_ms"] = round(wall - (launch_ms(engine) - dev0), 1)
        result["per_image_prefill"] = delta(counters(engine), before)
    finally:
        engine.close()

    print(json.dumps(result, indent=2))
    t = result["per_decode_token"]
    print(f"\n{'per decode token':<28}{'value':>12}")
    print(f"{'simulator ms / step':<28}{result['decode_ms_per_step']:>12}")
    if t:
        for k in ("launches", "d2d_copies", "s2d_copies", "s2d_bytes", "d2s_copies", "d2s_bytes", "syncs"):
            print(f"{k:<28}{t[k]:>12}")
    print(f"\n{'host ms per token (no device time)':<44}{'ms':>8}")
    for k, v in result["host_ms_per_token"].items():
        print(f"{k:<44}{v:>8}")
    print(f"\n{'image prefill':<28}{'value':>12}")
    print(f"{'host ms (wall - launches)':<28}{result['image_host_ms']:>12}")
    print(f"{'wall ms':<28}{result['image_prefill_ms']:>12}")
    if result["per_image_prefill"]:
        for k, v in result["per_image_prefill"].items():
            print(f"{k:<28}{v:>12}")


if __name__ == "__main__":
    main()
