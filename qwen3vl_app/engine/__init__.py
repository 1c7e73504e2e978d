"""The engines this server can run: one package each, listed once in `ENGINES`.

    engine/
      base.py        the interface every engine implements (`Engine`: prefill_slot,
                     decode_batch, release_slot, close) and what a package exports (`EngineSpec`)
      scheduler.py   the one generation loop over an engine's slots (sampling, stops,
                     constraints, cancellation, prefix-aware slot choice)
      runner.py      the worker's engine thread, admission turns, token channels
      sampling.py, constraints.py, reuse.py   host-side pieces the scheduler and engines share
      bm1684x/       the BM1684X engine, its native module and its device-only helpers
      torch/         the transformers reference engine

Adding an engine is a package here whose `__init__.py` exports `SPEC` (an `EngineSpec`),
plus its line below; docs/architecture.md lists what to implement.  A folder is served by
the first engine (in this order) that claims it; `--engine` names one explicitly.
"""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path

from .base import Engine, EngineSpec, ModelFolderError

ENGINES: dict[str, str] = {
    "bm1684x": "qwen3vl_app.engine.bm1684x",
    "torch": "qwen3vl_app.engine.torch",
}


@cache
def engine_specs() -> tuple[EngineSpec, ...]:
    return tuple(importlib.import_module(module).SPEC for module in ENGINES.values())


def engine_spec(name: str) -> EngineSpec:
    for spec in engine_specs():
        if spec.name == name:
            return spec
    raise ModelFolderError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")


def detect_engine(model_dir: Path) -> str:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"model folder {model_dir} does not exist")
    for spec in engine_specs():
        if spec.claims(model_dir):
            return spec.name
    raise ModelFolderError(f"{model_dir} holds neither a *.bmodel + config/ nor a Hugging Face config.json")


def load_engine(settings, kind: str | None = None) -> Engine:
    model_dir = Path(settings.model_dir)
    kind = kind or (settings.engine if settings.engine != "auto" else detect_engine(model_dir))
    spec = engine_spec(kind)
    return spec.load(model_dir, settings.engine_settings(kind), settings)
