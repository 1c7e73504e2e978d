"""Pick and construct the engine for a model folder.

A folder holding a `*.bmodel` and a `config/` folder is a BM1684X model; a folder with a
Hugging Face `config.json` and weights is a torch model.  Imports are lazy so a bm1684x
worker never imports torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..model_constants import DEMO_MARKER
from ..tokenizer import config_dir


class ModelFolderError(Exception):
    pass


def detect_engine(model_dir: Path) -> str:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"model folder {model_dir} does not exist")
    if list(model_dir.glob("*.bmodel")):
        if not (model_dir / "config").is_dir():
            raise ModelFolderError(f"{model_dir} has a .bmodel but no config/ folder with the tokenizer files")
        return "bm1684x"
    if (model_dir / "config.json").exists():
        return "torch"
    raise ModelFolderError(f"{model_dir} holds neither a *.bmodel + config/ nor a Hugging Face config.json")


def is_demo(model_dir: Path) -> bool:
    path = config_dir(Path(model_dir)) / DEMO_MARKER
    try:
        return bool(json.loads(path.read_text()).get("random_weights"))
    except (OSError, ValueError):
        return False


def load_engine(settings, kind: str | None = None):
    model_dir = Path(settings.model_dir)
    kind = kind or (settings.engine if settings.engine != "auto" else detect_engine(model_dir))
    if kind == "torch":
        from .torch_engine import TorchEngine

        threads = max(1, (os.cpu_count() or 1) // max(1, settings.workers))
        if settings.max_batch > 1:
            # Batched decode runs while the hub streams N replies (in the single-sequence
            # path the hub waits during each step): leave the hub a core, or the intra-op
            # threads stall at every barrier behind it.
            threads = max(1, threads - 1)
        return TorchEngine(
            model_dir,
            dtype=settings.torch_dtype,
            threads=threads,
            max_context=settings.torch_max_context,
            vision_cache_mb=settings.vision_cache_mb,
        )
    if kind == "bm1684x":
        from .bm1684x import BM1684XEngine

        return BM1684XEngine(model_dir, devid=settings.devid, vision_cache_mb=settings.vision_cache_mb)
    raise ModelFolderError(f"unknown engine {kind!r}")
