"""Multi-stage decode (llm_convert --chunk_length): where each block_cache stage reads its
inputs is read at load and logged, and whether the stages share the KV cache buffer.
Load only: no network runs (the published build's lm_head takes minutes a call)."""

from __future__ import annotations

import logging

import pytest

from tests.native.conftest import _build_tiny_bmodel

pytestmark = pytest.mark.bm1684x


@pytest.fixture(scope="module")
def chunked_dir(native_module):
    return _build_tiny_bmodel("--published", "--chunk-length", "64")  # test_bm1684x_published's build


def test_stage_inputs_are_read_at_load_and_logged(chunked_dir, tiny_bmodel_dir, caplog):
    from qwen3vl_app.engine.bm1684x.engine import BM1684XEngine

    with caplog.at_level(logging.DEBUG, logger="qwen3vl.engine.bm1684x"):
        eng = BM1684XEngine(chunked_dir)
    try:
        rt = eng.rt
        assert rt.decode_stages == [64, 128, 256]
        stages = rt.stage_inputs
        # per layer, every stage in ascending KV length, five inputs each
        assert [(si["net"], si["kv_len"]) for si in stages] == [
            (f"block_cache_{layer}", n) for layer in range(rt.num_layers) for n in (64, 128, 256)
        ]
        row = rt.kv_heads * rt.head_dim * 2
        for si in stages:
            assert len(si["addr"]) == len(si["bytes"]) == 5 and all(si["addr"])
            assert si["bytes"][3] == si["bytes"][4] == si["kv_len"] * row  # history K/V of that stage's length
            assert si["bytes"][2] == (si["kv_len"] + 1) * 2  # its mask
        # the stages of a layer read their history at one address, or not: the runtime says which
        for layer in range(rt.num_layers):
            mine = [si for si in stages if si["net"] == f"block_cache_{layer}"]
            same = all(si["addr"][3:5] == mine[-1]["addr"][3:5] for si in mine)
            assert same or not rt.kv_stages_shared
        assert rt.kv_stages_shared == all(
            si["addr"][3:5] == [s for s in stages if s["net"] == si["net"]][-1]["addr"][3:5] for si in stages
        )
        text = caplog.text
        assert "block_cache_1 stage" in text and "KV 64 rows" in text
        assert ("share their history K/V buffers" in text) == rt.kv_stages_shared
    finally:
        eng.close()

    single = BM1684XEngine(tiny_bmodel_dir)
    try:
        assert [si["kv_len"] for si in single.rt.stage_inputs] == [256] * single.rt.num_layers
        assert single.rt.kv_stages_shared
    finally:
        single.close()
