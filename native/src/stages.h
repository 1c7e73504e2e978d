// The parts every layout shares (layouts.h): the KV cache, the vision encoder, the prompt
// path through embedding and the prefill blocks, and the heads over the last hidden row.
//
// Each part allocates its device buffers from the Device when it is built (the Device
// owns and frees them) and runs only on the networks the Model checked at load.  None
// locks: the Runtime serialises calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "device.h"
#include "model.h"
#include "types.h"

namespace qwen3vl {

constexpr float kMaskValue = -10000.0f;  // additive attention mask for "cannot attend"

// The KV cache: per layer, the K and V history inputs of block_cache_i's largest stage --
// the nets' own buffers, so a decode step writes its new row in place and moves nothing.
// Rows [0, rows()); batch-N builds give slot s rows [s*SEQLEN, (s+1)*SEQLEN), except
// "slots" builds, whose slots have buffers of their own (this is slot 0's: layout_batch.cpp).
//
// Every decode step attends over all history rows, hiding unused ones with an additive
// mask, so a NaN/Inf in an unused row would poison the softmax: rows never written must
// hold zeros.  Built zeroed (device memory is not zeroed by the allocator on a real box).
// Rows an earlier sequence wrote hold finite K/V, which the mask closes: a new prefill
// leaves them as they are (no memsets per prefill).  Only after fill() (a test hook making
// the memory look like a box's at power-on) may rows hold anything: `unwritten_rows`.
class KvCache {
 public:
  KvCache(Device& dev, const Model& model);

  bm_device_mem_t k(int layer) const { return k_[static_cast<size_t>(layer)]; }
  bm_device_mem_t v(int layer) const { return v_[static_cast<size_t>(layer)]; }
  size_t row_bytes() const { return row_bytes_; }
  int rows() const { return rows_; }

  void zero(int from, int to);  // rows [from, to) of every layer's K and V
  void clear();                 // every row zero (no sync)
  // Rows [0, n) may hold what no step wrote (non-finite values): the next prefill zeroes
  // those past its own rows.  0 except after fill().
  int unwritten_rows() const { return unwritten_rows_; }
  void set_unwritten_rows(int n) { unwritten_rows_ = n; }

  // Every byte of every buffer set to a 16-bit pattern (all rows unwritten then; no sync),
  // and the raw contents of one buffer (which: 0 = K, 1 = V).
  void fill(uint16_t pattern);
  std::vector<uint16_t> read(int layer, int which);

 private:
  Device& dev_;
  std::vector<bm_device_mem_t> k_, v_;  // not owned: the nets' own inputs
  size_t row_bytes_ = 0;
  int rows_ = 0;
  int unwritten_rows_ = 0;
};

// A run of consecutive prompt rows filled by vision embeddings.
struct VisualRun {
  size_t first;  // index of the run's first vision token
  int row;       // prompt row it starts at
  int count;     // rows in the run
};

// Runs of consecutive rows in `vis_pos` (the prompt rows of the vision tokens, in order).
std::vector<VisualRun> visual_runs(const View<int32_t>& vis_pos);

// The vision encoder: each call's pixels through `vit`, its output rows copied on the
// device to their prompt rows.  The vit mask is uploaded only when its key changes.
class Vision {
 public:
  Vision(Device& dev, const Model& model);

  // Every vit call's rows go, on the device, to their prompt rows: the merged embeddings
  // into `hidden`, deepstack feature i into `deepstack[i]` (zeros elsewhere).  Calls with
  // `capture` keep their rows in last_rows().
  void encode(const PrefillInputs& in, const std::vector<VisualRun>& runs, bm_device_mem_t hidden,
              const std::vector<bm_device_mem_t>& deepstack);
  // Per vit call of the last prefill: its output rows (VitCall::cached's layout) when the
  // call asked for them, else empty.  start() begins a prefill of `calls` calls.
  void start(size_t calls) { last_rows_.assign(calls, {}); }
  const std::vector<std::vector<uint16_t>>& last_rows() const { return last_rows_; }

 private:
  Device& dev_;
  const Model& model_;
  std::vector<bm_device_mem_t> in_, out_;
  std::string mask_key_;  // the vit mask on the device
  std::vector<std::vector<uint16_t>> last_rows_;

