// Runtime: one loaded Qwen3-VL bmodel on one device -- the facade bindings.cpp exposes.
//
// At load it opens the device (device.h), reads the networks' shapes (model.h), builds the
// shared parts (stages.h) and picks the layout type the shapes call for (layouts.h):
// single-sequence, history-KV or batch-N.  Each call goes to that layout; a call the
// layout does not have (decode_batch on a single-sequence build, ...) is refused.
//
// Rules:
// - A mutex serialises calls on one object; device work runs with it held.
// - What the model is (info()), the counts and timings, token_length() and
//   last_decode_kv_length() are read without it, so they never wait for device work, and
//   stay readable after close().
// - close() frees every device buffer before the runtime and the handle, so a process can
//   load and unload models repeatedly; close_all() closes every open Runtime (at exit).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "device.h"
#include "types.h"

namespace qwen3vl {

struct Loaded;
namespace testing {
struct Access;
}

class Runtime {
 public:
  Runtime(const std::string& bmodel_path, int devid);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  static void close_all();
  void close();
  bool closed() const { return closed_; }

  const std::string& path() const { return path_; }
  int devid() const { return devid_; }
  const ModelInfo& info() const { return info_; }
  int token_length() const { return token_length_; }  // tokens in the KV cache (0 on batch-N builds)
  int last_decode_kv_length() const { return last_decode_kv_length_; }  // history length of the last step's stage
  std::vector<int> slot_lengths();  // batch-N builds: tokens in each slot's KV region
  // Per vit call of the last prefill: its output rows (VitCall::cached's layout) when the
  // call asked for them, else empty.
  std::vector<std::vector<uint16_t>> last_vit_rows();

  // Single-sequence and history-KV builds.  prefill keeps the first `keep` cached rows
  // (history-KV builds; 0 elsewhere) and runs `in` -- the prompt after them, positions
  // absolute -- on top.
  StepResult prefill(const PrefillInputs& in, int keep = 0);
  StepResult decode(int32_t token, int32_t position);
  // Batch-N builds: the whole prompt into `slot`'s KV region; one decode step for the slots
  // given (the others ride along masked), one result per step in order.
  StepResult prefill_slot(int slot, const PrefillInputs& in);
  std::vector<StepResult> decode_batch(const std::vector<SlotStep>& steps);
  void reset();  // empty the KV cache (zeros on the device)

  // Builds with the verify nets (`--speculative K`; verify.h): feed 1..verify_rows()
  // tokens at consecutive positions, logits after each; then keep the first `keep`.
  int verify_rows() const { return verify_rows_; }  // 0 without the nets
  std::vector<StepResult> verify(const std::vector<int32_t>& tokens, int32_t position);
  void commit_verify(int keep);

  // Single-sequence and history-KV builds: how the next steps' results leave the device
  // (HeadPlan; `history`: the sequence's ids so far, for the repetition penalty), and the
  // last step's logits read again (after a device head; no launch).
  void set_head(const HeadPlan& plan, const std::vector<int32_t>& history);
  StepResult last_logits();

  std::map<std::string, NetTiming> timings() { return stats_.timings(); }
  void reset_timings() { stats_.reset_timings(); }
  DeviceCounters counters() { return stats_.counters(); }
  void reset_counters() { stats_.reset_counters(); }

 private:
  friend struct testing::Access;  // testing.h: the test hooks reach the KV cache through it

  const std::string path_;
  const int devid_;
  ModelInfo info_;
  DeviceStats stats_;  // before loaded_: outlives the Device that counts into it
  std::mutex mu_;
  std::unique_ptr<Loaded> loaded_;  // null once closed
  std::atomic<bool> closed_{true};
  std::atomic<int> token_length_{0};
  std::atomic<int> last_decode_kv_length_{0};
  int verify_rows_ = 0;

  Loaded& open_model();  // the loaded model (mu_ held), or "runtime is closed"
  void publish();        // token_length_ / last_decode_kv_length_ from the layout
};

}  // namespace qwen3vl
