"""Reference engine: transformers' Qwen3-VL on CPU (or CUDA when present).

It is the oracle the bm1684x engine is tested against and lets anyone run the same API
on a laptop.  Positions come from our own `Prompt` (the same M-RoPE rows the TPU gets),
so both engines see identical inputs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..model_constants import IMAGE_PAD, VIDEO_PAD
from .base import Capabilities, Engine, Limits, Prompt, StepOutput, VisionInput
from .reuse import CachedSequence, VisionCache, reusable_prefix, vision_key, vision_spans

log = logging.getLogger("qwen3vl.engine.torch")


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model_dir: Path, dtype: str = "auto", threads: int | None = None, max_context: int = 0,
                 vision_cache_mb: int = 0):
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
        self.capabilities = Capabilities(logits=True, prefix_cache=True)
        self.vision_cache = VisionCache(vision_cache_mb << 20)
        self._cache = None
        self._held: CachedSequence | None = None  # tokens whose KV self._cache holds
        self._next_pos = 0  # M-RoPE position of the next token

    def prefill(self, prompt: Prompt) -> StepOutput:
        """Run the prompt, reusing the KV of its leading tokens when the last generation
        left them in the cache (a chat's previous turn): only the new suffix is computed."""
        torch = self.torch
        spans = vision_spans(prompt.input_ids, prompt.vision)
        reuse = reusable_prefix(self._held, prompt, spans)
        if reuse and self._cache is not None and self._held is not None:
            extra = len(self._held.ids) - reuse
            if extra:
                self._cache.crop(-extra)  # drop the KV past the shared prefix
            cache = self._cache
        else:
            reuse, cache = 0, None
        self._cache, self._held = None, None  # until this prefill succeeds
        n = len(prompt.input_ids)
        ids = torch.tensor([prompt.input_ids[reuse:]], dtype=torch.long, device=self.device)
        rope = torch.as_tensor(prompt.position_ids[:, reuse:], dtype=torch.long, device=self.device).view(3, 1, -1)
        text_pos = torch.arange(reuse, n, device=self.device).view(1, 1, -1)
        kwargs = {}
        todo = [(item, span) for item, span in zip(prompt.vision, spans, strict=True) if span.start >= reuse]
        if todo:
            kwargs["mm_encoder_outputs"] = self._encode([item for item, _ in todo])
            kwargs["mm_token_type_ids"] = (ids == IMAGE_PAD).int() + 2 * (ids == VIDEO_PAD).int()
        with torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=torch.cat([text_pos, rope], 0), cache=cache,
                             use_cache=True, logits_to_keep=1, **kwargs)
        self._cache = out.cache
        self._held = CachedSequence(list(prompt.input_ids), spans)
        self._next_pos = prompt.next_position
        return StepOutput(logits=self._last(out), cached_tokens=reuse)

    def decode(self, token_id: int) -> StepOutput:
        torch = self.torch
        ids = torch.tensor([[token_id]], dtype=torch.long, device=self.device)
        held, self._held = self._held, None  # the cache is updated in place: unusable if this fails
        assert held is not None, "decode before prefill"
        pos = torch.tensor([len(held.ids)] + [self._next_pos] * 3, device=self.device).view(4, 1, 1)
        with torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=pos, cache=self._cache, use_cache=True)
        self._cache = out.cache
        held.ids.append(token_id)
        self._held = held
        self._next_pos += 1
        return StepOutput(logits=self._last(out))

    def prefill_logits(self, prompt: Prompt) -> np.ndarray:
        """Logits after the whole prompt (tests compare engines with it)."""
        logits = self.prefill(prompt).logits
        assert logits is not None  # this engine always returns logits
        return logits

    def close(self) -> None:
        self._cache = self._held = None
        self.model = None

    def _encode(self, items: list[VisionInput]) -> dict:
        """Encoder outputs for `items` in transformers' `mm_encoder_outputs` form (per kind:
        per-item embeddings and per-layer deepstack features), each item from the vision
        cache when it was seen before."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        per_kind: dict[str, tuple[list, list[list]]] = {}
        for item in items:
            key = vision_key(item)
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
                pooler_output=tuple(embeds), deepstack_features=[tuple(layer) for layer in deepstack])
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
