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

The first role reuses scripts/build_bmodel.py (tpu-mlir venv) and build_tiny_bmodel.py
(checkpoint, compile arguments) and caches the result in `<cache>/tiny-bmodel-b<N>-<hash>/`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
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
    patch_batch_decode_kv(importlib.import_module("llm.LlmConverter"), top)


def patch_batch_decode_kv(llm_module, top) -> None:
    """Batch builds' decode blocks insert the new K/V row into the history inputs with an
    `InsertOp`, whose PPL kernel does not compile in tpu-mlir 1.30.2 (the `ppl.ptr_cast`
    errors): the bmodel is written but the row is never inserted, so the step attends to a
    stale row and the cache never grows.  Build the attention input as
    concat(history[:, :SEQLEN-1], new row) instead (same values: the insert offset is
    SEQLEN-1) and return the new rows as two more outputs `[B, 1, kv_heads, head_dim]`,
    which the runtime writes to each slot's next row (as batch-1 builds return them)."""
    from mlir.ir import Location

    base = llm_module.MLIRImporter
    current: list = []  # the decode block being generated (one at a time)

    class Importer(base):  # type: ignore[misc,valid-type]
        def __init__(self, input_shapes, output_shapes, model_name, *args, **kwargs):
            self.new_kv: list = []
            batched_cache = model_name.startswith("block_cache_") and len(input_shapes) == 5 and len(output_shapes) == 1
            if batched_cache:
                b, _, kv, hd = input_shapes[3]
                output_shapes = [*output_shapes, [b, 1, kv, hd], [b, 1, kv, hd]]
            super().__init__(input_shapes, output_shapes, model_name, *args, **kwargs)
            current[:] = [self] if batched_cache else []

        def create_return_op(self, Operands):
            return super().create_return_op([*Operands, *self.new_kv])

    def insert(result_type, lhs, rhs=None, axis=1, offset=0, loc=None, ip=None, **_):
        mlir = current[0]
        shape = list(result_type.shape)
        kept = list(shape)
        kept[axis] = offset
        n = len(mlir.new_kv)
        name = f"{mlir.model_name}.history_{'kv'[n % 2]}_kept"
        head = top.SliceOp(
            mlir.get_tensor_type(kept),
            lhs,
            mlir.none_op,
            mlir.none_op,
            mlir.none_op,
            offset=[0] * len(shape),
            steps=[1] * len(shape),
            ends=kept,
            axes=[],
            loc=Location.fused([Location.name(name)], context=mlir.ctx),
            ip=ip,
        ).output
        mlir.new_kv.append(rhs)
        return top.ConcatOp(result_type, [head, rhs], axis=axis, loc=loc, ip=ip)

    llm_module.MLIRImporter = Importer
    top.InsertOp = insert


def run_patched_llm_convert(argv: list[str]) -> None:
    sys.path.insert(0, str(HERE.parent))
    import lm_head_quant  # --lm_head w8/w4: our option, taken out before llm_convert parses

    argv, lm_head, group = lm_head_quant.take_option(argv)
    patch_converter()
    lm_head_quant.patch(
        importlib.import_module("llm.LlmConverter"), importlib.import_module("llm.Qwen3VLConverter").top, lm_head, group
    )
    tool = Path(os.environ["TPUC_ROOT"]) / "python" / "tools" / "llm_convert.py"
    sys.argv = [str(tool), *argv]
    runpy.run_path(str(tool), run_name="__main__")


# ----------------------------------------------------------------- repo side: the tiny batch-N folder


def _builders():
    """scripts/build_bmodel.py (tpu-mlir venv, folder writing) and build_tiny_bmodel.py
    (checkpoint, tiny compile flags, cache key): the batch build reuses both."""
    sys.path.insert(0, str(HERE.parent))
    import build_bmodel
    import build_tiny_bmodel

    return build_bmodel, build_tiny_bmodel


def tiny_convert_args(batch: int) -> list[str]:
    _, tiny = _builders()
    return [*tiny.TINY_ARGS, "--do_sample", "-b", str(batch)]


def build_tiny(batch: int, force: bool = False) -> Path:
    bm, tiny = _builders()
    root = tiny.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    ckpt = tiny.build_checkpoint()
    args = tiny_convert_args(batch)
    key = tiny.cache_key(ckpt, [*args, hashlib.sha256(HERE.read_bytes()).hexdigest()])
    final = root / f"tiny-bmodel-b{batch}-{key}"
    if (final / tiny.BMODEL_NAME).exists() and not force:
        bm.say(f"cached: {final}")
        return final
    with open(root / ".tiny-bmodel.lock", "w") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / tiny.BMODEL_NAME).exists() and not force:
            return final
        venv = bm.ensure_venv(root)
        bm.ensure_parallel()
        work = Path(tempfile.mkdtemp(prefix="tiny-bmodel-b-build-", dir=root))
        try:
            env = dict(os.environ)
            env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
            env.pop("PYTHONPATH", None)
            out = work / "out"
            t0 = time.time()
            bm.run(
                [str(venv / "bin" / "python"), str(HERE), "--convert", "-m", str(ckpt), *args, "-o", str(out)],
                log=work / "llm_convert.log",
                cwd=work,
                env=env,
            )
            bm.say(f"patched llm_convert -b {batch} took {time.time() - t0:.0f} s")
            found = sorted(out.glob("*.bmodel"))
            if len(found) != 1:
                raise SystemExit(f"expected one bmodel in {out}, found {found}")
            bm.write_folder(ckpt, found[0], final, tiny.BMODEL_NAME)
            shutil.copy2(work / "llm_convert.log", final / "llm_convert.log")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def model_info(folder: Path) -> str:
    """`model_tool --info` of the folder's bmodel (the tool ships in the tpu-mlir venv)."""
    bm, tiny = _builders()
    venv = bm.ensure_venv(tiny.cache_root())
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
