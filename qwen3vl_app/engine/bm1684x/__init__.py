"""The BM1684X engine: a vendor-compiled `*.bmodel` run by our native module (`engine.py`),
with its device-only helpers (`vit_inputs.py`).  This file is what the registry reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...options import opt
from ..base import Engine, EngineSpec, ModelFolderError


@dataclass(frozen=True)
class BM1684XSettings:
    devid: int = opt(0, ("-d", "--devid"), "TPU device id")
    device_sampling: str = opt(
        "auto",
        ("--device-sampling",),
        "choose tokens with the bmodel's sampling heads (--do_sample builds) for the requests they serve exactly "
        "(greedy, or top_k 1-50 with at most a repetition penalty; docs/sampling-on-device.md): "
        "auto = on on a box, off on the cmodel simulator (minutes per head call); off = always host sampling",
        choices=("auto", "on", "off"),
    )


def _claims(model_dir: Path) -> bool:
    if not list(model_dir.glob("*.bmodel")):
        return False
    if not (model_dir / "config").is_dir():
        raise ModelFolderError(f"{model_dir} has a .bmodel but no config/ folder with the tokenizer files")
    return True


def _load(model_dir: Path, options: BM1684XSettings, settings: Any) -> Engine:
    from .engine import BM1684XEngine

    return BM1684XEngine(
        model_dir,
        devid=options.devid,
        vision_cache_mb=settings.vision_cache_mb,
        device_sampling=options.device_sampling,
    )


SPEC = EngineSpec("bm1684x", BM1684XSettings, _claims, _load)
