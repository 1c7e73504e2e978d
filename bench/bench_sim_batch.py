"""Batch-1 vs batch-4 bmodels on the cmodel simulator: device work per decode step.

    make bench-sim                 # or: python bench/bench_sim_batch.py [--steps N] [--no-old]

Builds (and caches) the tiny bmodel at batch 1 and at batch 4 in both layouts of our
converter wrapper (scripts/llm_convert_patched.py): `concat`, the first workaround (each
step slices and concatenates every slot's whole history, runs embedding and lm_head once
per slot and moves each new K/V row with two d2d copies per slot and layer), and `slots`,
the default (each slot's history is an input of its own, new rows written in place, one
embedding and one lm_head launch for all slots).  It fills every slot with a text prompt,
runs decode steps and prints, per step: launches, host waits (syncs), host-issued d2d
copies and memsets (counted by the native runtime), and the bytes the step's networks read
(docs/batching.md, "Bytes per step"):

- weights: each launched net's weight tensors as the bmodel stores them (`model_tool
  --weight`), once per launch; an embedding net reads only its gathered rows;
- KV: each decode block's attended history (SEQLEN rows per slot, K and V), plus, in the
  `concat` layout, the copy it makes of it (the whole [N, SEQLEN] history loaded and stored
  again before attention, read by the attention: 3x); d2d copies count their row read + write.

Each row is also printed as one JSON object on a line of its own (keys `model`, `batch`,
`lm_head`, `kv_layout`, `bytes_per_step`, `launches_per_step`, `syncs_per_step`,
`d2d_per_step`, `memsets_per_step`, `modelled_tok_s` at 41 GB/s with every slot busy, ...),
followed by the same counts modelled for the published 2B and 4B shapes (`measured: false`).
The simulator's milliseconds are not the box's, whose decode is bound by the bytes read:
compare runs, not absolute values.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = ("launches", "syncs", "d2d_copies", "memsets")


def build(script: str, *args: str) -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def net_weights(folder: Path) -> dict[str, int]:
    """Bytes of each net's stage-0 weight tensors, from `model_tool --weight`."""
    sys.path.insert(0, str(REPO / "scripts"))
    import build_bmodel
    import build_tiny_bmodel

    venv = build_bmodel.ensure_venv(build_tiny_bmodel.cache_root())
    tool = next((venv / "lib").glob("python3.10/site-packages/tpu_mlir/bin/model_tool"))
    bmodel = next(folder.glob("*.bmodel"))
    text = subprocess.run([str(tool), "--weight", str(bmodel)], check=True, capture_output=True, text=True).stdout
    out: dict[str, int] = {}
    net = None
    for line in text.splitlines():
        m = re.match(r'net \d+ : "([\w.]+)", stage:(\d+)', line)
        if m:
            net = m.group(1) if m.group(2) == "0" else None
            if net:
                out.setdefault(net, 0)
            continue
        m = re.match(r"\S+ : \[(0x[0-9a-f]+), (0x[0-9a-f]+)\)", line)
        if m and net:
            out[net] += int(m.group(2), 16) - int(m.group(1), 16)
    return out


def layout_of(rt) -> str:
    if rt.batch == 1:
        return "single"
    return "slots" if rt.batch_slot_kv else "concat"


def step_bytes(rt, weights: dict[str, int], calls: dict[str, int], d2d: int) -> dict[str, int]:
    """Bytes read by one decode step's launches (see the module docstring)."""
    n, hidden = rt.batch, rt.hidden_size
    row = rt.kv_heads * rt.head_dim * 2  # one K (or V) row, 16-bit
    layout = layout_of(rt)
    w = kv = 0
    for name, k in calls.items():
        if name.startswith("embedding_cache"):
            w += k * (n if name.endswith("_batch") else 1) * hidden * 2  # gathered rows only
        else:
            w += k * weights.get(name, 0)
        if name.startswith("block_cache_"):
            if layout == "single":
                kv += k * 2 * rt.last_decode_kv_length * row
            elif layout == "slots":
                kv += k * 2 * n * rt.seq_len * row
            else:  # loaded, stored as the concatenated copy, read by the attention
                kv += k * 3 * 2 * n * rt.seq_len * row
    kv += d2d * 2 * row
    return {"weight_bytes_per_step": w, "kv_bytes_per_step": kv, "bytes_per_step": w + kv}


