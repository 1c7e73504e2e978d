// Test hooks: make the simulator's device memory look like a real box's, and look at it.
// Not part of Runtime's interface; bindings.cpp exposes them as qwen3vl_native.testing.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime.h"

namespace qwen3vl::testing {

// Fill every KV cache buffer with a 16-bit pattern (e.g. bf16 NaN 0x7FC0), as unzeroed
// device memory may hold; the runtime must then treat every row as unwritten.
void fill_kv_cache(Runtime& rt, uint16_t pattern);
// The raw 16-bit contents of layer `layer`'s K (which=0) or V (which=1) cache.
std::vector<uint16_t> read_kv_cache(Runtime& rt, int layer, int which);

}  // namespace qwen3vl::testing
