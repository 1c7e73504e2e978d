"""Reference engine: transformers' Qwen3-VL on CPU (or CUDA when present).

It is the oracle the bm1684x engine is tested against and lets anyone run the same API
on a laptop.  Positions come from our own `Prompt` (the same M-RoPE rows the TPU gets),
so both engines see identical inputs.

Speculative steps (`verify_batch`/`commit_slot`): a slot alone runs its fed tokens on its
own cache and `commit_slot` crops the rows not kept.  Several slots run as one left-padded
batch whose rows may be fed different numbers of tokens (a short row is padded at its
end); the columns a row did not keep are masked out for good (`_Merged.valid`), and the
batch is compacted when such holes make up most of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...model_constants import IMAGE_PAD, VIDEO_PAD
from ..base import Capabilities, Engine, Limits, Prompt, StepOutput, VisionInput
from ..reuse import CachedSequence, VisionCache, reusable_prefix, scoped_vision_key, vision_spans

log = logging.getLogger("qwen3vl.engine.torch")


@dataclass
class _SlotKV:
    """One slot's sequence: its own batch-1 KV cache (None while it lives in the merged
    batch) and the tokens that cache holds."""

    cache: Any
    held: CachedSequence
    next_pos: int  # M-RoPE position of the next token


@dataclass
class _Merged:
    """The KV of several slots as one left-padded batch cache, kept while the same slots
    decode together (rebuilt only when a slot joins or leaves)."""

    order: tuple[int, ...]  # slot of each batch row
    cache: Any
    valid: Any  # bool [rows, length]: the columns each row attends to (not padding or rejected drafts)
    length: int = 0  # columns in the cache (padding included)


class TorchEngine(Engine):
    name = "torch"
    max_batch = 64  # no hard limit on this engine; --max-batch is the real bound (KV memory)

    def __init__(
        self,
        model_dir: Path,
        dtype: str = "auto",
        threads: int | None = None,
        max_context: int = 0,
        vision_cache_mb: int = 0,
    ):
        import torch
        from transformers import Qwen3VLForConditionalGeneration

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        cuda = torch.cuda.is_available()
        self.device = "cuda" if cuda else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if cuda else "float32"
        self.dtype = getattr(torch, dtype)
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=self.dtype)
        self.model.to(self.device).eval()
        text = self.model.config.text_config
        max_ctx = max_context or min(int(text.max_position_embeddings), 32768)
        self.limits = Limits(max_context=max_ctx, max_input_tokens=max_ctx)
        self.capabilities = Capabilities(logits=True, prefix_cache=True, verify=True)
        self.vision_cache = VisionCache(vision_cache_mb << 20)
        self._slots: dict[int, _SlotKV] = {}  # each slot's sequence
        self._merged: _Merged | None = None
        self._pending: dict[int, tuple[list[int], int]] = {}  # verify: slot -> (fed tokens, first column)

    def _run_prompt(self, prompt: Prompt, held: CachedSequence | None, cache):
        """Prefill `prompt` on top of `cache` (holding `held`), keeping the shared prefix.
        Returns the model output, what its cache now holds and the reused token count."""
        torch = self.torch
        spans = vision_spans(prompt.input_ids, prompt.vision)
        reuse = reusable_prefix(held, prompt, spans)
        if reuse and cache is not None and held is not None:
            extra = len(held.ids) - reuse
            if extra:
                cache.crop(-extra)  # drop the KV past the shared prefix
        else:
            reuse, cache = 0, None
        n = len(prompt.input_ids)
        ids = torch.tensor([prompt.input_ids[reuse:]], dtype=torch.long, device=self.device)
        rope = torch.as_tensor(prompt.position_ids[:, reuse:], dtype=torch.long, device=self.device).view(3, 1, -1)
        text_pos = torch.arange(reuse, n, device=self.device).view(1, 1, -1)
        kwargs = {}
        todo = [(item, span) for item, span in zip(prompt.vision, spans, strict=True) if span.start >= reuse]
        if todo:
            kwargs["mm_encoder_outputs"] = self._encode([item for item, _ in todo], prompt.cache_scope)
            kwargs["mm_token_type_ids"] = (ids == IMAGE_PAD).int() + 2 * (ids == VIDEO_PAD).int()
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                position_ids=torch.cat([text_pos, rope], 0),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        return out, CachedSequence(list(prompt.input_ids), spans, prompt.cache_scope), reuse

    # -- slots: several sequences, one decode forward ------------------------------------

    def prefill_slot(self, slot: int, prompt: Prompt) -> StepOutput:
        """Prefill into `slot`, reusing the prefix its cache still holds (a finished
        sequence's KV stays in its slot until the slot is reused)."""
        if self._merged is not None and slot in self._merged.order:
            self._split()
        kv = self._slots.pop(slot, None)  # gone until this prefill succeeds
        out, held, reuse = self._run_prompt(prompt, kv.held if kv else None, kv.cache if kv else None)
        self._slots[slot] = _SlotKV(out.cache, held, prompt.next_position)
        return StepOutput(logits=self._last(out), cached_tokens=reuse)

    def decode_batch(self, tokens: dict[int, int]) -> dict[int, StepOutput]:
        """One forward over the given slots.  Their caches are left-padded to a common length
        and masked; each row gets its own M-RoPE position, so a row computes what it would
        alone (up to float summation order)."""
        torch = self.torch
        order = tuple(sorted(tokens))
        if len(order) == 1:  # one sequence (never merged: a batch of one needs no padding)
            self._split()
            return {order[0]: self._decode_one(order[0], tokens[order[0]])}
        if self._merged is None or self._merged.order != order:
            self._split()
            self._merge(order)
        m = self._merged
        assert m is not None
        b = len(order)
        ids = torch.tensor([[tokens[s]] for s in order], dtype=torch.long, device=self.device)
        pos = torch.empty((4, b, 1), dtype=torch.long, device=self.device)
        pos[0] = m.length  # the physical cache column: the same for every row
        pos[1:] = torch.tensor([self._slots[s].next_pos for s in order], device=self.device).view(1, b, 1)
        mask = torch.cat([m.valid, torch.ones((b, 1), dtype=torch.bool, device=self.device)], 1).long()
        try:
            with torch.inference_mode():
                out = self.model.model(
                    input_ids=ids, position_ids=pos, attention_mask=mask, cache=m.cache, use_cache=True
                )
                logits = self._batch_logits(out[0][:, -1])
        except Exception:
            self._merged = None  # updated in place, half-written: these slots hold nothing usable
            for s in order:
                self._slots.pop(s, None)
            raise
        m.cache = out.cache
        m.length += 1
        m.valid = mask.bool()
        result = {}
        for row, s in enumerate(order):
            kv = self._slots[s]
            kv.held.ids.append(tokens[s])
            kv.next_pos += 1
            result[s] = StepOutput(logits=logits[row])
        return result

    def _decode_one(self, slot: int, token_id: int) -> StepOutput:
        """A batch of one on the slot's own cache: no merged copy, no padding mask."""
        torch = self.torch
        kv = self._slots.pop(slot)  # updated in place: unusable if this fails
        ids = torch.tensor([[token_id]], dtype=torch.long, device=self.device)
        pos = torch.tensor([len(kv.held.ids)] + [kv.next_pos] * 3, device=self.device).view(4, 1, 1)
        with torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=pos, cache=kv.cache, use_cache=True)
        kv.cache = out.cache
        kv.held.ids.append(token_id)
        kv.next_pos += 1
        self._slots[slot] = kv
        return StepOutput(logits=self._last(out))

    def release_slot(self, slot: int) -> None:
        if self._merged is not None and slot in self._merged.order:
            self._split()
        self._slots.pop(slot, None)
        self._pending.pop(slot, None)

    # -- speculative steps: several tokens per slot, the rejected ones dropped -------------

    def verify_batch(self, tokens: dict[int, list[int]]) -> dict[int, list[StepOutput]]:
        """One forward feeding each slot its tokens at its next positions; the logits after
        each.  Every slot must then be committed (`commit_slot`)."""
        order = tuple(sorted(tokens))
        if len(order) == 1:
            self._split()
            s = order[0]
            return {s: self._verify_one(s, list(tokens[s]))}
        return self._verify_merged(order, tokens)

    def _verify_one(self, slot: int, fed: list[int]) -> list[StepOutput]:
        torch = self.torch
        kv = self._slots.pop(slot)  # updated in place: unusable if this fails
        n, start = len(fed), len(kv.held.ids)
        ids = torch.tensor([fed], dtype=torch.long, device=self.device)
        steps = torch.arange(n, device=self.device)
        pos = torch.stack([start + steps] + [kv.next_pos + steps] * 3).view(4, 1, n)
        with torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=pos, cache=kv.cache, use_cache=True)
        kv.cache = out.cache
        self._slots[slot] = kv
        self._pending[slot] = (fed, start)
        logits = out.logits[0].float().cpu().numpy()
        return [StepOutput(logits=row) for row in logits]

    def _verify_merged(self, order: tuple[int, ...], tokens: dict[int, list[int]]) -> dict[int, list[StepOutput]]:
        torch = self.torch
        m = self._merged
        if m is not None and (m.order != order or m.length > 2 * int(m.valid.sum(1).max()) + 64):
            self._split()  # other slots, or mostly holes: rebuild
            m = None
        if m is None:
            self._merge(order)
            m = self._merged
        assert m is not None
        b, n = len(order), max(len(tokens[s]) for s in order)
        fed = [list(tokens[s]) for s in order]
        ids = torch.tensor([f + [f[-1]] * (n - len(f)) for f in fed], dtype=torch.long, device=self.device)
        steps = torch.arange(n, device=self.device).view(1, n)
        pos = torch.empty((4, b, n), dtype=torch.long, device=self.device)
        pos[0] = m.length + steps  # physical cache columns: the same for every row
        pos[1:] = torch.tensor([self._slots[s].next_pos for s in order], device=self.device).view(1, b, 1) + steps
        mask = torch.cat([m.valid, torch.ones((b, n), dtype=torch.bool, device=self.device)], 1)
        try:
            with torch.inference_mode():
                out = self.model.model(
                    input_ids=ids, position_ids=pos, attention_mask=mask.long(), cache=m.cache, use_cache=True
                )
                hidden = out[0]
                logits = self._batch_logits(hidden.reshape(b * n, -1)).reshape(b, n, -1)
        except Exception:
            self._merged = None
            for s in order:
                self._slots.pop(s, None)
            raise
        start = m.length
        m.cache, m.valid, m.length = out.cache, mask, m.length + n
        result = {}
        for row, s in enumerate(order):
            self._pending[s] = (fed[row], start)
            result[s] = [StepOutput(logits=logits[row, i]) for i in range(len(fed[row]))]
        return result

    def commit_slot(self, slot: int, keep: int) -> None:
        """Keep the first `keep` tokens of the slot's last verify step; the rest of its rows
        are dropped (cropped from its own cache, masked out of a merged one)."""
        fed, start = self._pending.pop(slot)
        keep = max(1, min(keep, len(fed)))
        kv = self._slots[slot]
        m = self._merged
        if m is not None and slot in m.order:
            row = m.order.index(slot)
            m.valid[row, start + keep :] = False
        elif keep < len(fed):
            kv.cache.crop(keep - len(fed))  # (transformers crops from the end)
        kv.held.ids.extend(fed[:keep])
        kv.next_pos += keep

    def _batch_logits(self, hidden) -> np.ndarray:
        """lm_head over [batch, hidden] as weight @ hidden^T: with a vocabulary of 152k rows
        this orientation is the fast one for a few rows (measured ~2x over `linear` at
        batch 4 on CPU); the values agree with `linear` to float rounding."""
        head = self.model.lm_head
        logits = (head.weight @ hidden.T).T
        if head.bias is not None:
            logits = logits + head.bias
        return logits.float().cpu().numpy()

    def _merge(self, order: tuple[int, ...]) -> None:
        torch = self.torch
        kvs = [self._slots[s] for s in order]
        lengths = [len(kv.held.ids) for kv in kvs]
        length = max(lengths)
        layers = []
        for i in range(len(kvs[0].cache.layers)):
            first = kvs[0].cache.layers[i].keys
            shape = (len(kvs), first.shape[1], length, first.shape[3])
            keys = torch.zeros(shape, dtype=first.dtype, device=first.device)
            values = torch.zeros_like(keys)
            for row, (kv, n) in enumerate(zip(kvs, lengths, strict=True)):
                layer = kv.cache.layers[i]
                keys[row, :, length - n :] = layer.keys[0]
                values[row, :, length - n :] = layer.values[0]
            layers.append((keys, values))
        from transformers import DynamicCache

        valid = torch.ones((len(kvs), length), dtype=torch.bool, device=self.device)
        for row, n in enumerate(lengths):
            valid[row, : length - n] = False
        self._merged = _Merged(order, DynamicCache(layers), valid, length)
        for kv in kvs:
            kv.cache = None  # the merged cache holds it now

    def _split(self) -> None:
        """Give every slot of the merged batch its own cache back (padding and rejected
        draft rows dropped)."""
        from transformers import DynamicCache

        m, self._merged = self._merged, None
        if m is None:
            return
        for row, s in enumerate(m.order):
            cols = m.valid[row].nonzero().view(-1)
            self._slots[s].cache = DynamicCache(
                [
                    (
                        layer.keys[row : row + 1].index_select(2, cols).clone(),
                        layer.values[row : row + 1].index_select(2, cols).clone(),
                    )
                    for layer in m.cache.layers
                ]
            )

    def close(self) -> None:
        self._slots.clear()
        self._pending.clear()
        self._merged = None
        self.model = None

    def _encode(self, items: list[VisionInput], scope: bytes) -> dict:
        """Encoder outputs for `items` in transformers' `mm_encoder_outputs` form (per kind:
        per-item embeddings and per-layer deepstack features), each item from the vision
        cache when it was seen before."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        per_kind: dict[str, tuple[list, list[list]]] = {}
        for item in items:
            key = scoped_vision_key(item, scope)
            hit = self.vision_cache.get(key)
            if hit is None:
                hit = self._run_encoder(item)
                self.vision_cache.put(key, hit, sum(t.numel() * t.element_size() for t in (hit[0], *hit[1])))
            embeds, deepstack = per_kind.setdefault(item.kind, ([], [[] for _ in hit[1]]))
            embeds.append(hit[0])
            for layer, feat in zip(deepstack, hit[1], strict=True):
                layer.append(feat)
        out = {}
        for kind, (embeds, deepstack) in per_kind.items():
            out[kind] = BaseModelOutputWithDeepstackFeatures(
                pooler_output=tuple(embeds), deepstack_features=[tuple(layer) for layer in deepstack]
            )
        return out

    def _run_encoder(self, item: VisionInput):
        torch = self.torch
        pixels = torch.from_numpy(np.ascontiguousarray(item.pixel_values)).to(self.device, self.dtype)
        grid = torch.tensor([item.grid_thw], device=self.device)
        with torch.inference_mode():
            enc = self.model.model.get_image_features(pixels, grid, return_dict=True)
        return enc.pooler_output[0], [feat[0] for feat in enc.deepstack_features]

    def _last(self, out) -> np.ndarray:
        return out.logits[0, -1].float().cpu().numpy()
