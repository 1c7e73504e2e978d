"""Speculative decoding on the BM1684X simulator: the verify nets of the tiny
`--speculative 4` bmodel against plain decode steps, on the one decode loop
(engine/scheduler.py) in-process.  Prints JSON, then a table.  Numbers, not assertions.

Per workload and K (0 = plain decode): tokens, engine steps, tokens per step, draft
acceptance, device launches and device-to-device copies per generated token (counted by
the native runtime; the prefill is included, it is the same for every K), simulator
milliseconds per token, and whether the tokens equal the K = 0 run's.

  prediction   a rewrite with OpenAI's `prediction`: the expected text with one token in
               five edited (the answer is the K = 0 output), greedy
  lookup       the same prompt, drafts from the prompt and the text so far only
  free-form    a story, sampled (temperature 0.8, seeded), no prediction

    python bench/bench_sim_speculative.py [--tokens 12] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_speculative import run  # noqa: E402

from qwen3vl_app.engine.sampling import SamplingParams  # noqa: E402

K = 4
# short enough for the tiny build's 128-token prefill
TEXT = "Invoice INV-2026-004711 from Northwind Optical, total 2274.00 USD, account HK-88-2231-0097-5512."


def spec_bmodel() -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_tiny_bmodel.py"), "--speculative", str(K)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="bm1684x model folder built with --speculative (default: the tiny one)")
    ap.add_argument("--tokens", type=int, default=12)
    args = ap.parse_args()
    folder = args.model or spec_bmodel()

    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine
    from qwen3vl_app.prompt.template import build_prompt
    from qwen3vl_app.tokenizer import ChatTokenizer

    tok = ChatTokenizer(folder)
    engine = BM1684XEngine(folder)
    k = engine.max_draft if engine.capabilities.verify else 0
    if not k:
        raise SystemExit(f"{folder} has no verify nets: build it with --speculative K")

    def chat(text):
        return build_prompt(tok, [{"role": "user", "content": text}])

    greedy = SamplingParams(max_tokens=args.tokens, temperature=0.0)
    sampled = SamplingParams(max_tokens=args.tokens, temperature=0.8, top_p=0.95, seed=3)
    rewrite = chat("Rewrite this text, fixing typos:\n" + TEXT)
    story = chat("Tell me a long story about a lighthouse keeper and a storm.")

    def measured(prompt, params, kk, prediction=()):
        before = engine.device_counters()
        r = run(engine, prompt, params, kk, prediction)
        after = engine.device_counters()
        n = max(1, r["tokens"])
        r["launches_per_token"] = round((after["launches"] - before["launches"]) / n, 2)
        r["d2d_per_token"] = round((after["d2d_copies"] - before["d2d_copies"]) / n, 2)
        return r

    results = []
    try:
        plain = measured(rewrite, greedy, 0)
        edited = [t if (i + 1) % 5 else (t + 7) % 1000 for i, t in enumerate(plain["ids"])]
        runs = [
            ("prediction", plain),
            ("prediction", measured(rewrite, greedy, k, edited)),
            ("lookup", measured(rewrite, greedy, k)),
        ]
        story0 = measured(story, sampled, 0)
        runs += [("free-form", story0), ("free-form", measured(story, sampled, k))]
        base = {}
        for name, r in runs:
            kk = 0 if r is plain or r is story0 else k
            ids = r.pop("ids")
            ref = base.setdefault(name if name != "lookup" else "prediction", ids)
            r.update(workload=name, k=kk, same=ids == ref)
            results.append(r)
    finally:
        engine.close()
    print(json.dumps({"model": str(folder), "results": results}, indent=1))
    print()
    print(f"{'workload':<12}{'K':>3}{'tokens':>8}{'steps':>7}{'tok/step':>10}{'accept':>8}", end="")
    print(f"{'launch/tok':>12}{'d2d/tok':>9}{'sim ms/tok':>12}  same")
    for r in results:
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        print(
            f"{r['workload']:<12}{r['k']:>3}{r['tokens']:>8}{r['engine_steps']:>7}{r['tokens_per_step']:>10.2f}"
            f"{acc:>8}{r['launches_per_token']:>12.2f}{r['d2d_per_token']:>9.2f}{r['ms_per_token']:>12.0f}"
            f"  {'yes' if r['same'] else 'NO'}"
        )


if __name__ == "__main__":
    main()
