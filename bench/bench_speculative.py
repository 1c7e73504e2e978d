"""Speculative decoding on the torch engine: tokens per engine step, draft acceptance and
time per token, with K draft tokens against K = 0, on the one decode loop
(engine/scheduler.py) in-process.  Prints JSON, then a table.  Numbers, not assertions.

Workloads (tiny random-weight model unless -m names a checkpoint):
  extract-json   an invoice in the prompt, the answer constrained by a JSON schema whose
                 values must be copied from it (response_format with enums): the drafter
                 finds the runs in the prompt
  prediction     a rewrite with OpenAI's `prediction`: the expected text with one edit in
                 every ~12 tokens (the answer is the K = 0 output)
  free-form      a story, sampled (temperature 0.8, seeded), no prediction: drafts only
                 where the text repeats itself; the cost of having speculation on

Every speculative run is checked token for token against its K = 0 run ("same").

    python bench/bench_speculative.py [-m MODEL_DIR] [--tokens 96] [--k 4 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qwen3vl_app.engine.sampling import SamplingParams  # noqa: E402
from qwen3vl_app.engine.scheduler import BatchScheduler, Cancel, Generated, SlotRequest  # noqa: E402

INVOICE = (
    "INVOICE No. INV-2026-004711\nSeller: Northwind Optical Supplies Ltd., 42 Harbour Road, Kowloon\n"
    "Buyer: Sophgo Edge Systems, Building 7, Science Park West\nDate: 2026-11-28\n"
    "Item: BM1684X carrier board rev C, quantity 12, unit price 189.50 USD\n"
    "Total due: 2274.00 USD, payable within 30 days to account HK-88-2231-0097-5512."
)
SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"enum": ["INV-2026-004711"]},
        "seller": {"enum": ["Northwind Optical Supplies Ltd., 42 Harbour Road, Kowloon"]},
        "buyer": {"enum": ["Sophgo Edge Systems, Building 7, Science Park West"]},
        "item": {"enum": ["BM1684X carrier board rev C"]},
        "account": {"enum": ["HK-88-2231-0097-5512"]},
    },
    "required": ["invoice_number", "seller", "buyer", "item", "account"],
    "additionalProperties": False,
}


def run(engine, prompt, params, k, prediction=(), constrain=None) -> dict:
    sched = BatchScheduler(engine, 1)
    got: list = []
    req = SlotRequest(
        prompt, params, (), Cancel(), got.append, constrain=constrain, speculative=k, prediction=tuple(prediction)
    )
    sched.pending.append(req)
    t0 = time.perf_counter()
    sched.run_until_idle()
    seconds = time.perf_counter() - t0
    errors = [g for g in got if isinstance(g, BaseException)]
    if errors:
        raise errors[0]
    ids = [g.token_id for g in got if isinstance(g, Generated)]
    return {
        "ids": ids,
        "tokens": len(ids),
        "engine_steps": req.steps,
        "tokens_per_step": round(len(ids) / max(1, req.steps), 2),
        "drafted": req.drafted,
        "accepted": req.accepted,
        "acceptance": round(req.accepted / req.drafted, 3) if req.drafted else None,
        "ms_per_token": round(1000 * seconds / max(1, len(ids)), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model-dir", default=None)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8])
    args = ap.parse_args()

    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint
    from qwen3vl_app.engine.constraints import compile_grammar
    from qwen3vl_app.engine.torch.engine import TorchEngine
    from qwen3vl_app.prompt.template import build_prompt
    from qwen3vl_app.tokenizer import ChatTokenizer

    model_dir = Path(args.model_dir) if args.model_dir else ensure_tiny_checkpoint()
    tok = ChatTokenizer(model_dir)
    engine = TorchEngine(model_dir, dtype="float32", threads=2)

    def chat(text):
        return build_prompt(tok, [{"role": "user", "content": text}])

    grammar = compile_grammar(json_schema=SCHEMA, tokenizer=tok)
    greedy = SamplingParams(max_tokens=args.tokens, temperature=0.0)
    extract = chat(INVOICE + "\n\nExtract the invoice number, seller, buyer, item and account as JSON.")
    rewrite = chat("Rewrite this text, fixing typos:\n" + INVOICE)
    story = chat("Tell me a long story about a lighthouse keeper and a storm.")
    sampled = SamplingParams(max_tokens=args.tokens, temperature=0.8, top_p=0.95, seed=3)

    plain_rewrite = run(engine, rewrite, greedy, 0)["ids"]
    edited = [t if (i + 1) % 12 else (t + 11) % 1000 for i, t in enumerate(plain_rewrite)]
    workloads = {
        "extract-json": dict(prompt=extract, params=greedy, constrain=lambda: grammar.mask(tok)),
        "prediction": dict(prompt=rewrite, params=greedy, prediction=edited),
        "free-form": dict(prompt=story, params=sampled),
    }
    run(engine, story, sampled, 0)  # warm-up
    results = []
    for name, w in workloads.items():
        base = None
        for k in [0, *args.k]:
            r = run(engine, w["prompt"], w["params"], k, w.get("prediction", ()), w.get("constrain"))
            base = base or r
            ids = r.pop("ids")
            r.update(workload=name, k=k, same=ids == base.get("ids_", ids))
            base.setdefault("ids_", ids)
            r["speedup"] = round(base["ms_per_token"] / r["ms_per_token"], 2) if r["ms_per_token"] else None
            results.append(r)
    print(json.dumps({"model": str(model_dir), "results": results}, indent=1))
    print()
    print(f"{'workload':<14}{'K':>3}{'tokens':>8}{'steps':>7}{'tok/step':>10}", end="")
    print(f"{'accept':>8}{'ms/tok':>8}{'speedup':>9}  same")
    for r in results:
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        print(
            f"{r['workload']:<14}{r['k']:>3}{r['tokens']:>8}{r['engine_steps']:>7}{r['tokens_per_step']:>10.2f}"
            f"{acc:>8}{r['ms_per_token']:>8.2f}{r['speedup']:>9.2f}  {'yes' if r['same'] else 'NO'}"
        )


if __name__ == "__main__":
    main()
