// The three bmodel layouts the runtime runs, one type each, over the shared parts
// (stages.h).  Runtime picks one at load from what the Model read:
//
// - SingleLayout: one sequence.  Prefill runs the whole prompt (at most MAX_INPUT_LENGTH)
//   through block_i; decode follows the vendor's device path: the KV cache *is* the
//   block_cache_i nets' own history inputs, each step writes its new K/V row straight into
//   them, so a token costs embedding + layers + lm_head launches and no device-to-device
//   copies.  The smallest block_cache stage (llm_convert --chunk_length) holding every
//   cached row runs.
// - HistoryLayout (llm_convert --use_history_kv; also has block_kv_i): as SingleLayout, but
//   prefill runs a prompt of any length in chunks of MAX_INPUT_LENGTH and can keep a
//   leading part of the cache (the previous turn of a chat): only the rows after it are
//   computed (docs/multi-turn.md).
// - BatchLayout (llm_convert -b N through our wrapper): each of N slots owns its part of
//   the cache; prefill_slot fills one slot, decode_batch advances several in one launch per
//   layer -- in "slots" builds with every new K/V row written in place and one embedding
//   and lm_head launch per step (docs/batching.md).
//
// Loaded holds one open model: the device, the parts and the layout, freed in reverse.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "device.h"
#include "model.h"
#include "stages.h"
#include "types.h"

namespace qwen3vl {

// The shared parts a layout runs on.
struct Parts {
  Device& dev;
  const Model& model;
  KvCache& kv;
  Vision& vision;
  Prefill& prefill;
  Heads& heads;
};

// Bytes of an aligned piece of the decode mask (SingleLayout::upload_decode_mask).
constexpr int kMaskAlign = 64;

class SingleLayout {
 public:
  explicit SingleLayout(const Parts& parts);
  virtual ~SingleLayout() = default;

  // Keeps the first `keep` cached rows (history-KV builds; 0 elsewhere) and runs `in` --
  // the prompt after them, positions absolute -- on top.
  StepResult prefill(const PrefillInputs& in, int keep);
  StepResult decode(int32_t token, int32_t position);
  void reset();  // an empty, zeroed cache (no sync)
  int token_length() const { return token_length_; }  // tokens in the KV cache
  void advance(int rows);  // verify.cpp: `rows` more cached tokens, written by a verify step
  int last_decode_kv_length() const { return last_decode_kv_length_; }  // stage the last step ran

 protected:
  Parts p_;
  const ModelInfo& info_;

  virtual void check_length(int keep, int L) const;
  virtual StepResult run_prompt(const PrefillInputs& in, int keep);

 private:
  bm_device_mem_t id1_{}, dlast_{};  // decode: the step's token id, the last layer's states
  int token_length_ = 0;
  int last_decode_kv_length_ = 0;
  int dmask_stage_ = -1;  // decode mask on the device: for this stage ...
  int dmask_rows_ = 0;    // ... with rows [0, n) open

  int decode_stage() const;
  void upload_decode_mask(int stage);
};

class HistoryLayout : public SingleLayout {
 public:
  explicit HistoryLayout(const Parts& parts);

 protected:
  void check_length(int keep, int L) const override;
  StepResult run_prompt(const PrefillInputs& in, int keep) override;

 private:
  // the whole prompt's embedding and deepstack rows (a vision block may straddle two
  // chunks), and a chunk's K/V when it would not fit at the cache's end
  bm_device_mem_t prompt_hid_{};
  std::vector<bm_device_mem_t> prompt_ds_;
  KvSpare spare_;
};

class BatchLayout {
 public:
  explicit BatchLayout(const Parts& parts);

  // The whole prompt into `slot`'s KV region (replacing what it held).
  StepResult prefill_slot(int slot, const PrefillInputs& in);
  // One decode step for the slots given (each fed its token at its position; the other
  // slots ride along masked).  One result per step, in order.
  std::vector<StepResult> decode_batch(const std::vector<SlotStep>& steps);
  std::vector<int> slot_lengths() const { return slot_length_; }  // tokens in each slot's region
  void reset();  // every slot empty, the cache zeroed (no sync)
  int last_decode_kv_length() const { return last_decode_kv_length_; }

 private:
  Parts p_;
  const ModelInfo& info_;
  // "slots" builds (info_.batch_slot_kv): slot s's K/V are block_cache_i's inputs 3+2s and
  // 4+2s; both sit slot_offset_[s] bytes after slot 0's in every layer (checked at load),
  // so prefill writes a slot as it writes a region.  logits_ holds lm_head_batch's output.
  std::vector<size_t> slot_offset_;
  bm_device_mem_t logits_{};
  void check_steps(const std::vector<SlotStep>& steps, std::vector<char>& active) const;
  void zero_slot_buffers();
  void step_inputs(const std::vector<SlotStep>& steps, int keys, std::vector<int32_t>& ids, std::vector<int32_t>& pos,
                   std::vector<float>& mask) const;
  void embed_step(const std::vector<SlotStep>& steps, const std::vector<int32_t>& ids, size_t state_row);
  std::vector<StepResult> heads_step(const std::vector<SlotStep>& steps, size_t state_row);
  std::vector<StepResult> decode_slots(const std::vector<SlotStep>& steps);
  bm_device_mem_t ids_{};    // the step's token per slot
  bm_device_mem_t dlast_{};  // the last layer's states, a row per slot
  std::vector<bm_device_mem_t> new_k_, new_v_;  // per layer: the step's new K/V rows (3-output builds)
  std::vector<int> slot_length_;
  int last_decode_kv_length_ = 0;
};

class Verifier;  // verify.h: speculative verify steps (builds with the verify nets)

// One open model.  Members are freed in reverse order: the layout and parts (which own
// nothing on the device), then the Device, which frees every buffer before the handle.
struct Loaded {
  Loaded(const std::string& bmodel_path, int devid, DeviceStats& stats);

  Device dev;
  Model model;
  KvCache kv;
  Vision vision;
  Heads heads;
  Prefill prefill;
  std::unique_ptr<SingleLayout> single;  // single-sequence and history-KV builds
  std::unique_ptr<BatchLayout> batch;    // batch-N builds
  std::unique_ptr<Verifier> verifier;    // single-sequence builds with the verify nets
};

}  // namespace qwen3vl
