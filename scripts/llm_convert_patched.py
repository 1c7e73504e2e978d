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


# ----------------------------------------------------------------- --speculative K: the verify nets


def patch_speculative(k: int) -> None:
    """`--speculative K`: beside the usual nets, compile what one speculative verify step
    runs (docs/speculative.md), K + 1 = the fed token and K draft tokens:

    - `embedding_verify`: ids `[1, K+1]` -> states `[1, K+1, H]`;
    - `block_verify_<i>`: tpu-mlir's own history block (what `--use_history_kv` builds as
      `block_kv_<i>`) for K + 1 rows: states, positions `[3, K+1]`, mask `[1, 1, K+1,
      SEQLEN+K+1]` over the history K/V `[1, SEQLEN, kv_heads, head_dim]` and the rows
      themselves, giving the states and the rows' new K/V as outputs (written nowhere);
    - `lm_head_verify`: states `[K+1, H]` -> logits `[K+1, vocab]` (float32).

    The block is generated by re-running the converter's block generator on a view of the
    converter whose input length is K + 1 and whose history-KV flag is set, keeping only
    the history block it emits, renamed; the prefill `block_<i>` is untouched."""
    import threading

    llm = importlib.import_module("llm.LlmConverter")
    top = llm.top
    rows = k + 1
    local = threading.local()  # the MLIR module name to give the block being generated
    base_importer = llm.MLIRImporter

    class Importer(base_importer):  # type: ignore[misc,valid-type]
        def __init__(self, input_shapes, output_shapes, model_name, *args, **kwargs):
            model_name = getattr(local, "rename", {}).get(model_name, model_name)
            super().__init__(input_shapes, output_shapes, model_name, *args, **kwargs)

    llm.MLIRImporter = Importer
    conv = llm.LlmConverter

    class VerifyView:
        """The converter as the block generator should see it for the verify block."""

        def __init__(self, base, idx: int):
            self._base, self._idx = base, idx
            self.max_input_length = rows
            self.use_history_kv = True
            self.decode_chunk_list: list = []

        def __getattr__(self, name):
            return getattr(self._base, name)

        def save_mlir_module(self, module, name: str) -> None:
            if name == f"block_kv_{self._idx}":  # the prefill and decode blocks are the real run's
                conv.save_mlir_module(module, f"block_verify_{self._idx}")

    def gen_block_verify(self, idx: int) -> None:
        local.rename = {f"block_kv_{idx}": f"block_verify_{idx}"}
        try:
            conv._gen_block_mlir_impl(VerifyView(self, idx), idx)
        finally:
            local.rename = {}

    def gen_embedding_verify(self) -> None:
        name, shape = "embedding_verify", [1, rows, self.hidden_size]
        embedding = self.model_info.weights[llm.LlmList.EMBEDING]
        mlir = Importer(
            [[1, rows]], [shape], name, self.platform, input_types=["INT32"], weight_file="../embedding_top_weights.npz"
        )
        ids = mlir.create_input_op(self.get_loc("input_ids", mlir), 0)
        table = mlir.create_weight_op(embedding + ".weight", [self.vocab_size, self.hidden_size])
        out = top.GatherOp(
            mlir.get_tensor_type(shape), table, ids, axis=0, loc=self.get_loc(name, mlir), ip=mlir.insert_point
        ).output
        if self.scale_emb != 1.0:
            out = top.MulConstOp(
                mlir.get_tensor_type(shape),
                out,
                const_val=self.scale_emb,
                loc=self.get_loc(name + ".scale", mlir),
                ip=mlir.insert_point,
            ).output
        mlir.create_return_op([out])
        conv.save_mlir_module(mlir, name)

    def gen_lm_head_verify(self) -> None:
        name = "lm_head_verify"
        lmhead = self.model_info.weights[llm.LlmList.LMHEAD]
        mlir = Importer(
            [[rows, self.hidden_size]],
            [[rows, self.vocab_size]],
            name,
            self.platform,
            weight_file="../lm_head_top_weights.npz",
        )
        states = mlir.create_input_op(self.get_loc("hidden_states", mlir), 0)
        weight = mlir.create_weight_op(lmhead + ".weight", [self.vocab_size, self.hidden_size])
        out = top.MatMulOp(
            mlir.get_tensor_type([rows, self.vocab_size]),
            states,
            weight,
            mlir.none_op,
            do_relu=False,
            right_transpose=True,
            loc=self.get_loc(lmhead, mlir),
            ip=mlir.insert_point,
        ).output
        mlir.create_return_op([out])
        conv.save_mlir_module(mlir, name)

    original_gen_all = conv.gen_all_mlir
    original_compile_lm_head = conv.compile_lm_head

    def gen_all_mlir(self):
        if (
            self.num_device > 1
            or self.dynamic
            or self.batch > 1
            or self.lmhead_with_topk
            or self.llm_type not in (llm.LlmType.QWEN3,)
        ):
            raise SystemExit("--speculative needs a single-device, static, batch-1 --do_sample Qwen3-VL build")
        original_gen_all(self)  # the embedding and lm_head weight files exist from here on
        gen_embedding_verify(self)
        gen_lm_head_verify(self)
        for i in range(self.num_layers):
            gen_block_verify(self, i)

    def compile_lm_head(self):
        original_compile_lm_head(self)
        if not self.register_bmodel("embedding_verify", with_size=False):
            self.submit_deploy_task(
                "embedding_verify", [f"--quantize {self.half_precision_quantize}", "--quant_input", "--quant_output"]
            )
        if not self.register_bmodel("lm_head_verify", with_size=False):
            self.submit_deploy_task("lm_head_verify", [f"--quantize {self.half_precision_quantize}", "--quant_input"])
        for i in range(self.num_layers):
            if not self.register_bmodel(f"block_verify_{i}", with_size=False):
                self._deploy_block_phase(f"block_verify_{i}", i)

    conv.gen_all_mlir = gen_all_mlir
    conv.compile_lm_head = compile_lm_head


def pop_speculative(argv: list[str]) -> tuple[int, list[str]]:
    """`--speculative K` (ours) out of llm_convert's arguments: (K, the rest); K 0 when absent."""
    rest, k, i = [], 0, 0
    while i < len(argv):
        if argv[i] == "--speculative":
            if i + 1 >= len(argv) or not argv[i + 1].isdigit() or not 1 <= int(argv[i + 1]) <= 32:
                raise SystemExit("--speculative takes a draft length K, 1-32")
            k, i = int(argv[i + 1]), i + 2
            continue
        rest.append(argv[i])
        i += 1
    return k, rest


def run_patched_llm_convert(argv: list[str]) -> None:
    speculative, argv = pop_speculative(argv)
    patch_converter()
    if speculative:
        patch_speculative(speculative)
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
