"""The runtime's bfloat16 / float16 conversions (native/src/half.h), exhaustively: every
one of the 65,536 bit patterns of each format round-trips through float32, and float32 ->
half rounds to nearest even like numpy (float16) and the bit-level rule (bfloat16).

Compared as bit patterns: the simulator turns on flush-to-zero in this process, which would
make float comparisons of subnormals meaningless."""

from __future__ import annotations

import numpy as np
import pytest

ALL16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


@pytest.fixture(scope="module")
def nat(native_module):
    return native_module


def _is_nan16(bits: np.ndarray, exp_mask: int, mant_mask: int) -> np.ndarray:
    return ((bits & exp_mask) == exp_mask) & ((bits & mant_mask) != 0)


def test_bf16_to_f32_is_the_top_half_of_a_float32(nat):
    f = nat.bf16_to_f32(ALL16)
    np.testing.assert_array_equal(f.view(np.uint32), ALL16.astype(np.uint32) << 16)


def test_bf16_round_trips_all_65536_patterns(nat):
    back = nat.f32_to_bf16(nat.bf16_to_f32(ALL16))
    np.testing.assert_array_equal(back, ALL16)  # NaN payloads and signs included


def test_f16_to_f32_matches_numpy_for_all_65536_patterns(nat):
    mine = nat.f16_to_f32(ALL16).view(np.uint32)
    ref = ALL16.view(np.float16).astype(np.float32).view(np.uint32)
    nan = _is_nan16(ALL16, 0x7C00, 0x03FF)
    np.testing.assert_array_equal(mine[~nan], ref[~nan])
    assert (((mine[nan] >> 23) & 0xFF) == 0xFF).all() and ((mine[nan] & 0x7FFFFF) != 0).all()


def test_f16_round_trips_all_65536_patterns(nat):
    back = nat.f32_to_f16(nat.f16_to_f32(ALL16))
    np.testing.assert_array_equal(back, ALL16)


def _float32_sample() -> np.ndarray:
    """Halfway cases of both formats, their neighbours, and random bit patterns."""
    rng = np.random.default_rng(0)
    base = ALL16.astype(np.uint32) << 16
    halfway_bf16 = base | 0x8000  # exactly between two bf16 values
    f16_as_f32 = ALL16.view(np.float16).astype(np.float32).view(np.uint32)
    halfway_f16 = f16_as_f32 | 0x1000  # halfway for normal halves
    parts = [
        base,
        halfway_bf16,
        halfway_bf16 - 1,
        halfway_bf16 + 1,
        halfway_f16,
        halfway_f16 - 1,
        halfway_f16 + 1,
        rng.integers(0, 1 << 32, size=200_000, dtype=np.uint64).astype(np.uint32),
    ]
    return np.concatenate(parts).view(np.float32)


def test_f32_to_bf16_rounds_to_nearest_even(nat):
    x = _float32_sample()
    bits = x.view(np.uint32).astype(np.uint64)
    nan = np.isnan(x)  # isnan is exact under flush-to-zero
    ref = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    mine = nat.f32_to_bf16(x)
    np.testing.assert_array_equal(mine[~nan], ref[~nan])
    assert _is_nan16(mine[nan], 0x7F80, 0x007F).all()


def test_f32_to_f16_matches_numpy(nat):
    x = _float32_sample()
    nan = np.isnan(x)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).view(np.uint16)
    mine = nat.f32_to_f16(x)
    tiny = (x.view(np.uint32) & 0x7F800000) == 0  # float32 subnormals: numpy may see them flushed
    ok = ~nan & ~tiny
    np.testing.assert_array_equal(mine[ok], ref[ok])
    assert (mine[tiny] & 0x7FFF == 0).all()  # far below the smallest half: signed zero
    assert _is_nan16(mine[nan], 0x7C00, 0x03FF).all()
