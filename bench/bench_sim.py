"""BM1684X device cost per decode step: the tiny bmodel measured on the simulator, and the
published 2B/4B shapes modelled, with the SE7 tok/s that bandwidth allows.

    make bench-sim        # or: python bench/bench_sim.py [--steps N] [--modelled-only] [--no-image]

For each decode step it counts, per network launched, the bytes the network reads (its
weights from the bmodel's own tensor sizes, the KV rows it attends, its inputs and
outputs), plus launches, host waits (syncs), host-issued device-to-device copies and
memsets, and host<->device bytes (qwen3vl_app/engine/bm1684x/cost.py).  Measured rows:
the tiny bmodel at batch 1 with a bf16, W8 and W4 lm_head and at batch 4 (built and
cached on first use); which nets a step launches comes from the runtime's per-network call
counts, so a build that launches differently changes the row by itself.  Host ms per token
= wall time of the step minus the time spent inside device launches, per token.  Modelled
rows: the published 2B and 4B shapes (w4bf16 blocks, SEQLEN 2048) in the batch-1 layout,
today's batch-4 converter layout and a batch-4 layout with a [4, H] lm_head and in-place K/V
writes; the tok/s is 41 GB/s divided by bytes per token, printed next to the vendor's figure.

Output: a table, then each row as one JSON object per line, then the device memory of one
instance per model, then the host milliseconds and device counts of one image prefill.
The simulator's milliseconds are not the box's: compare runs.
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

from qwen3vl_app.engine.bm1684x import cost  # noqa: E402
from qwen3vl_app.engine.bm1684x.bmodel_file import read_bmodel  # noqa: E402


def build(script: str, *args: str) -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def tiny_bmodel(*args: str) -> Path:
    return build("build_tiny_bmodel.py", *args)


def calls(engine) -> dict[str, int]:
    return {name: n for name, (n, _) in engine.rt.timings().items()}


def launch_ms(engine) -> float:
    return sum(ms for _, ms in engine.rt.timings().values())


def diff(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after}


def measure(folder: Path, lm_head: str, steps: int) -> dict:
    """Decode `steps` steps after a text prompt in every slot; the last step's cost."""
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine
    from tests.native.test_bm1684x import _text_prompt

    info = read_bmodel(next(folder.glob("*.bmodel")))
    engine = BM1684XEngine(folder)
    try:
        n = engine.max_batch
        prompt = _text_prompt(folder)
        tokens = {}
        for s in range(n):
            out = engine.prefill_slot(s, prompt)
            tokens[s] = int(np.argmax(out.logits)) if out.logits is not None else int(out.token_id)
        host_ms, step = [], None
        for _ in range(steps):
            c0, k0, d0 = calls(engine), engine.rt.counters(), launch_ms(engine)
            t0 = time.perf_counter()
            outs = engine.decode_batch(tokens)
            wall = (time.perf_counter() - t0) * 1000
            host_ms.append((wall - (launch_ms(engine) - d0)) / n)
            tokens = {s: int(np.argmax(o.logits)) if o.logits is not None else int(o.token_id) for s, o in outs.items()}
            step = cost.measured_step(
                info, diff(calls(engine), c0), diff(engine.rt.counters(), k0), engine.rt.last_decode_kv_length
            )
        assert step is not None
        # the first step after a prefill uploads the whole decode mask once: report the last
        return row("tiny", n, lm_head, "single" if n == 1 else "slots", "measured", step, statistics.median(host_ms))
    finally:
        engine.close()


def image_prefill(folder: Path) -> dict:
    """Host milliseconds (wall time minus time inside device launches) and device counts of
    one image prompt's prefill (a second image: the first warms the shape caches)."""
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine
    from tests.native.test_bm1684x import _image_prompt

    engine = BM1684XEngine(folder)
    try:
        engine.prefill_slot(0, _image_prompt(folder, engine.limits.max_pixels, seed=0))
        image = _image_prompt(folder, engine.limits.max_pixels, seed=1)
        k0, d0 = engine.rt.counters(), launch_ms(engine)
        t0 = time.perf_counter()
        engine.prefill_slot(0, image)
        wall = (time.perf_counter() - t0) * 1000
        return {
            "image_prefill_ms": round(wall, 1),
            "image_host_ms": round(wall - (launch_ms(engine) - d0), 1),
            "per_image_prefill": diff(engine.rt.counters(), k0),
        }
    finally:
        engine.close()


