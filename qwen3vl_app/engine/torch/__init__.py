"""The reference engine: transformers' Qwen3-VL on CPU or CUDA (`engine.py`).  This file
is what the registry reads; importing it imports no torch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...options import opt
from ..base import Engine, EngineSpec


@dataclass(frozen=True)
class TorchSettings:
    dtype: str = opt(
        "auto",
        ("--torch-dtype",),
        "torch engine weights: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16",
        choices=("auto", "float32", "bfloat16"),
    )
    max_context: int = opt(
        0,
        ("--torch-max-context",),
        "torch engine: longest context (prompt + reply); 0 = the model's own, at most 32768",
    )


def _claims(model_dir: Path) -> bool:
    return (model_dir / "config.json").exists()


def _load(model_dir: Path, options: TorchSettings, settings: Any) -> Engine:
    from .engine import TorchEngine

    threads = max(1, (os.cpu_count() or 1) // max(1, settings.workers))  # the cores shared among workers
    if settings.max_batch > 1:
        # Batched decode runs while the hub streams N replies: leave the hub a core, or the
        # intra-op threads stall at every barrier behind it.
        threads = max(1, threads - 1)
    return TorchEngine(
        model_dir,
        dtype=options.dtype,
        threads=threads,
        max_context=options.max_context,
        vision_cache_mb=settings.vision_cache_mb,
    )


SPEC = EngineSpec("torch", TorchSettings, _claims, _load, option_prefix="torch_")