  void run(const VitCall& call);
};

// lm_head over one hidden row, then what the plan (HeadPlan) runs over the logits it
// leaves on the device: nothing (the logits go to the host), greedy_head or sample_head
// (--do_sample builds).  One wait for the device per step either way.  On the simulator
// the sort-based heads take minutes per call.
class Heads {
 public:
  Heads(Device& dev, const Model& model);

  // From now on steps end as `plan` says.  `history`: the sequence's ids so far (the
  // prompt), which sample_head's repetition penalty covers; decode steps add theirs with
  // fed().  Uploads the plan's scalars and ids once, not per step.
  void set_plan(const HeadPlan& plan, const std::vector<int32_t>& history);
  const HeadPlan& plan() const { return plan_; }
  void fed(int32_t token);  // a decode step's input token joins the history

  StepResult lm_head(bm_device_mem_t hidden_row);  // lm_head + the plan's head; waits, reads the result
  StepResult logits();  // the last step's logits, read from the device again (no launch)

 private:
  Device& dev_;
  const Model& model_;
  HeadPlan plan_;
  bm_device_mem_t logits_{};
  bm_device_mem_t tok_{}, s_ids_{}, s_penalty_{}, s_temp_{}, s_topk_{}, s_topp_{}, s_out_{};
  size_t s_probs_bytes_ = 0;  // s_out_ holds sample_head's probabilities, then its ids
  int hist_len_ = 0;          // ids in s_ids_ (dynamic sample_head: the input's length)
  int hist_cap_ = 0;          // ids s_ids_ holds at most
  bool logits_valid_ = false;

  StepResult read_logits();
  Candidates greedy();
  Candidates sample();
};

// Where a history-KV chunk's K/V go when they would not fit at the cache's end.
struct KvSpare {
  bm_device_mem_t k{}, v{};
};

// The prompt path: token ids through `embedding`, vision rows placed, positions and the
// causal mask uploaded, then every layer's prefill block (its K/V straight into the cache)
// with deepstack added in between.  Layouts run a whole prompt with run(), or a chunk at a
// time with the steps below it.
class Prefill {
 public:
  Prefill(Device& dev, const Model& model, KvCache& kv, Vision& vision);

  // The arrays agree with each other and the bmodel (the prompt length is the layout's to check).
  void check(const PrefillInputs& in) const;
  // A prompt of at most MAX_INPUT_LENGTH rows, its K/V at byte `kv_offset` of every layer's
  // cache buffers; returns the last prompt row's final hidden states.
  bm_device_mem_t run(const PrefillInputs& in, size_t kv_offset);

  // ---- steps ----
  void embed(const View<int32_t>& ids, bm_device_mem_t dst);  // token ids -> hidden rows at `dst`
  // Positions [3, rows] (the first L given) and, when the blocks take one, the causal mask.
  void upload_positions_and_mask(const View<int32_t>& pos3, int L, int rows);
  // `rows` rows (states in hidden(0), positions and mask uploaded) through every layer; their
  // K/V go into the cache at row `history` of the region at byte `kv_offset`.  With history
  // > 0 (history-KV builds) block_kv_i attends to the rows before them and `spare` takes
  // K/V that would not fit.  Deepstack is added over `runs` (rows relative to hidden(0)).
  // Returns the index of the hidden buffer holding the last layer's states.
  int run_layers(int rows, size_t kv_offset, const std::vector<VisualRun>& runs, int history = 0,
                 const KvSpare* spare = nullptr);
  bm_device_mem_t hidden(int i) const { return hid_[i]; }
  const std::vector<bm_device_mem_t>& deepstack() const { return deepstack_; }

 private:
  Device& dev_;
  const Model& model_;
  KvCache& kv_;
  Vision& vision_;
  bm_device_mem_t ids_{}, pos_{}, mask_{}, hid_[2]{};
  std::vector<bm_device_mem_t> deepstack_;
  bool mask_ready_ = false;  // prefill causal mask on the device (static builds)

  int add_deepstack(int cur, int layer, const std::vector<VisualRun>& runs);
};

}  // namespace qwen3vl
