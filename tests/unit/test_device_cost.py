"""The device-cost model (engine/bm1684x/cost.py) on the published 2B/4B shapes, and the
device-memory message (engine/bm1684x/memory.py) built from the runtime's real failure
texts.  The bmodel-file side is tested against a real bmodel in tests/native."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen3vl_app.engine.bm1684x import cost, memory
from qwen3vl_app.engine.bm1684x.bmodel_file import BmodelInfo, NetInfo, StageInfo, TensorInfo

FOUR_B = cost.SHAPES["4b"]


def test_lm_head_sizes_follow_the_shape():
    n = 151936 * 2560
    assert FOUR_B.lm_head_bytes("bf16") == 2 * n  # the 0.78 GB the issue names
    assert FOUR_B.lm_head_bytes("w8") == n + 151936 * 2
    assert FOUR_B.lm_head_bytes("w4") == n // 2 + n // 64 * 3
    with pytest.raises(ValueError):
        FOUR_B.lm_head_bytes("fp8")


def test_4b_batch1_matches_the_vendor_figure():
    """The model is checked against the one published number it can be: the vendor's 4B
    decode speed on an SE7 (about 13 tok/s) at 41 GB/s effective."""
    step = cost.modelled_step(FOUR_B, 1, "bf16", "single")
    assert step.launches == 1 + 36 + 1 and step.d2d == 0 and step.syncs == 1
    assert 12.0 <= cost.tok_per_s(step.bytes_read, 1) <= 14.5


def test_lighter_heads_save_what_their_tables_save():
    bf16 = cost.modelled_step(FOUR_B, 1, "bf16", "single").bytes_read
    for kind in ("w8", "w4"):
        saved = bf16 - cost.modelled_step(FOUR_B, 1, kind, "single").bytes_read
        assert saved == FOUR_B.lm_head_bytes("bf16") - FOUR_B.lm_head_bytes(kind)
    w8 = 1 - cost.modelled_step(FOUR_B, 1, "w8", "single").bytes_read / bf16
    w4 = 1 - cost.modelled_step(FOUR_B, 1, "w4", "single").bytes_read / bf16
    # the honest figures: half the head is 12.7 % of a 4B step (KV at SEQLEN 2048), a
    # W4 head 18.4 %
    assert 0.12 < w8 < 0.14 and 0.17 < w4 < 0.20


def test_batch_layouts():
    one = cost.modelled_step(FOUR_B, 1, "bf16", "single")
    concat = cost.modelled_step(FOUR_B, 4, "bf16", "concat")
    slots = cost.modelled_step(FOUR_B, 4, "bf16", "slots")
    assert concat.d2d == 2 * 4 * 36 and concat.launches == 4 + 36 + 4
    assert slots.d2d == 0 and slots.launches == one.launches
    assert slots.weight_bytes == one.weight_bytes + 3 * 2560 * 2  # weights once; 4 embedding rows
    assert slots.bytes_read < 2 * one.bytes_read < concat.bytes_read


def test_measured_step_is_driven_by_the_nets_launched():
    """Launching lm_head once per slot or once per step changes the figure by itself."""
    t = TensorInfo
    kv = t("history_k", "bf16", (1, 256, 2, 16), 256 * 64 * 2)
    nets = {
        "embedding_cache": NetInfo(
            "embedding_cache",
            (StageInfo(0, 1000, 0, 0, (t("ids", "i32", (1, 1), 4),), (t("h", "bf16", (1, 1, 64), 128),)),),
        ),
        "block_cache_0": NetInfo(
            "block_cache_0",
            (StageInfo(1000, 500, 0, 0, (t("s", "bf16", (1, 1, 64), 128), kv), (t("o", "bf16", (1, 1, 64), 128),)),),
        ),
        "lm_head": NetInfo(
            "lm_head", (StageInfo(0, 1000, 0, 0, (t("h", "bf16", (1, 64), 128),), (t("l", "f32", (1, 10), 40),)),)
        ),
    }
    info = BmodelInfo(Path("x.bmodel"), "BM1684X", nets)
    counters = {"syncs": 1, "d2d_copies": 2, "d2d_bytes": 64, "s2d_bytes": 20, "d2s_bytes": 40}
    once = cost.measured_step(info, {"embedding_cache": 1, "block_cache_0": 1, "lm_head": 1}, counters)
    # the gather reads its row, not its table; the block its weights and its KV input
    assert once.per_net["embedding_cache"] == 128 + 4 + 128
    assert once.per_net["block_cache_0"] == 500 + kv.nbytes + 128 + 128
    assert once.kv_bytes == kv.nbytes and once.d2d == 2 and once.host_device_bytes == 60
    per_slot = cost.measured_step(info, {"embedding_cache": 1, "block_cache_0": 1, "lm_head": 4}, counters)
    assert per_slot.bytes_read - once.bytes_read == 3 * (1000 + 128 + 40)
    assert per_slot.launches == once.launches + 3
    assert info.weight_bytes == 1500 and info.shared_weights("lm_head", "embedding_cache")


def test_memory_per_instance():
    m = cost.instance_memory(FOUR_B)
    assert m.kv == 36 * 2 * 2048 * 8 * 128 * 2  # 288 MiB
    untied = cost.instance_memory(FOUR_B, "w8")
    assert untied.weights - m.weights == FOUR_B.lm_head_bytes("w8")  # a quantised head is a second table
    assert (7615 << 20) // m.total == 1


# What libbmrt / our allocator say when device memory runs out (strings of libbmrt 1.30.2
# and native/src/device.cpp); the heap figures are a mock: the simulator reports no heaps
# and aborts when its memory pool runs out, so only the message path runs here.
RUNTIME_TEXTS = [
    "bmlib: bm_malloc_device_byte failed (3)",
    "device mem alloc failed: size=4294967296[0x0] type_len=1 status=3 desc=coeff",
    "the size of device memory is not enough, required 4294967296, got 1048576",
]
MOCK_HEAPS = [
    {"id": 0, "total": 7615 << 20, "avail": 1 << 30, "used": 6591 << 20},
    {"id": 1, "total": 3072 << 20, "avail": 0, "used": 3072 << 20},
]


@pytest.mark.parametrize("text", RUNTIME_TEXTS)
def test_allocation_failures_become_a_memory_message(text, tmp_path):
    bmodel = tmp_path / "qwen3vl_4b.bmodel"  # unreadable: the sizes of the file are left out
    msg = memory.explain_load_failure(bmodel, 0, text, MOCK_HEAPS)
    assert msg is not None and msg.startswith("not enough device memory to load qwen3vl_4b.bmodel on device 0")
    assert "the device has 1,024 MiB free (npu 1,024 MiB free of 7,615 MiB, vpu 0 MiB free of 3,072 MiB)" in msg
    assert "memory_edit.sh" in msg and text in msg


def test_other_load_failures_stand(tmp_path):
    bmodel = tmp_path / "m.bmodel"
    assert memory.explain_load_failure(bmodel, 0, "cannot load bmodel /x/m.bmodel", MOCK_HEAPS) is None
    assert memory.explain_load_failure(bmodel, 0, "unsupported bmodel: ...", []) is None
    memory.check_fits(bmodel, 0, MOCK_HEAPS)  # nothing known about the file: no refusal
    memory.check_fits(bmodel, 0, [])