def row(model: str, batch: int, lm_head: str, layout: str, source: str, c: cost.StepCost, host_ms) -> dict:
    return {
        "kind": "step",
        "model": model,
        "batch": batch,
        "lm_head": lm_head,
        "layout": layout,
        "source": source,
        "bytes_per_step": c.bytes_read,
        "bytes_per_token": c.bytes_read // batch,
        "weight_bytes_per_step": c.weight_bytes,
        "kv_bytes_per_step": c.kv_bytes,
        "launches_per_step": c.launches,
        "syncs_per_step": c.syncs,
        "d2d_per_step": c.d2d,
        "memsets_per_step": c.memsets,
        "host_device_bytes_per_step": c.host_device_bytes,
        "host_ms_per_token": None if host_ms is None else round(host_ms, 2),
        "modelled_tok_s": round(cost.tok_per_s(c.bytes_read, batch), 1),
        "vendor_tok_s": cost.VENDOR_TOK_S.get(model) if batch == 1 and lm_head == "bf16" else None,
    }


def modelled_rows() -> list[dict]:
    rows = []
    for name, shape in cost.SHAPES.items():
        for layout, batch in (("single", 1), ("concat", 4), ("slots", 4)):
            for head in cost.LM_HEAD_KINDS:
                rows.append(
                    row(name, batch, head, layout, "modelled", cost.modelled_step(shape, batch, head, layout), None)
                )
    return rows


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def print_table(rows: list[dict]) -> None:
    cols = (
        ("model", 5, lambda r: r["model"]),
        ("batch", 5, lambda r: r["batch"]),
        ("head", 5, lambda r: r["lm_head"]),
        ("layout", 12, lambda r: r["layout"]),
        ("src", 9, lambda r: r["source"]),
        ("MB/step", 10, lambda r: mb(r["bytes_per_step"])),
        ("MB/token", 10, lambda r: mb(r["bytes_per_token"])),
        ("weights MB", 11, lambda r: mb(r["weight_bytes_per_step"])),
        ("KV MB", 9, lambda r: mb(r["kv_bytes_per_step"])),
        ("launch", 7, lambda r: r["launches_per_step"]),
        ("sync", 5, lambda r: r["syncs_per_step"]),
        ("d2d", 5, lambda r: r["d2d_per_step"]),
        ("memset", 7, lambda r: r["memsets_per_step"]),
        ("h<->d B", 9, lambda r: r["host_device_bytes_per_step"]),
        ("host ms/tok", 12, lambda r: "-" if r["host_ms_per_token"] is None else r["host_ms_per_token"]),
        ("SE7 tok/s", 10, lambda r: r["modelled_tok_s"]),
        ("vendor", 7, lambda r: r["vendor_tok_s"] or ""),
    )
    print("  ".join(f"{h:>{w}}" for h, w, _ in cols))
    for r in rows:
        print("  ".join(f"{str(f(r)):>{w}}" for _, w, f in cols))


def summary(rows: list[dict]) -> None:
    def get(model, batch, head, layout):
        return next(
            r for r in rows if (r["model"], r["batch"], r["lm_head"], r["layout"]) == (model, batch, head, layout)
        )

    print("\nlm_head: bytes per token saved at batch 1 (modelled; tiny measured)")
    for model in ("tiny", "2b", "4b"):
        try:
            base = get(model, 1, "bf16", "single")
        except StopIteration:
            continue
        for head in ("w8", "w4"):
            try:
                r = get(model, 1, head, "single")
            except StopIteration:
                continue
            saved = base["bytes_per_token"] - r["bytes_per_token"]
            share = 100 * saved / base["bytes_per_token"]
            print(f"  {model:>4} {head}: {mb(saved)} MB saved of {mb(base['bytes_per_token'])} ({share:.1f} %)")
    print("\nbatch 4 vs batch 1 bytes per step (bf16 head)")
    for model in ("tiny", "2b", "4b"):
        try:
            one = get(model, 1, "bf16", "single")
        except StopIteration:
            continue
        for layout in ("concat", "slots"):
            try:
                r = get(model, 4, "bf16", layout)
            except StopIteration:
                continue
            ratio = r["bytes_per_step"] / one["bytes_per_step"]
            print(f"  {model:>4} {layout}: {ratio:.2f}x batch 1, {r['d2d_per_step']} d2d per step")


