#!/usr/bin/env python3
"""Build batch-N Qwen3-VL bmodels with tpu-mlir 1.30.2's `llm_convert`, working around a
converter bug that stops every `-b N` (N > 1) Qwen3-VL build (docs/batching.md).

The bug: with batch > 1 the converter inserts decode K/V in place (`use_insert`) and, for
that case, declares the *prefill* position input as `[1, 3, L]`.  Its prefill M-RoPE
(`Qwen3VLConverter.mrope`) still gathers cos/sin with that input as if it were `[3, L]`,
so shape inference of `block_0` fails ("error infer shape: 1 3 256 1 8").  The decode
path (`mrope_batch`) is written for the batched shape and is unaffected.  The fix is one
reshape of that input to `[3, L]` before the gather; the net keeps its declared
`[1, 3, L]` input, so the runtime feeds prefill positions exactly as for batch 1 plus a
leading 1.

Two roles in one file:

    python scripts/llm_convert_patched.py [--batch 4]      # repo Python: build the tiny batch-N
                                                            # bmodel folder, print it as last line
    <tpu-mlir venv>/bin/python scripts/llm_convert_patched.py --convert <llm_convert args>
                                                            # the patched llm_convert itself

The first role reuses scripts/build_tiny_bmodel.py (checkpoint, tpu-mlir venv, compile
arguments) and caches the result in `<cache>/tiny-bmodel-b<N>-<hash>/`.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------- inside the tpu-mlir venv


def patch_converter() -> None:
    """Make `Qwen3VLConverter.mrope` accept the `[1, 3, L]` prefill positions of batch builds."""
    import tpu_mlir  # noqa: F401  (sets TPUC_ROOT, PATH and PYTHONPATH for the tools it spawns)

    for entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    module = importlib.import_module("llm.Qwen3VLConverter")  # the module llm_convert.py imports by name

    original = module.Qwen3VLConverter.mrope
    top = module.top

    def mrope(self, mlir_gen, in_op, name: str):
        shape = list(in_op.type.shape)
        if len(shape) == 3 and shape[0] == 1:  # [1, 3, L] -> [3, L]; batch-1 builds never get here
            in_op = top.ReshapeOp(
                mlir_gen.get_tensor_type(shape[1:]),
                in_op,
                shape=shape[1:],
                loc=self.get_loc(name + ".pos_squeeze", mlir_gen),
                ip=mlir_gen.insert_point,
            ).output
        return original(self, mlir_gen, in_op, name)

    module.Qwen3VLConverter.mrope = mrope


def run_patched_llm_convert(argv: list[str]) -> None:
    patch_converter()
    tool = Path(os.environ["TPUC_ROOT"]) / "python" / "tools" / "llm_convert.py"
    sys.argv = [str(tool), *argv]
    runpy.run_path(str(tool), run_name="__main__")


# ----------------------------------------------------------------- repo side: the tiny batch-N folder


def build_tiny(batch: int, force: bool = False) -> Path:
    sys.path.insert(0, str(HERE.parent))
    import build_tiny_bmodel as tiny  # the batch-1 builder: same checkpoint, venv and compile flags

    root = tiny.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    ckpt = tiny.build_checkpoint()
    extra = ["-b", str(batch)]
    key = tiny.cache_key(ckpt, extra + [HERE.read_text()])
    final = root / f"tiny-bmodel-b{batch}-{key}"
    bmodel = final / tiny.BMODEL_NAME
    if bmodel.exists() and not force:
        tiny.say(f"cached: {final}")
        return final
    lock = open(root / ".tiny-bmodel.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    if bmodel.exists() and not force:
        return final
    venv = tiny.ensure_venv(root)
    tiny.ensure_parallel()
    work = Path(tempfile.mkdtemp(prefix="tiny-bmodel-b-build-", dir=root))
    try:
        env = dict(os.environ)
        env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        out = work / "out"
        t0 = time.time()
        tiny.run(
            [
                str(venv / "bin" / "python"),
                str(HERE),
                "--convert",
                "-m",
                str(ckpt),
                *tiny.CONVERT_ARGS,
                *extra,
                "-o",
                str(out),
            ],
            log=work / "llm_convert.log",
            cwd=work,
            env=env,
        )
        tiny.say(f"patched llm_convert -b {batch} took {time.time() - t0:.0f} s")
        found = sorted(out.glob("*.bmodel"))
        if len(found) != 1:
            raise SystemExit(f"expected one bmodel in {out}, found {found}")
        stage = work / "folder"
        (stage / "config").mkdir(parents=True)
        shutil.copy2(found[0], stage / tiny.BMODEL_NAME)
        shutil.copy2(work / "llm_convert.log", stage / "llm_convert.log")
        for p in ckpt.iterdir():
            if p.is_file() and not p.name.endswith((".safetensors", ".bin", ".pt")):
                shutil.copy2(p, stage / "config" / p.name)
        if final.exists():
            shutil.rmtree(final)
        stage.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def model_info(folder: Path) -> str:
    """`model_tool --info` of the folder's bmodel (the tool ships in the tpu-mlir venv)."""
    sys.path.insert(0, str(HERE.parent))
    import build_tiny_bmodel as tiny

    venv = tiny.ensure_venv(tiny.cache_root())
    tool = next((venv / "lib").glob("python3.10/site-packages/tpu_mlir/bin/model_tool"))
    out = subprocess.run(
        [str(tool), "--info", str(folder / tiny.BMODEL_NAME)], capture_output=True, text=True, check=True
    )
    return out.stdout


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--convert":
        run_patched_llm_convert(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description="build the tiny Qwen3-VL as a batch-N bmodel folder")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--info", action="store_true", help="also print `model_tool --info` of the result")
    args = ap.parse_args()
    folder = build_tiny(args.batch, args.force)
    if args.info:
        print(model_info(folder))
    print(folder)


if __name__ == "__main__":
    main()