def measure(folder: Path, steps: int) -> dict:
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine
    from tests.native.test_bm1684x import _text_prompt

    weights = net_weights(folder)
    engine = BM1684XEngine(folder)
    try:
        rt = engine.rt
        prompt = _text_prompt(folder)
        n = engine.max_batch
        tokens = {s: int(np.argmax(engine.prefill_slot(s, prompt).logits)) for s in range(n)}
        ms, deltas, calls = [], [], []
        for _ in range(steps):
            before, t_before = engine.device_counters(), engine.timings()
            t0 = time.perf_counter()
            outs = engine.decode_batch(tokens)
            ms.append((time.perf_counter() - t0) * 1000)
            after, t_after = engine.device_counters(), engine.timings()
            deltas.append({k: after[k] - before[k] for k in KEYS})
            calls.append({k: c - t_before.get(k, (0, 0.0))[0] for k, (c, _) in t_after.items()})
            tokens = {s: int(np.argmax(o.logits)) for s, o in outs.items()}
        last, net_calls = deltas[-1], {k: v for k, v in calls[-1].items() if v}
        row = {
            "model": "tiny",
            "measured": True,
            "batch": n,
            "lm_head": "bf16",
            "kv_layout": layout_of(rt),
            "tokens_per_step": n,
            "launches_per_step": last["launches"],
            "syncs_per_step": last["syncs"],
            "d2d_per_step": last["d2d_copies"],
            "memsets_per_step": last["memsets"],
            **step_bytes(rt, weights, net_calls, last["d2d_copies"]),
            "sim_ms_per_step": round(statistics.median(ms), 1),
            "nets_per_step": net_calls,
        }
        row["bytes_per_token"] = row["bytes_per_step"] // n
        return row
    finally:
        engine.close()


# ---- the same counts for the published shapes (text model; w4bf16 blocks, bf16 lm_head) --

SHAPES = {  # layers, hidden, q heads, kv heads, head_dim, intermediate, vocab (Qwen3-VL configs)
    "2b": (28, 2048, 16, 8, 128, 6144, 151936),
    "4b": (36, 2560, 32, 8, 128, 9728, 151936),
}
SEQLEN = 2048  # the published builds' SEQLEN
SE7_BYTES_PER_S = 41e9  # effective decode bandwidth of an SE7 (docs/operations.md)
W4_BYTES = 0.5 + 2 / 64  # a 4-bit weight plus a bf16 scale per group of 64


def modelled(model: str, batch: int, layout: str) -> dict:
    layers, h, qh, kvh, hd, inter, vocab = SHAPES[model]
    block = (h * qh * hd + 2 * h * kvh * hd + qh * hd * h + 3 * h * inter) * W4_BYTES
    lm_head = vocab * h * 2
    row = kvh * hd * 2
    history = 2 * SEQLEN * row  # K and V of one slot, one layer
    per_slot_heads = layout == "concat"
    w = layers * block + lm_head * (batch if per_slot_heads else 1) + batch * h * 2
    kv = layers * history * batch * (3 if layout == "concat" else 1)
    d2d = 2 * layers * batch if layout == "concat" else 0
    kv += d2d * 2 * row
    heads = batch if per_slot_heads else 1
    return {
        "model": model,
        "measured": False,
        "batch": batch,
        "lm_head": "bf16",
        "kv_layout": layout,
        "tokens_per_step": batch,
        "launches_per_step": 2 * heads + layers,
        "syncs_per_step": heads,
        "d2d_per_step": d2d,
        "memsets_per_step": 0,
        "weight_bytes_per_step": int(w),
        "kv_bytes_per_step": int(kv),
        "bytes_per_step": int(w + kv),
        "bytes_per_token": int((w + kv) / batch),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2, help="decode steps per build (the last one is reported)")
    ap.add_argument("--no-old", action="store_true", help="skip the first-workaround (concat) batch-4 build")
    args = ap.parse_args()
    folders = [build("build_tiny_bmodel.py")]
    if not args.no_old:
        folders.append(build("llm_convert_patched.py", "--batch", "4", "--kv-layout", "concat"))
    folders.append(build("llm_convert_patched.py", "--batch", "4"))
    rows = [measure(f, args.steps) for f in folders]
    for model in SHAPES:
        rows += [modelled(model, 1, "single"), modelled(model, 4, "concat"), modelled(model, 4, "slots")]
    report(rows)


def report(rows: list[dict]) -> None:
    for r in rows:  # all slots busy, the step bound by its bytes
        r["modelled_tok_s"] = round(r["tokens_per_step"] * SE7_BYTES_PER_S / r["bytes_per_step"], 1)

    cols = (
        "launches_per_step",
        "syncs_per_step",
        "d2d_per_step",
        "memsets_per_step",
        "weight_bytes_per_step",
        "kv_bytes_per_step",
        "bytes_per_step",
        "bytes_per_token",
        "modelled_tok_s",
    )
    print(
        f"{'model':<6}{'batch':>6} {'kv_layout':<8}"
        + "".join(f"{c.replace('_per_', '/'):>18}" for c in cols)
        + "  vs batch 1"
    )
    base: dict[str, int] = {}
    for r in rows:
        if r["batch"] == 1:
            base[r["model"]] = r["bytes_per_step"]
        ratio = r["bytes_per_step"] / base[r["model"]] if r["model"] in base else float("nan")
        tag = "" if r["measured"] else " (modelled)"
        print(
            f"{r['model']:<6}{r['batch']:>6} {r['kv_layout']:<8}"
            + "".join(f"{r[c]:>18,}" if isinstance(r[c], int) else f"{r[c]:>18}" for c in cols)
            + f"  {ratio:.2f}x{tag}"
        )
    print()
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