def print_memory() -> None:
    """One instance's device memory per model and head, and how many fit in the NPU heap of
    the vendor's layout (7615 MiB) or in all three heaps (NPU + VPU 3072 + VPP 3072 MiB: the
    NPU may allocate from the others)."""
    npu, all_heaps = 7615 << 20, (7615 + 3072 + 3072) << 20
    print("\ndevice memory of one instance (modelled; published builds, SEQLEN 2048, batch 1)")
    head = ("model", "head", "weights", "KV", "activ.", "other", "total", "fit NPU", "fit all")
    print(" ".join(f"{h:>9}" for h in head))
    for name, shape in cost.SHAPES.items():
        for kind in cost.LM_HEAD_KINDS:
            m = cost.instance_memory(shape, kind)
            fit = (npu // m.total, all_heaps // m.total)
            cells = (name, kind, *(cost.mib(v) for v in (m.weights, m.kv, m.activations, m.other, m.total)), *fit)
            print(" ".join(f"{c:>9}" for c in cells))
    for name, shape in cost.SHAPES.items():
        for kind in cost.LM_HEAD_KINDS:
            m = cost.instance_memory(shape, kind)
            line = {"kind": "memory", "model": name, "lm_head": kind, **m.as_dict()}
            print(json.dumps({**line, "workers_npu_7615": npu // m.total, "workers_all_heaps": all_heaps // m.total}))


def print_host_ms(folder) -> None:
    """Host work per token on the critical path, device time taken out (bench/host_cost.py):
    sampling from copied logits, greedy, and the device heads' host part."""
    from host_cost import draw_ms, host_ms_per_token  # bench/ is the script's folder

    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine
    from qwen3vl_app.engine.sampling import SamplingParams
    from tests.native.test_bm1684x import _text_prompt

    engine = BM1684XEngine(folder)
    try:
        sampled = SamplingParams(temperature=0.7, top_p=0.8, top_k=20)
        text = _text_prompt(folder)
        rows = {
            "host sampling (logits copied)": round(host_ms_per_token(engine, text, sampled), 2),
            "greedy (logits copied)": round(host_ms_per_token(engine, text, SamplingParams(temperature=0)), 2),
            "device sampling, host part (draw among 50)": round(draw_ms(sampled), 3),
        }
    finally:
        engine.close()
    print(f"\n{'host ms per token (no device time)':<44}{'ms':>8}")
    for k, v in rows.items():
        print(f"{k:<44}{v:>8}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="decode steps per build (the last is reported)")
    ap.add_argument("--modelled-only", action="store_true", help="only the 2B/4B rows (no simulator)")
    ap.add_argument("--no-image", action="store_true", help="skip the image prefill measurement")
    args = ap.parse_args()

    rows = []
    if not args.modelled_only:
        for head in cost.LM_HEAD_KINDS:
            folder = tiny_bmodel() if head == "bf16" else tiny_bmodel("--lm-head", head)
            rows.append(measure(folder, head, args.steps))
        rows.append(measure(build("llm_convert_patched.py", "--batch", "4"), "bf16", max(2, args.steps - 1)))
    rows += modelled_rows()
    print_table(rows)
    print()
    for r in rows:
        print(json.dumps(r))
    summary(rows)
    print_memory()
    if not args.modelled_only and not args.no_image:
        print("\nimage prefill (tiny, simulator)")
        print(json.dumps(image_prefill(tiny_bmodel())))
    if not args.modelled_only:
        print_host_ms(tiny_bmodel())


if __name__ == "__main__":
    main()
