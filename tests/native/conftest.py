"""Fixtures for the BM1684X simulator tests: the native module and the tiny bmodel.

Both are built on first use when missing (so `pytest -m bm1684x` works alone), and both
builds are cached: the module in qwen3vl_app/engine/, the bmodel folder outside the
checkout (scripts/build_tiny_bmodel.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _build_native() -> None:
    subprocess.run(
        ["bash", str(REPO / "native" / "fetch_sim_runtime.sh")], check=True, env=dict(os.environ, PYTHON=sys.executable)
    )
    build = REPO / "native" / "build"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(REPO / "native"),
            "-B",
            str(build),
            "-DBM_MODE=sim",
            f"-DPython3_EXECUTABLE={sys.executable}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["cmake", "--build", str(build), "-j", "2"], check=True, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def native_module():
    try:
        from qwen3vl_app.engine.bm1684x import qwen3vl_native
    except ImportError:
        _build_native()
        import importlib

        importlib.invalidate_caches()
        from qwen3vl_app.engine.bm1684x import qwen3vl_native
    return qwen3vl_native


def _build_tiny_bmodel(*args: str) -> Path:
    return _built_folder("build_tiny_bmodel.py", *args)


def _built_folder(script: str, *args: str) -> Path:
    """Run a bmodel builder in scripts/; its last line is the model folder (cached)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=REPO,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert list(folder.glob("*.bmodel")) and (folder / "config" / "tokenizer.json").exists()
    return folder


@pytest.fixture(scope="session")
def tiny_bmodel_dir() -> Path:
    return _build_tiny_bmodel()


@pytest.fixture(scope="session")
def tiny_bmodel_dynamic_dir(tiny_bmodel_dir) -> Path:
    return _build_tiny_bmodel("--dynamic")


@pytest.fixture(scope="session")
def tiny_bmodel_history_dir(tiny_bmodel_dir) -> Path:
    """llm_convert --use_history_kv: chunked prefill (64-token chunks) on top of kept rows."""
    return _build_tiny_bmodel("--history-kv")


@pytest.fixture(scope="session")
def tiny_bmodel_b4_dir(tiny_bmodel_dir) -> Path:
    """The tiny checkpoint built with `llm_convert -b 4` (through our converter wrapper)."""
    return _built_folder("llm_convert_patched.py", "--batch", "4")


@pytest.fixture(scope="session")
def tiny_bmodel_spec_dir(tiny_bmodel_dir) -> Path:
    """The tiny bmodel with the speculative verify nets for K = 4 (--speculative 4)."""
    return _build_tiny_bmodel("--speculative", "4")


@pytest.fixture(scope="session")
def bm_engine(native_module, tiny_bmodel_dir):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    eng = BM1684XEngine(tiny_bmodel_dir, devid=0)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def torch_model():
    """transformers on the tiny checkpoint the bmodels are compiled from (the reference)."""
    torch = pytest.importorskip("torch")
    from transformers import Qwen3VLForConditionalGeneration

    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint

    model = Qwen3VLForConditionalGeneration.from_pretrained(str(ensure_tiny_checkpoint()), dtype=torch.float32)
    return model.eval()
