"""A lighter `lm_head` for llm_convert builds: weight-only int8 (`w8`) or int4 (`w4`).

tpu-mlir 1.30.2's `llm_convert` compiles `lm_head` in the half-precision type
(`--quantize bf16` even for w4bf16 builds) and, when the checkpoint ties it to the
embedding (Qwen3-VL 2B/4B do), shares one [vocab, hidden] table between the two nets.
Decode reads the whole table every token (0.78 GB for the 4B), a quarter of the step.

This module, used by scripts/llm_convert_patched.py inside the tpu-mlir venv, changes two
things when a build asks for `--lm_head w8` or `--lm_head w4`:

1. the lm_head matmul is emitted as `x [rows, hidden] @ W^T` (weight on the right, as
   every other linear layer), which is the form model_deploy's weight-only quantisation
   applies to (with the weight on the left, as llm_convert writes it, it stays bf16);
2. `lm_head` is deployed with `--quantize w8<half>` / `w4<half> --q_group_size G` and
   counted as a net with its own weights (untied: the embedding keeps its bf16 table).

The embedding still gathers one bf16 row per token, so untying costs device memory (the
quantised table next to the bf16 one) but not bandwidth.  Activations stay bf16; the
logits change by the weights' quantisation error only (tests/native/test_lm_head_quant.py
measures how often greedy tokens still agree with the bf16 head).
"""

from __future__ import annotations

CHOICES = ("bf16", "w8", "w4")
DEFAULT_GROUP = 64  # int4 groups along hidden (the published w4bf16 blocks use 64)


def take_option(argv: list[str]) -> tuple[list[str], str, int]:
    """Remove `--lm_head {bf16,w8,w4}` and `--lm_head_group N` (ours, not llm_convert's) from
    argv; returns the rest, the choice and the int4 group size."""
    rest, choice, group = [], "bf16", DEFAULT_GROUP
    it = iter(argv)
    for a in it:
        if a == "--lm_head":
            choice = next(it, "")
        elif a.startswith("--lm_head="):
            choice = a.split("=", 1)[1]
        elif a == "--lm_head_group":
            group = int(next(it, "0"))
        else:
            rest.append(a)
    if choice not in CHOICES:
        raise SystemExit(f"--lm_head must be one of {', '.join(CHOICES)} (got {choice!r})")
    if group <= 0:
        raise SystemExit("--lm_head_group must be a positive integer")
    return rest, choice, group


def patch(llm_module, top, choice: str, group: int) -> None:
    """Patch `llm.LlmConverter` (module) so lm_head is built and deployed as `choice`."""
    if choice == "bf16":
        return
    conv = llm_module.LlmConverter
    original_gen = conv.gen_embedding_lmhead_mlir
    active: list = []  # the converter while its embedding/lm_head MLIR is generated

    real_matmul = top.MatMulOp

    def matmul(result_type, lhs, rhs, bias, *args, **kwargs):
        self = active[0] if active else None
        lhs_shape = list(getattr(lhs.type, "shape", []))
        if (
            self is not None
            and kwargs.get("right_transpose")
            and not kwargs.get("is_lora")
            and lhs_shape == [self.vocab_size, self.hidden_size]
        ):
            rows = list(rhs.type.shape)[0]
            mlir = self._lm_head_mlir
            # x [rows, hidden] @ W[vocab, hidden]^T -> [rows, vocab]: weight on the right
            return real_matmul(mlir.get_tensor_type([rows, self.vocab_size]), rhs, lhs, bias, *args, **kwargs)
        return real_matmul(result_type, lhs, rhs, bias, *args, **kwargs)

    real_importer = llm_module.MLIRImporter

    class Importer(real_importer):  # type: ignore[misc,valid-type]
        def __init__(self, input_shapes, output_shapes, model_name, *a, **kw):
            super().__init__(input_shapes, output_shapes, model_name, *a, **kw)
            if active and model_name == "lm_head":
                active[0]._lm_head_mlir = self

    def gen_embedding_lmhead_mlir(self):
        active[:] = [self]
        saved_importer, saved_matmul = llm_module.MLIRImporter, top.MatMulOp
        llm_module.MLIRImporter, top.MatMulOp = Importer, matmul
        try:
            return original_gen(self)
        finally:
            llm_module.MLIRImporter, top.MatMulOp = saved_importer, saved_matmul
            active.clear()

    def compile_lm_head(self):
        name = "lm_head"
        if self.register_bmodel(name, with_size=True):  # its own (quantised) table: untied
            return
        half = self.half_precision_quantize  # bf16 or f16
        args = [f"--quantize w{8 if choice == 'w8' else 4}{half}", "--quant_input"]
        if choice == "w4":
            args.append(f"--q_group_size {group}")
        self.submit_deploy_task(name, args)

    conv.gen_embedding_lmhead_mlir = gen_embedding_lmhead_mlir
    conv.compile_lm_head = compile_lm_head
