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

The in-place K/V insert of batch decode blocks does not compile either (its PPL kernel), so
the wrapper also builds those blocks itself: by default (`--kv-layout slots`) each slot's
history is an input of its own and each slot attends in place, as a batch-1 build does,
with `embedding_cache_batch` / `lm_head_batch` added so a decode step reads every weight
once; `--kv-layout concat` keeps the first workaround (history sliced and concatenated
every step) to compare against.  docs/batching.md has the details and the counts.

Two roles in one file:

    python scripts/llm_convert_patched.py [--batch 4] [--kv-layout slots|concat]
                                                            # repo Python: build the tiny batch-N
                                                            # bmodel folder, print it as last line
    <tpu-mlir venv>/bin/python scripts/llm_convert_patched.py --convert [--kv-layout L] <llm_convert args>
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


def patch_converter(kv_layout: str = "slots") -> None:
    """Make `Qwen3VLConverter.mrope` accept the `[1, 3, L]` prefill positions of batch builds,
    and build the batch decode nets with `kv_layout` (KV_LAYOUTS)."""
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
    llm = importlib.import_module("llm.LlmConverter")
    if kv_layout == "concat":
        patch_batch_decode_kv(llm, top)
    else:
        patch_batch_decode_slots(llm, top)
        patch_batch_heads(llm, top)


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


KV_LAYOUTS = ("slots", "concat")  # ours (in place, per-slot rows) and the first workaround


def patch_batch_decode_slots(llm_module, top) -> None:
    """Batch decode blocks that write each slot's new K/V row in place and copy no history
    (the `slots` layout, docs/batching.md).

    `block_cache_i` takes each slot's history as inputs of its own, `history_k_s` /
    `history_v_s` `[1, SEQLEN, kv_heads, head_dim]` (inputs 3 + 2s and 4 + 2s), and returns
    each slot's new rows as outputs `k_cache_s` / `v_cache_s` `[1, 1, kv_heads, head_dim]`
    (outputs 1 + 2s and 2 + 2s).  Attention runs per slot exactly as in a batch-1 build:
    `concat(history_s, new_s)` with `only_merge` (the compiler places the new row right
    after the history, so nothing is copied) and a batch-1 FAttention over SEQLEN + 1 keys
    with that slot's mask row `[1, 1, 1, SEQLEN + 1]`; the projections, norms, rotary and MLP
    stay batched (the weights are read once for all slots).  The runtime points `k_cache_s`
    at slot s's next row, so no row is moved by the host."""
    import threading

    from mlir.ir import Location

    base = llm_module.MLIRImporter
    local = threading.local()  # the decode block this thread is generating (blocks are built in threads)
    original_fattention = top.FAttentionOp

    class Slots:  # what InsertOp returns for a decode block: per-slot attention keys or values
        def __init__(self, per_slot):
            self.output = per_slot

    class Importer(base):  # type: ignore[misc,valid-type]
        def __init__(self, input_shapes, output_shapes, model_name, *args, **kwargs):
            batched = model_name.startswith("block_cache_") and len(input_shapes) == 5 and len(output_shapes) == 1
            self.slots = 0
            if batched:
                b, seq, kv, hd = input_shapes[3]
                self.slots, self.seq = b, seq
                self.new_rows: list = []
                row, hist = [1, 1, kv, hd], [1, seq, kv, hd]
                input_shapes = [*input_shapes[:2], [b, 1, 1, seq + 1], *[hist for _ in range(2 * b)]]
                output_shapes = [*output_shapes, *[row for _ in range(2 * b)]]
                types = list(args[1]) if len(args) > 1 else list(kwargs.pop("input_types"))
                types = [*types[:3], *[types[3] for _ in range(2 * b)]]
                if len(args) > 1:
                    args = (args[0], types, *args[2:])
                else:
                    kwargs["input_types"] = types
            super().__init__(input_shapes, output_shapes, model_name, *args, **kwargs)
            local.block = self if batched else None

        def create_input_op(self, loc, index, kargs: dict = {}):  # noqa: B006 (the base's signature)
            if not self.slots or index < 3:
                return super().create_input_op(loc, index, kargs)
            which = "kv"[index - 3]  # the vendor asks for history_k (3) and history_v (4) once each
            ops = []
            for s in range(self.slots):
                name = f"history_{which}_{s}"
                ops.append(
                    super().create_input_op(
                        Location.fused([Location.name(name)], context=self.ctx), 3 + 2 * s + (index - 3)
                    )
                )
            return Slots(ops)

        def create_return_op(self, Operands):
            if not self.slots:
                return super().create_return_op(Operands)
            k, v = self.new_rows
            rows = [r for s in range(self.slots) for r in (k[s], v[s])]
            return super().create_return_op([*Operands, *rows])

    def name_loc(block, name):
        return Location.fused([Location.name(name)], context=block.ctx)

    def slice0(block, op, s, shape, name, ip):
        """Row s of axis 0 of `op` (shape `shape`), as [1, ...]."""
        out = [1, *shape[1:]]
        return top.SliceOp(
            block.get_tensor_type(out),
            op,
            block.none_op,
            block.none_op,
            block.none_op,
            offset=[s] + [0] * (len(shape) - 1),
            steps=[1] * len(shape),
            ends=[s + 1, *shape[1:]],
            axes=[],
            loc=name_loc(block, name),
            ip=ip,
        ).output

    def insert(result_type, lhs, rhs=None, axis=1, offset=0, loc=None, ip=None, **kw):
        block = getattr(local, "block", None)
        if block is None or not isinstance(lhs, Slots):
            raise RuntimeError("InsertOp outside a batch decode block: not expected by this wrapper")
        which = "kv"[len(block.new_rows)]
        shape = list(rhs.type.shape)  # [B, 1, kv, hd]
        rows, merged = [], []
        for s in range(block.slots):
            row = slice0(block, rhs, s, shape, f"{which}_cache_{s}", ip)
            rows.append(row)
            hist = lhs.output[s]
            merged.append(
                top.ConcatOp(
                    block.get_tensor_type([1, block.seq + 1, *shape[2:]]),
                    [hist, row],
                    axis=1,
                    only_merge=True,
                    loc=name_loc(block, f"history_{which}_{s}.concat"),
                    ip=ip,
                ).output
            )
        block.new_rows.append(rows)
        return Slots(merged)

    def fattention(output, queries, keys, values, mask, buffer, scale, batch, q_head, kv_head, dim, mq, mk, **kw):
        block = getattr(local, "block", None)
        if block is None or not isinstance(keys, list):  # InsertOp(...).output: per-slot keys
            return original_fattention(
                output, queries, keys, values, mask, buffer, scale, batch, q_head, kv_head, dim, mq, mk, **kw
            )
        ip = kw.get("ip")
        q_shape = list(queries.type.shape)  # [B, 1, q_heads, hd]
        m_shape = list(mask.type.shape)  # [B, 1, 1, SEQLEN + 1]
        out_shape = list(output.shape)  # [B, 1, q_dim]
        parts = []
        for s in range(block.slots):
            q = slice0(block, queries, s, q_shape, f"q_{s}", ip)
            m = slice0(block, mask, s, m_shape, f"attention_mask_{s}", ip)
            parts.append(
                original_fattention(
                    block.get_tensor_type([1, *out_shape[1:]]),
                    q,
                    keys[s],
                    values[s],
                    m,
                    buffer,
                    scale,
                    1,
                    q_head,
                    kv_head,
                    dim,
                    mq,
                    block.seq + 1,
                    keep_dims=kw.get("keep_dims"),
                    loc=name_loc(block, f"fattention_{s}"),
                    ip=ip,
                ).output
            )
        return top.ConcatOp(output, parts, axis=0, loc=kw.get("loc"), ip=ip)

    llm_module.MLIRImporter = Importer
    top.InsertOp = insert
    top.FAttentionOp = fattention


