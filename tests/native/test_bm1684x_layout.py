"""Bmodel layouts the runtime does not run are refused when the worker loads the model,
with a message naming what was found and what is supported, and /health says why."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import run_server

pytestmark = pytest.mark.bm1684x


def _model_tool(*args: str, cwd: Path) -> str:
    root = Path(os.environ.get("QWEN3VL_CACHE_DIR", Path.home() / ".cache" / "qwen3vl-server"))
    bin_dir = root / "tpu-mlir-venv-1.30.2" / "bin"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run(["model_tool", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _folder_with(tmp_path: Path, source: Path, bmodel: Path, name: str) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copytree(source / "config", folder / "config")
    shutil.copy2(bmodel, folder / name)
    return folder


@pytest.fixture(scope="module")
def bmodel_without_embedding_cache(tiny_bmodel_dir, tmp_path_factory) -> Path:
    """The tiny bmodel re-combined without its `embedding_cache` network (the tpu-mlir
    venv that built it has model_tool)."""
    work = tmp_path_factory.mktemp("extract")
    _model_tool("--extract", str(tiny_bmodel_dir / "tiny-qwen3vl.bmodel"), cwd=work)
    keep = []
    for part in sorted(work.glob("bm_net*.bmodel")):
        name = re.search(r"net 0: \[(\S+)\]", _model_tool("--info", str(part), cwd=work)).group(1)
        if name != "embedding_cache":
            keep.append(str(part))
    assert len(keep) == len(list(work.glob("bm_net*.bmodel"))) - 1
    _model_tool("--combine", *keep, "-o", "partial.bmodel", cwd=work)
    return _folder_with(work, tiny_bmodel_dir, work / "partial.bmodel", "partial.bmodel")


def test_missing_network_is_refused_with_what_was_found(native_module, bmodel_without_embedding_cache):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine, UnsupportedBmodel

    with pytest.raises(UnsupportedBmodel) as e:
        BM1684XEngine(bmodel_without_embedding_cache)
    msg = str(e.value)
    assert "no network 'embedding_cache'" in msg and "block_cache_1" in msg and "supported:" in msg, msg


def test_multi_device_build_is_refused_by_its_name(native_module, tiny_bmodel_dir, tmp_path):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine, UnsupportedBmodel

    folder = _folder_with(
        tmp_path,
        tiny_bmodel_dir,
        tiny_bmodel_dir / "tiny-qwen3vl.bmodel",
        "qwen3-vl-4b-instruct_w4bf16_seq2048_bm1684x_2dev_20251026_141347.bmodel",
    )
    with pytest.raises(UnsupportedBmodel, match="2-device build.*supported: single-device"):
        BM1684XEngine(folder)


def test_health_says_why_the_model_was_refused(native_module, bmodel_without_embedding_cache, tmp_path):
    with run_server(bmodel_without_embedding_cache, tmp_path, "--engine", "bm1684x", wait=False) as s:
        body = None
        for _ in range(300):
            try:
                r = requests.get(s.url + "/health", timeout=5)
                body = r.json()
                if body["status"] != "loading":
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        assert r.status_code == 503, body
        assert body["status"] == "unhealthy"
        assert "UnsupportedBmodel" in body["details"] and "no network 'embedding_cache'" in body["details"], body
