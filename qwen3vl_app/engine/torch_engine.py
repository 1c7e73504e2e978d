"""Reference engine: transformers' Qwen3-VL on CPU (or CUDA when present).

It is the oracle the bm1684x engine is tested against and lets anyone run the same API
on a laptop.  Positions come from our own `Prompt` (the same M-RoPE rows the TPU gets),
so both engines see identical inputs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .base import Capabilities, Engine, Limits, Prompt, StepOutput

log = logging.getLogger("qwen3vl.engine.torch")


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model_dir: Path, dtype: str = "auto", threads: int | None = None, max_context: int = 0):
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
        self.capabilities = Capabilities(logits=True)
        self._cache = None
        self._seen = 0  # tokens in the KV cache
        self._next_pos = 0  # M-RoPE position of the next token

    def prefill(self, prompt: Prompt) -> StepOutput:
        torch = self.torch
        ids = torch.tensor([prompt.input_ids], dtype=torch.long, device=self.device)
        n = ids.shape[1]
        rope = torch.as_tensor(prompt.position_ids, dtype=torch.long, device=self.device).view(3, 1, n)
        text_pos = torch.arange(n, device=self.device).view(1, 1, n)
        kwargs = {}
        images = [v for v in prompt.vision if v.kind == "image"]
        videos = [v for v in prompt.vision if v.kind == "video"]
        if images:
            kwargs["pixel_values"] = self._pixels(images)
            kwargs["image_grid_thw"] = torch.tensor([v.grid_thw for v in images], device=self.device)
        if videos:
            kwargs["pixel_values_videos"] = self._pixels(videos)
            kwargs["video_grid_thw"] = torch.tensor([v.grid_thw for v in videos], device=self.device)
        if images or videos:
            from ..model_constants import IMAGE_PAD, VIDEO_PAD

            mm = (ids == IMAGE_PAD).int() + 2 * (ids == VIDEO_PAD).int()
            kwargs["mm_token_type_ids"] = mm
        with torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=torch.cat([text_pos, rope], 0), use_cache=True,
                             logits_to_keep=1, **kwargs)
        self._cache = out.cache
        self._seen = n
        self._next_pos = prompt.next_position
        return StepOutput(logits=self._last(out))

    def decode(self, token_id: int) -> StepOutput:
        torch = self.torch
        ids = torch.tensor([[token_id]], dtype=torch.long, device=self.device)
        pos = torch.tensor([self._seen] + [self._next_pos] * 3, device=self.device).view(4, 1, 1)
        with torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=pos, cache=self._cache, use_cache=True)
        self._cache = out.cache
        self._seen += 1
        self._next_pos += 1
        return StepOutput(logits=self._last(out))

    def prefill_logits(self, prompt: Prompt) -> np.ndarray:
        """Logits after the whole prompt (tests compare engines with it)."""
        logits = self.prefill(prompt).logits
        assert logits is not None  # this engine always returns logits
        return logits

    def close(self) -> None:
        self._cache = None
        self.model = None

    def _pixels(self, items):
        arr = np.concatenate([v.pixel_values for v in items], axis=0)
        return self.torch.from_numpy(arr).to(self.device, self.dtype)

    def _last(self, out) -> np.ndarray:
        return out.logits[0, -1].float().cpu().numpy()
