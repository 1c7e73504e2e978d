"""BM1684X engine: a vendor-compiled Qwen3-VL `*.bmodel` run by our native module.

A model folder is one `*.bmodel` plus `config/` (tokenizer, processor and model config
json files).  Every shape limit comes from the bmodel itself (`qwen3vl_native` reads
SEQLEN, MAX_INPUT_LENGTH, hidden size and the vision encoder's patch count from the
networks' tensor shapes).  The vision encoder's position inputs are computed on the host
(`vit_inputs`, numpy only): this path never imports torch.

Bmodels compiled with `--use_history_kv` prefill in chunks on top of the rows the KV
cache already holds: a prompt may fill the whole context, and a follow-up turn whose
leading tokens (images included) match what the cache holds computes only the rest.

Bmodels compiled with `--speculative K` (scripts/llm_convert_patched.py) also carry verify
nets: one step checks the next token and up to K draft tokens (`verify_batch` /
`commit_slot`, single-sequence builds; docs/speculative.md).

Bmodels compiled with `--do_sample` carry sampling heads over the logits (`greedy_head`,
`sample_head`).  With `--device-sampling` on (the default on a box), a request they serve
exactly (`sampling.device_plan`: greedy, or top-k within the head's 50 with at most a
repetition penalty) ends each step on the device: the host reads a few candidates instead
of the whole vocabulary's logits and draws among them (docs/sampling-on-device.md).

The module is built by `make native` (sim mode links the BM1684X cmodel simulator from
the tpu-mlir wheel; box mode links libsophon on the SE7).  Calls into it release the
GIL; one engine (one device handle) is driven by one thread.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...model_constants import IMAGE_PAD, VIDEO_PAD
from ..base import Capabilities, Engine, Limits, Prompt, StepOutput
from ..reuse import CachedSequence, VisionCache, VisionSpan, reusable_prefix, scoped_vision_key, vision_spans
from ..sampling import DevicePlan
from . import memory
from .vit_inputs import VitCall, vit_calls

log = logging.getLogger("qwen3vl.engine.bm1684x")

PATCH_PIXELS = 16 * 16


@dataclass
class CachedVitCall:
    """A vit call whose output rows are known (the vision cache): the runtime places
    `cached` (uint16 [outputs * tokens * hidden]) without launching the vit."""

    tokens: int
    cached: np.ndarray


def _after(prompt: Prompt, spans: list[VisionSpan], keep: int) -> Prompt:
    """The prompt past its first `keep` tokens (positions stay absolute), with the media
    whose blocks lie there (`keep` never cuts a block: see `reusable_prefix`)."""
    if not keep:
        return prompt
    vision = [v for v, span in zip(prompt.vision, spans, strict=True) if span.start >= keep]
    return Prompt(list(prompt.input_ids[keep:]), np.asarray(prompt.position_ids)[:, keep:], vision)


class UnsupportedBmodel(RuntimeError):
    """The bmodel's layout is not one this engine runs (the message says what was found
    and what is supported); raised at load, so the worker reports it on /health."""


def load_native():
    try:
        from . import qwen3vl_native  # type: ignore[attr-defined]  # built by `make native`
    except ImportError as e:  # pragma: no cover - depends on the build
        raise RuntimeError(
            "the native BM1684X module is not built (qwen3vl_app/engine/bm1684x/qwen3vl_native*.so): "
            f"run `make native` (sim) or `make native BM_MODE=box` on the SE7 ({e})"
        ) from e
    return qwen3vl_native


def check_single_device(bmodel: Path) -> None:
    """llm_convert names multi-device builds `..._<N>dev_...`: their networks are split
    over N chips and talk to each other, which one Runtime over one device cannot run."""
    m = re.search(r"_(\d+)dev(?:_|\.|$)", bmodel.name)
    if m and int(m.group(1)) > 1:
        raise UnsupportedBmodel(
            f"unsupported bmodel {bmodel}: a {m.group(1)}-device build (its name says {m.group(0).strip('_.')}); "
            "supported: single-device builds (llm_convert --num_device 1, named ..._1dev_...)"
        )


def _heaps(native, devid: int) -> list[dict]:
    """The device's memory heaps, or [] when the driver does not say (the simulator)."""
    try:
        return list(native.device_heaps(int(devid)))
    except (AttributeError, RuntimeError):
        return []