def patch_batch_heads(llm_module, top) -> None:
    """Two more nets in batch-N builds, so a decode step reads the embedding and lm_head
    weights once for all slots: `embedding_cache_batch` (ids `[N, 1]` -> states `[N, 1, H]`)
    and `lm_head_batch` (states `[N, H]` -> logits `[N, vocab]`, or token ids `[N, 1]` in
    builds without --do_sample), each the same computation as the batch-1 net per row.
    The batch-1 `embedding_cache` and `lm_head` stay (prefill's last row uses `lm_head`)."""
    conv = llm_module.LlmConverter
    gen_original = conv.gen_embedding_lmhead_mlir
    compile_original = conv.compile_lm_head

    def gen_embedding_lmhead_mlir(self):
        gen_original(self)
        if self.batch <= 1:
            return
        n, hidden, vocab = self.batch, self.hidden_size, self.vocab_size
        if not self.embedding_disk:
            embedding = self.model_info.weights[llm_module.LlmList.EMBEDING] + ".weight"
            mlir = llm_module.MLIRImporter(
                [[n, 1]],
                [[n, 1, hidden]],
                "embedding_cache_batch",
                self.platform,
                input_types=["INT32"],
                weight_file="../embedding_top_weights.npz",
            )
            ids = mlir.create_input_op(self.get_loc("input_ids", mlir), 0)
            weight = mlir.create_weight_op(embedding, [vocab, hidden])
            out = top.GatherOp(
                mlir.get_tensor_type([n, 1, hidden]),
                weight,
                ids,
                axis=0,
                loc=self.get_loc("embedding_cache_batch", mlir),
                ip=mlir.insert_point,
            ).output
            if self.scale_emb != 1.0:
                out = top.MulConstOp(
                    mlir.get_tensor_type([n, 1, hidden]),
                    out,
                    const_val=self.scale_emb,
                    loc=self.get_loc("embedding_cache_batch.scale", mlir),
                    ip=mlir.insert_point,
                ).output
            mlir.create_return_op([out])
            self.save_mlir_module(mlir, "embedding_cache_batch")
        lmhead = self.model_info.weights[llm_module.LlmList.LMHEAD]
        outs = [[n, 1]] if self.lmhead_with_topk else [[n, vocab]]
        mlir = llm_module.MLIRImporter(
            [[n, hidden]], outs, "lm_head_batch", self.platform, weight_file="../lm_head_top_weights.npz"
        )
        states = mlir.create_input_op(self.get_loc("hidden_states", mlir), 0)
        weight = mlir.create_weight_op(lmhead + ".weight", [vocab, hidden])
        # W[vocab, H] @ x[N, H]^T then transposed: the form llm_convert writes lm_head in.  The
        # other form, x @ W^T, differs from lm_head in the last bits (tried on the simulator),
        # and the batch decode must equal the batch-1 build's.
        logits = top.MatMulOp(
            mlir.get_tensor_type([vocab, n]),
            weight,
            states,
            mlir.none_op,
            do_relu=False,
            right_transpose=True,
            loc=self.get_loc(lmhead, mlir),
            ip=mlir.insert_point,
        ).output
        logits = top.PermuteOp(
            mlir.get_tensor_type([n, vocab]),
            logits,
            order=[1, 0],
            loc=self.get_loc(lmhead + ".permute", mlir),
            ip=mlir.insert_point,
        ).output
        if self.lmhead_with_topk:
            topk = top.TopKOp(
                *mlir.get_tensor_type([[n, 1], [n, 1]]),
                logits,
                axis=1,
                K=1,
                loc=self.get_loc(["token_value", "token_id"], mlir),
                ip=mlir.insert_point,
            )
            mlir.create_return_op([topk.indices])
        else:
            mlir.create_return_op([logits])
        self.save_mlir_module(mlir, "lm_head_batch")

    def compile_lm_head(self):
        compile_original(self)
        if self.batch <= 1:
            return
        if not self.embedding_disk:
            self.compile_common("embedding_cache_batch", with_size=False)
        if not self.register_bmodel("lm_head_batch", with_size=False):
            self.submit_deploy_task("lm_head_batch", [f"--quantize {self.half_precision_quantize}", "--quant_input"])

    conv.gen_embedding_lmhead_mlir = gen_embedding_lmhead_mlir
    conv.compile_lm_head = compile_lm_head


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


