#include "testing.h"

#include "layouts.h"

namespace qwen3vl::testing {

// Runtime's friend: its lock and its loaded model, nothing else.
struct Access {
  static std::mutex& mutex(Runtime& rt) { return rt.mu_; }
  static Loaded& model(Runtime& rt) { return rt.open_model(); }
};

void fill_kv_cache(Runtime& rt, uint16_t pattern) {
  std::lock_guard<std::mutex> g(Access::mutex(rt));
  Loaded& m = Access::model(rt);
  m.kv.fill(pattern);
  m.dev.sync();
}

std::vector<uint16_t> read_kv_cache(Runtime& rt, int layer, int which) {
  std::lock_guard<std::mutex> g(Access::mutex(rt));
  return Access::model(rt).kv.read(layer, which);
}

}  // namespace qwen3vl::testing