def find_bmodel(model_dir: Path) -> Path:
    found = sorted(Path(model_dir).glob("*.bmodel"))
    if not found:
        raise FileNotFoundError(f"no *.bmodel in {model_dir}")
    if len(found) > 1:
        log.warning("several bmodels in %s; using %s", model_dir, found[0].name)
    return found[0]


class BM1684XEngine(Engine):
    name = "bm1684x"

    def __init__(self, model_dir: Path | str, devid: int = 0, vision_cache_mb: int = 0, device_sampling: str = "auto"):
        self.model_dir = Path(model_dir)
        self.bmodel = find_bmodel(self.model_dir)
        native = load_native()
        cfg = self._read_config()
        vcfg = cfg.get("vision_config", {})
        self.merge = int(vcfg.get("spatial_merge_size", 2))
        self.num_grid_per_side = int(round(int(vcfg.get("num_position_embeddings", 2304)) ** 0.5))
        self.image_token = int(cfg.get("image_token_id", IMAGE_PAD))
        self.video_token = int(cfg.get("video_token_id", VIDEO_PAD))
        check_single_device(self.bmodel)
        memory.check_fits(self.bmodel, int(devid), _heaps(native, devid))
        try:
            self.rt = native.Runtime(str(self.bmodel), int(devid))
        except RuntimeError as e:
            if str(e).startswith("unsupported bmodel"):
                raise UnsupportedBmodel(str(e)) from None
            short = memory.explain_load_failure(self.bmodel, int(devid), str(e), _heaps(native, devid))
            if short:
                raise memory.DeviceMemoryError(short) from e
            raise
        rt = self.rt
        self.device = f"bm1684x:{devid}" + (" (cmodel)" if native.build_mode == "sim" else "")
        # a batch-N build (llm_convert -b N) runs N slots per decode step; the runtime says
        # how many tokens a slot holds (SEQLEN, or SEQLEN-1 in first-workaround builds whose
        # decode nets put each new K/V row at the history's last row)
        self.max_batch = int(rt.batch)
        self.history_kv = bool(rt.history_kv)
        self.limits = Limits(
            max_context=int(rt.max_context),
            # history-KV builds run the prompt in chunks: it may fill the context
            max_input_tokens=rt.seq_len if self.history_kv else rt.max_input_length,
            max_pixels=rt.vit_patches * PATCH_PIXELS if rt.vit_patches else None,
        )
        # `--speculative K` builds carry verify nets taking K + 1 tokens (docs/speculative.md)
        self.verify_rows = int(getattr(rt, "verify_rows", 0)) if self.max_batch == 1 else 0
        if self.verify_rows:
            self.max_draft = self.verify_rows - 1
        self.device_sampling = self._device_sampling(device_sampling, native.build_mode)
        self.capabilities = Capabilities(
            logits=bool(rt.lm_head_logits),
            prefix_cache=self.history_kv,
            verify=self.verify_rows > 0,
            device_candidates=int(rt.sample_candidates) if self.device_sampling else 0,
        )
        self._verified = 0  # tokens fed by the verify step awaiting its commit
        self._plans: dict[int, DevicePlan | None] = {}  # each slot's device plan (plan_slot)
        self._head: tuple | None = None  # the head the runtime runs now (set_head's arguments)
        self._held: CachedSequence | None = None  # history-KV builds: tokens whose K/V the cache holds
        self._slot_pos: dict[int, int] = {}  # each prefilled slot's next position
        # vit output rows per media item, kept on the host (bf16: 2 bytes per value)
        self.vision_cache = VisionCache(vision_cache_mb << 20)
        log.info(
            "loaded %s on %s: batch %d, SEQLEN %d, %s %d, hidden %d, %d layers, vit %d patches, lm_head %s",
            self.bmodel.name,
            self.device,
            self.max_batch,
            rt.seq_len,
            "history-KV chunks of" if self.history_kv else "max input",
            rt.max_input_length,
            rt.hidden_size,
            rt.num_layers,
            rt.vit_patches,
            "logits" if rt.lm_head_logits else "token id",
        )
        self._log_stage_inputs()
        if rt.has_sample_head:
            log.info(
                "device sampling heads (greedy_head, sample_head: top %d): %s",
                rt.sample_candidates,
                "used for requests they serve exactly" if self.device_sampling else f"off ({device_sampling})",
            )

    def _log_stage_inputs(self) -> None:
        """Where each block_cache stage reads its inputs (read at load).  The vendor runtime
        gives each stage its own I/O memory unless the build shares it; a stage handed the
        KV cache anywhere else than its own history buffers has it copied there first."""
        rt = self.rt
        for si in rt.stage_inputs:
            log.debug(
                "%s stage %d (KV %d rows): inputs at %s, %s bytes",
                si["net"],
                si["stage"],
                si["kv_len"],
                " ".join(hex(a) for a in si["addr"]),
                si["bytes"],
            )
        first = [si for si in rt.stage_inputs if si["net"] == "block_cache_0"]
        where = ", ".join(f"{si['kv_len']} rows: K {si['addr'][3]:#x} V {si['addr'][4]:#x}" for si in first)
        if rt.kv_stages_shared:
            log.info("block_cache stages share their history K/V buffers (layer 0: %s)", where)
        else:
            log.warning(
                "block_cache stages read history K/V at different addresses (layer 0: %s): a stage smaller than "
                "SEQLEN gets the cache copied into its own buffers at each launch",
                where,
            )

    def _device_sampling(self, setting: str, build_mode: str) -> bool:
        """Whether requests may use the device heads: `auto` is on on a box and off on the
        cmodel simulator, where each sort-based head takes minutes per call."""
        if setting not in ("auto", "on", "off"):
            raise ValueError(f"device_sampling must be auto, on or off, not {setting!r}")
        rt = self.rt
        usable = bool(rt.has_greedy_head and rt.has_sample_head) and self.max_batch == 1
        if setting == "on" and not usable:
            log.warning("--device-sampling on: this bmodel has no device sampling heads usable here; host sampling")
        return usable and (setting == "on" or (setting == "auto" and build_mode != "sim"))

    def _read_config(self) -> dict:
        for path in (self.model_dir / "config" / "config.json", self.model_dir / "config.json"):
            if path.exists():
                return json.loads(path.read_text())
        return {}

    # ---- Engine ----
    # Single-stage builds hold one sequence (slot 0); batch-N builds hold N, one per slot.

    def prefill_slot(self, slot: int, prompt: Prompt) -> StepOutput:
        self._check_slot(slot)
        if self.max_batch > 1:
            self._slot_pos.pop(slot, None)
            args, misses = self._prefill_args(prompt)
            out = self.rt.prefill_slot(int(slot), *args)
            self._remember_vision(args[3], misses)
            self._slot_pos[slot] = prompt.next_position
            return self._step(out)
        return self._prefill_single(prompt)

    def decode_batch(self, tokens: dict[int, int]) -> dict[int, StepOutput]:
        slots = sorted(tokens)
        for s in slots:
            self._check_slot(s)
        missing = [s for s in slots if s not in self._slot_pos]
        if missing:
            raise RuntimeError(f"decode of slot(s) {missing} before their prefill")
        if self.max_batch > 1:
            outs = self.rt.decode_batch(slots, [int(tokens[s]) for s in slots], [self._slot_pos[s] for s in slots])
        else:
            outs = [self._decode_single(int(tokens[0]))]
        for s in slots:
            self._slot_pos[s] += 1
        return {s: self._step(o) for s, o in zip(slots, outs, strict=True)}

    def verify_batch(self, tokens: dict[int, list[int]]) -> dict[int, list[StepOutput]]:
        """One verify step (slot 0 of a `--speculative K` build): its tokens, at most K + 1,
        at its next positions; the logits after each.  `commit_slot` must follow."""
        if not self.verify_rows:
            raise NotImplementedError("this bmodel has no verify nets (build it with --speculative K)")
        if set(tokens) != {0}:
            raise ValueError(f"verify of slot(s) {sorted(tokens)}: this bmodel verifies one sequence (slot 0)")
        if 0 not in self._slot_pos:
            raise RuntimeError("verify of slot 0 before its prefill")
        fed = [int(t) for t in tokens[0]]
        if not 1 <= len(fed) <= self.verify_rows:
            raise ValueError(f"a verify step takes 1-{self.verify_rows} tokens, not {len(fed)}")
        self._verified = 0
        outs = self.rt.verify(fed, int(self._slot_pos[0]))
        self._verified = len(fed)
        return {0: [self._step(o) for o in outs]}

    def commit_slot(self, slot: int, keep: int) -> None:
        """Keep the first `keep` tokens of slot 0's last verify step; the K/V rows of the
        rest stay masked out and are overwritten."""
        if slot != 0 or not self._verified:
            raise RuntimeError(f"commit of slot {slot} without a verify step")
        keep = max(1, min(int(keep), self._verified))
        self._verified = 0
        self.rt.commit_verify(keep)
        self._slot_pos[0] += keep

    def release_slot(self, slot: int) -> None:
        self._slot_pos.pop(slot, None)
        self._verified = 0
        if self.max_batch == 1:
            self._held = None

    def plan_slot(self, slot: int, plan: DevicePlan | None) -> None:
        self._check_slot(slot)
        if plan is not None and not self.capabilities.device_candidates:
            raise ValueError("this engine runs no device sampling heads")
        self._plans[slot] = plan

    def _set_head(self, plan: DevicePlan | None, history: list[int]) -> None:
        """Before a prefill: the runtime ends the sequence's steps as the slot's plan says."""
        if plan is None:
            head: tuple = ("logits",)
        elif plan.greedy and plan.repetition_penalty == 1.0:
            head = ("greedy",)
        else:  # greedy with a penalty: sample_head's top-1
            head = ("sample", plan.repetition_penalty, 1.0 if plan.greedy else plan.temperature, plan.top_k)
        if head == self._head and (head[0] != "sample" or head[1] == 1.0):
            return  # already set; the ids matter only to a penalty
        self._head = None
        if head[0] == "sample":
            self.rt.set_head("sample", np.asarray(history, dtype=np.int32), *head[1:])
        else:
            self.rt.set_head(head[0])
        self._head = head

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.max_batch:
            raise ValueError(f"slot {slot} out of range: this bmodel runs {self.max_batch} sequence(s)")

    def _prefill_single(self, prompt: Prompt) -> StepOutput:
        """Run the prompt; on a history-KV build only the part after the leading tokens the
        cache still holds (the previous turn of a chat)."""
        spans = vision_spans(prompt.input_ids, prompt.vision) if self.history_kv else []
        keep = reusable_prefix(self._held, prompt, spans) if self.history_kv else 0
        self._held = None  # until this prefill succeeds
        self._slot_pos.pop(0, None)
        if self.capabilities.device_candidates:
            self._set_head(self._plans.get(0), prompt.input_ids)
        args, misses = self._prefill_args(_after(prompt, spans, keep))
        out = self.rt.prefill(*args, keep=keep)
        self._remember_vision(args[3], misses)
        if self.history_kv:
            self._held = CachedSequence(list(prompt.input_ids), spans, prompt.cache_scope)
        self._slot_pos[0] = prompt.next_position
        return self._step(out, cached_tokens=keep)

    def _decode_single(self, token_id: int):
        held, self._held = self._held, None  # the cache changes in place: unusable if this fails
        out = self.rt.decode(token_id, int(self._slot_pos[0]))
        if held is not None:
            held.ids.append(token_id)
            self._held = held
        return out

    def close(self) -> None:
        rt = getattr(self, "rt", None)
        if rt is not None:
            rt.close()

    def timings(self) -> dict:
        """Per network: (calls, total ms) since load."""
        return self.rt.timings()

    def device_counters(self) -> dict:
        """Since load: device launches, device-to-device copies, host<->device copies and
        bytes, memsets and host waits.  Differences around a step give its cost."""
        return self.rt.counters()

    # ---- helpers ----

    def _step(self, out, cached_tokens: int = 0) -> StepOutput:
        if isinstance(out, int):
            return StepOutput(token_id=out, cached_tokens=cached_tokens)
        if isinstance(out, tuple):
            probs, ids = out
            if ids.size and np.isfinite(probs).all() and probs.sum() > 0:
                return StepOutput(candidates=(probs, ids), cached_tokens=cached_tokens)
            # the head overflowed (extreme settings): the logits are still on the device
            log.warning("device sampling head gave no usable candidates; sampling this token on the host")
            return StepOutput(logits=self.rt.last_logits(), cached_tokens=cached_tokens)
        return StepOutput(logits=out, cached_tokens=cached_tokens)

    def _prefill_args(self, prompt: Prompt):
        ids = np.asarray(prompt.input_ids, dtype=np.int32)
        pos = np.ascontiguousarray(np.asarray(prompt.position_ids), dtype=np.int32)
        if pos.shape != (3, len(ids)):
            raise ValueError(f"position_ids must be [3, {len(ids)}], got {pos.shape}")
        vis_pos, calls, misses = self._vision_calls(ids, prompt) if prompt.vision else (None, [], [])
        return (ids, pos, vis_pos, calls), misses

    def _remember_vision(self, calls: list, misses: list[tuple[bytes, int, int]]) -> None:
        """Keep the output rows of the vit calls of media the cache did not have."""
        if not misses:
            return
        rows = self.rt.last_vit_rows
        for key, first, n in misses:
            kept = [(calls[i].tokens, rows[i]) for i in range(first, first + n)]
            if all(r is not None for _, r in kept):
                self.vision_cache.put(key, kept, sum(r.nbytes for _, r in kept))

    def _vision_calls(self, ids: np.ndarray, prompt: Prompt):
        """Prompt rows of the vision tokens, the vit calls whose outputs fill them (in
        order; media seen before come from the vision cache and skip the vit), and for the
        others (cache key, index of the first call, number of calls)."""
        rt = self.rt
        if not rt.vit_patches:
            raise ValueError("this bmodel has no vision encoder")
        slots = np.flatnonzero((ids == self.image_token) | (ids == self.video_token)).astype(np.int32)
        need = sum(v.num_tokens for v in prompt.vision)
        if need != len(slots):
            raise ValueError(f"the prompt has {len(slots)} vision placeholders but the media need {need}")
        calls: list[VitCall | CachedVitCall] = []
        misses: list[tuple[bytes, int, int]] = []
        for v in prompt.vision:
            key = scoped_vision_key(v, prompt.cache_scope) if self.vision_cache.max_bytes else b""
            hit = self.vision_cache.get(key) if key else None
            if hit is not None:
                calls += [CachedVitCall(tokens=tokens, cached=rows) for tokens, rows in hit]
                continue
            item = vit_calls(
                np.asarray(v.pixel_values, dtype=np.float32),
                v.grid_thw,
                rt.vit_patches,
                self.num_grid_per_side,
                self.merge,
                dynamic=rt.vit_dynamic,
                with_mask=rt.vit_inputs >= 5,
            )
            if key:
                for c in item:
                    c.capture = True
                misses.append((key, len(calls), len(item)))
            calls += item
        return slots, calls, misses