def _batch(argv: list[str]) -> int:
    for i, a in enumerate(argv):
        if a in ("-b", "--batch") and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--batch="):
            return int(a.split("=", 1)[1])
    return 1


def run_patched_llm_convert(argv: list[str]) -> None:
    sys.path.insert(0, str(HERE.parent))
    import lm_head_quant  # --lm_head w8/w4: our option, taken out before llm_convert parses

    speculative, argv = pop_speculative(argv)
    argv, lm_head, group = lm_head_quant.take_option(argv)
    kv_layout = "slots"
    if argv[:1] == ["--kv-layout"]:
        kv_layout, argv = argv[1], argv[2:]
    if kv_layout not in KV_LAYOUTS:
        raise SystemExit(f"--kv-layout must be one of {KV_LAYOUTS}")
    if lm_head != "bf16" and (speculative or _batch(argv) > 1):
        # its lm_head patch compiles the batch-1 head alone (not the batch or verify heads)
        raise SystemExit("--lm_head w8/w4 is for batch-1 builds without --speculative")
    patch_converter(kv_layout)
    if speculative:
        patch_speculative(speculative)
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


def build_tiny(batch: int, force: bool = False, kv_layout: str = "slots") -> Path:
    bm, tiny = _builders()
    root = tiny.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    ckpt = tiny.build_checkpoint()
    args = tiny_convert_args(batch)
    key = tiny.cache_key(ckpt, [*args, kv_layout, hashlib.sha256(HERE.read_bytes()).hexdigest()])
    variant = "" if kv_layout == "slots" else f"-{kv_layout}"
    final = root / f"tiny-bmodel-b{batch}{variant}-{key}"
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
                [str(venv / "bin" / "python"), str(HERE), "--convert", "--kv-layout", kv_layout, "-m", str(ckpt), *args]
                + ["-o", str(out)],
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
    ap.add_argument(
        "--kv-layout",
        choices=KV_LAYOUTS,
        default="slots",
        help="slots: per-slot history inputs, new rows written in place (default); concat: the first "
        "workaround (history sliced and concatenated every step, rows moved by the host)",
    )
    ap.add_argument("--info", action="store_true", help="also print `model_tool --info` of the result")
    args = ap.parse_args()
    folder = build_tiny(args.batch, args.force, args.kv_layout)
    if args.info:
        print(model_info(folder))
    print(folder)


if __name__ == "__main__":
    main()
