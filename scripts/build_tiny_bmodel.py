#!/usr/bin/env python3
"""Build (or reuse) the tiny random-weight Qwen3-VL as a BM1684X model folder.

    python scripts/build_tiny_bmodel.py             # prints the model folder as its last line
    python scripts/build_tiny_bmodel.py --dynamic   # a dynamic build (variable-length networks)
    python scripts/build_tiny_bmodel.py --published --chunk-length 64
        # lm_head returning the token id, as the published bmodels (no --do_sample), and
        # block_cache with one stage per KV length 64/128/256

The same compile steps as `make bmodel` (scripts/build_bmodel.py), with small shapes that
keep the cmodel simulator fast: SEQLEN 256, MAX_INPUT_LENGTH 128, bf16, a 128x128-pixel
vision encoder, and `--do_sample` unless --published (the simulator's device-side sampling
heads take minutes per call, so tokens are picked on the host from the logits).

The checkpoint is `qwen3vl_app.devtools.tiny_model` (built with this Python; it needs torch and
transformers).  Folders are cached as `<cache>/tiny-bmodel[-variant]-<hash>/`, keyed by the
checkpoint, the compile arguments and the compiler version, so repeated runs are instant.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from build_bmodel import TPU_MLIR_VERSION, compile_folder, say  # noqa: E402

sys.path.insert(0, str(REPO))
from qwen3vl_app.devtools.tiny_model import cache_root  # noqa: E402

TINY_ARGS = [
    "-s",
    "256",
    "--max_input_length",
    "128",
    "-q",
    "bf16",
    "-c",
    "bm1684x",
    "--max_pixels",
    "128,128",
]  # vit compiled for 64 patches (16 merged tokens)
BMODEL_NAME = "tiny-qwen3vl.bmodel"
KEY_VERSION = "2"  # bump when the folder layout written changes


def build_checkpoint() -> Path:
    out = subprocess.run(
        [sys.executable, "-m", "qwen3vl_app.devtools.tiny_model"],
        cwd=REPO,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(ckpt: Path, convert_args: list[str]) -> str:
    h = hashlib.sha256()
    h.update(" ".join([KEY_VERSION, TPU_MLIR_VERSION, *convert_args]).encode())
    for name in sorted(os.listdir(ckpt)):
        p = ckpt / name
        if p.is_file():
            h.update(name.encode())
            h.update(file_sha(p).encode())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when cached")
    ap.add_argument("--dynamic", action="store_true", help="dynamic prefill + vit build")
    ap.add_argument(
        "--published",
        action="store_true",
        help="without --do_sample: lm_head returns the token id, as in the published bmodels",
    )
    ap.add_argument(
        "--chunk-length", type=int, default=0, help="llm_convert --chunk_length: block_cache gets a stage per KV length"
    )
    ap.add_argument(
        "--history-kv",
        action="store_true",
        help="llm_convert --use_history_kv (chunked prefill on top of the rows the KV cache keeps)",
    )
    ap.add_argument(
        "--speculative",
        type=int,
        default=0,
        help="also the verify nets for K draft tokens (scripts/llm_convert_patched.py, docs/speculative.md)",
    )
    ap.add_argument(
        "--lm-head",
        choices=("bf16", "w8", "w4"),
        default="bf16",
        help="lm_head weights: bf16 (llm_convert's, tied to the embedding) or weight-only int8/int4 (untied)",
    )
    args = ap.parse_args()
    convert_args = list(TINY_ARGS)
    variant = []
    if args.lm_head != "bf16":  # compiled through scripts/llm_convert_patched.py (scripts/lm_head_quant.py)
        convert_args += ["--lm_head", args.lm_head]
        variant.append(f"lmhead{args.lm_head}")
    if args.history_kv:  # llm_convert sets the input length itself then
        i = convert_args.index("--max_input_length")
        del convert_args[i : i + 2]
        convert_args.append("--use_history_kv")
        variant.append("historykv")
    if args.dynamic:
        convert_args.append("--dynamic")
        variant.append("dynamic")
    if args.published:
        variant.append("published")
    else:
        convert_args.append("--do_sample")
    if args.chunk_length:
        convert_args += ["--chunk_length", str(args.chunk_length)]
        variant.append(f"chunk{args.chunk_length}")
    if args.speculative:
        convert_args += ["--speculative", str(args.speculative)]
        variant.append(f"spec{args.speculative}")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ckpt = build_checkpoint()
    key_args = list(convert_args)
    if args.speculative:  # the wrapper's patches are part of what is built
        key_args.append(file_sha(REPO / "scripts" / "llm_convert_patched.py"))
    if args.lm_head != "bf16":
        key_args.append(file_sha(REPO / "scripts" / "lm_head_quant.py"))
    final = root / "-".join(["tiny-bmodel", *variant, cache_key(ckpt, key_args)])

    def ready() -> bool:
        return (final / BMODEL_NAME).exists() and (final / "config" / "config.json").exists()

    if not args.force and ready():
        say(f"cached: {final}")
        print(final)
        return
    # one builder at a time (a test session and `make tiny-bmodel` may race)
    with open(root / ".tiny-bmodel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if args.force or not ready():
            compile_folder(ckpt, final, convert_args, BMODEL_NAME)
            say(f"built in {time.time() - t0:.0f} s: {final} ({(final / BMODEL_NAME).stat().st_size // 1024} KiB)")
    print(final)


if __name__ == "__main__":
    main()
