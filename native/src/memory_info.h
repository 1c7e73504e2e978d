// Device memory as the driver reports it: the heaps (NPU, VPU, VPP on an SE7) with their
// total and free bytes.  Read before a model loads, so a load that cannot fit says so with
// the sizes instead of failing inside the runtime (engine/bm1684x/engine.py).
#pragma once

#include <cstdint>
#include <vector>

namespace qwen3vl {

struct HeapStat {
  unsigned int id = 0;
  unsigned long long total = 0;  // bytes
  unsigned long long avail = 0;
  unsigned long long used = 0;
};

// Opens device `devid`, reads every heap, closes it (throws when the device cannot open).
std::vector<HeapStat> device_heaps(int devid);

}  // namespace qwen3vl
