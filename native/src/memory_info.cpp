#include "memory_info.h"

#include <stdexcept>
#include <string>

#include "bm_api.h"

namespace qwen3vl {

std::vector<HeapStat> device_heaps(int devid) {
  bm_handle_t h = nullptr;
  if (bm_dev_request(&h, devid) != BM_SUCCESS || !h)
    throw std::runtime_error("cannot open device " + std::to_string(devid));
  std::vector<HeapStat> out;
  unsigned int n = 0;
  if (bm_get_gmem_total_heap_num(h, &n) == BM_SUCCESS) {
    for (unsigned int i = 0; i < n; i++) {
      bm_heap_stat_byte_t s{};
      if (bm_get_gmem_heap_stat_byte_by_id(h, &s, i) != BM_SUCCESS) continue;
      out.push_back({s.heap_id, s.mem_total, s.mem_avail, s.mem_used});
    }
  }
  bm_dev_free(h);
  return out;
}

}  // namespace qwen3vl
