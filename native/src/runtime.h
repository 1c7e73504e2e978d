// Runtime: one device handle, one loaded Qwen3-VL bmodel, its device buffers and the
// prefill / decode / vision calls.  No Python here: bindings.cpp exposes it.
//
// The bmodel holds one network per stage of the model (see README.md): `embedding`,
// `embedding_cache`, `vit`, `block_i`, `block_cache_i`, `lm_head`, `add` (+ optional
// heads).  Everything that is a shape -- SEQLEN, MAX_INPUT_LENGTH, hidden size, vit
// patches, KV heads -- is read from the networks' tensor shapes when the model is loaded,
// and a layout this code does not run is refused there with a message naming both.
//
// Decode follows the vendor's device path: the KV cache *is* the `block_cache_i` nets' own
// history input buffers; each step writes the new K/V row straight into them, so a token
// costs embedding + layers + lm_head launches and no device-to-device copies.
// Batch-N builds (llm_convert -b N) give each of N slots its own region of those
// buffers: prefill_slot fills one slot, decode_batch advances several in one launch per
// layer (docs/batching.md).
// History-KV builds (llm_convert --use_history_kv) also have `block_kv_i`: a prefill chunk
// on top of the rows the cache already holds.  Their prefill runs a prompt of any length
// in chunks of MAX_INPUT_LENGTH and can keep a leading part of the cache (the previous
// turn of a chat): only the rows after it are computed (docs/multi-turn.md).
//
// A mutex makes concurrent calls on one object safe (they serialise), and close() frees
// every device buffer before the runtime and the handle, so a process can load and
// unload models repeatedly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "bm_api.h"

namespace qwen3vl {

// One network of the bmodel, looked up by name (absent when info is null).
struct Net {
  const bm_net_info_t* info = nullptr;
  std::string name;
  bool present() const { return info != nullptr; }
  const bm_shape_t& in_shape(int i, int stage = 0) const { return info->stages[stage].input_shapes[i]; }
  const bm_shape_t& out_shape(int i, int stage = 0) const { return info->stages[stage].output_shapes[i]; }
  bm_device_mem_t in_mem(int i, int stage = 0) const { return info->stages[stage].input_mems[i]; }
  bm_data_type_t in_dtype(int i) const { return info->input_dtypes[i]; }
  bm_data_type_t out_dtype(int i) const { return info->output_dtypes[i]; }
  size_t in_bytes(int i, int stage = 0) const;
  size_t out_bytes(int i, int stage = 0) const;
};

// A read-only view of caller-owned memory (a numpy buffer kept alive by the bindings).
template <typename T>
struct View {
  const T* data = nullptr;
  size_t size = 0;
  bool empty() const { return size == 0; }
};

// One call of the vision encoder (arrays already padded for static builds).
struct VitCall {
  View<float> pixels;       // [P, patch_dim]
  View<int32_t> pos_ids;    // [P, 2]
  View<int32_t> pos_idx;    // [P, 4]
  View<float> pos_weight;   // [P, 4]
  View<float> mask;         // [P, P], or empty (dynamic builds)
  std::string mask_key;     // equal keys mean equal masks: the device copy is reused
  int tokens = 0;           // output rows that belong to the prompt
  // Rows [tokens, hidden] of every vit output (16-bit, output after output) kept from an
  // earlier call of the same input: placed without launching the vit.
  View<uint16_t> cached;
  bool capture = false;  // keep this call's output rows in Runtime::last_vit_rows
};

// The inputs of one prefill.
struct PrefillInputs {
  View<int32_t> ids;
  View<int32_t> pos3;     // [3, L]
  View<int32_t> vis_pos;  // prompt rows of the vision tokens, in vit output order
  std::vector<VitCall> vit_calls;
};

// A run of consecutive prompt rows filled by vision embeddings.
struct VisualRun {
  size_t first;  // index of the run's first vision token
  int row;       // prompt row it starts at
  int count;     // rows in the run
};

// Tokens chosen by a device head (sample_head): probabilities and ids of the candidates.
struct Candidates {
  std::vector<float> probs;
  std::vector<int32_t> ids;
};

// Per network: launches and the milliseconds they took to return.
struct NetTiming {
  long calls = 0;
  double ms = 0.0;
};

// What the host asked of the device since the last reset (the per-token cost figures).
struct DeviceCounters {
  long launches = 0;
  long d2d_copies = 0;
  long s2d_copies = 0;
  long d2s_copies = 0;
  long long s2d_bytes = 0;
  long long d2s_bytes = 0;
  long memsets = 0;
  long syncs = 0;
};

class Runtime {
 public:
  Runtime(const std::string& bmodel_path, int devid);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Device buffers must be freed before the process exits (the device memory pool asserts
  // otherwise), even when Python never collected an engine.
  static void close_all();
  void close();
  bool closed() const { return rt_ == nullptr; }

  // ---- shapes read from the bmodel ----
  int seq_len = 0;           // KV cache length (max context)
  int max_input_length = 0;  // prefill length
  int hidden_size = 0;
  int num_layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;  // 0 when lm_head returns a token id
  bool lm_head_logits = false;
  int vit_patches = 0;  // 0 when there is no vision encoder
  int vit_outputs = 0;  // 1 + number of deepstack features
  int vit_patch_dim = 0;
  int vit_inputs = 0;
  bool vit_dynamic = false;
  bool has_add = false;  // deepstack added on the device by the `add` net
  bool has_greedy_head = false;  // device-side heads over the last logits (--do_sample builds)
  bool has_sample_head = false;
  int sample_candidates = 0;  // sample_head's top-k width
  bool prefill_dynamic = false;
  bool history_kv = false;  // block_kv_i present: chunked prefill that can keep cached rows
  std::vector<int> decode_stages;  // KV lengths of block_cache's stages, ascending
  int token_length = 0;            // tokens in the KV cache
  // Batch-N builds (llm_convert -b N): block_cache_i runs N slots at once; prefill stays
  // batch 1 and fills one slot.  1 for the single-sequence layout.
  int batch = 1;
  int last_decode_kv_length = 0;   // history length of the block_cache stage the last step ran
  std::vector<std::string> networks;
  // Per vit call of the last prefill: its output rows (VitCall::cached's layout) when the
  // call asked for them, else empty.
  std::vector<std::vector<uint16_t>> last_vit_rows;
  std::string path_;
  int devid_;

  // ---- calls ----
  // Each returns the token id chosen by lm_head, or -1 with float32 logits in `logits`.
  // prefill keeps the first `keep` cached rows (history-KV builds; 0 elsewhere) and runs
  // `in` -- the prompt after them, positions absolute -- on top.
  int prefill(const PrefillInputs& in, std::vector<float>& logits, int keep = 0);
  int decode(int32_t token, int32_t position, std::vector<float>& logits);
  // Batch-N builds: the whole prompt into `slot`'s KV region (replacing what it held).
  int prefill_slot(int slot, const PrefillInputs& in, std::vector<float>& logits);
  // Batch-N builds: one decode step for `slots` (each fed its token at its position; the
  // other slots ride along masked).  One result per slot, as prefill/decode return them.
  std::vector<int> decode_batch(const std::vector<int>& slots, const std::vector<int32_t>& tokens,
                                const std::vector<int32_t>& positions, std::vector<std::vector<float>>& logits);
  std::vector<int> slot_lengths();  // tokens in each slot's KV region
  // Empty the KV cache (zeros on the device).
  void reset();
  // Device-side heads over the logits of the last prefill/decode (still on the device).
  int greedy_last();
  Candidates sample_last(const std::vector<int32_t>& history, float penalty, float temperature, int32_t top_k,
                         float top_p);

  std::map<std::string, NetTiming> timings();
  void reset_timings();
  DeviceCounters counters();
  void reset_counters();

  // ---- test hooks: make the simulator's device memory look like a real box's ----
  // Fill every KV cache buffer with a 16-bit pattern (e.g. bf16 NaN 0x7FC0), as unzeroed
  // device memory may hold; the runtime must then treat every row as dirty.
  void test_fill_kv_cache(uint16_t pattern);
  // The raw 16-bit contents of layer `layer`'s K (which=0) or V (which=1) cache.
  std::vector<uint16_t> test_read_kv_cache(int layer, int which);

 private:
  std::mutex mu_;
  bm_handle_t handle_ = nullptr;
  void* rt_ = nullptr;
  std::vector<bm_device_mem_t> owned_;
  Net emb_, embc_, lm_, vit_, add_, greedy_, sample_;
  std::vector<Net> blocks_, caches_, kv_blocks_;
  int cache_full_stage_ = 0;     // the block_cache stage whose history holds SEQLEN rows
  std::vector<int> cache_stage_index_;  // decode_stages[i] -> block_cache stage number
  bool logits_valid_ = false;
  bm_device_mem_t tok_{}, s_ids_{}, s_penalty_{}, s_temp_{}, s_topk_{}, s_topp_{}, s_probs_{}, s_idx_{};
  bm_device_mem_t ids_{}, pos_{}, mask_{}, hid_[2]{}, logits_{};
  bm_device_mem_t id1_{}, dlast_{};
  std::vector<bm_device_mem_t> kcache_, vcache_;  // the block_cache nets' history inputs (not owned)
  std::vector<bm_device_mem_t> vit_in_, vit_out_, deepstack_;
  // history-KV builds: the whole prompt's embedding and deepstack rows (a vision block may
  // straddle two chunks), and a chunk's K/V when it would not fit at the cache's end
  bm_device_mem_t prompt_hid_{};
  std::vector<bm_device_mem_t> prompt_ds_;
  bm_device_mem_t kv_tail_[2]{};
  bm_device_mem_t batch_ids_{};        // batch builds: the step's token per slot
  std::vector<bm_device_mem_t> batch_new_k_, batch_new_v_;  // per layer: the step's new K/V rows (3-output builds)
  std::vector<int> slot_length_;       // batch builds: tokens in each slot's KV region
  int kv_dirty_rows_ = 0;       // rows [0, n) of the KV cache may hold anything but zeros
  bool mask_ready_ = false;     // prefill causal mask on the device (static builds)
  int dmask_stage_ = -1;        // decode mask on the device: for this stage ...
  int dmask_rows_ = 0;          // ... with rows [0, n) open
  std::string vit_mask_key_;    // the vit mask on the device
  std::mutex stats_mu_;
  std::map<std::string, NetTiming> timings_;
  DeviceCounters counters_;

  // loading
  void open();
  void read_layout();
  void allocate_buffers();
  void close_locked();
  void check_open() const;
  Net net(const std::string& name, bool required);

  // KV cache
  void zero_kv_rows(int from, int to);

  // prefill steps
  void check_prefill(const PrefillInputs& in, int keep) const;
  int run_prefill(const PrefillInputs& in, size_t kv_offset, std::vector<float>& logits);
  int run_prefill_chunked(const PrefillInputs& in, int keep, std::vector<float>& logits);
  void read_batch_layout();
  void read_history_layout();
  void embed_prompt(const View<int32_t>& ids, bm_device_mem_t dst);
  std::vector<VisualRun> visual_runs(const View<int32_t>& vis_pos) const;
  void encode_vision(const PrefillInputs& in, const std::vector<VisualRun>& runs, bm_device_mem_t hidden,
                     const std::vector<bm_device_mem_t>& deepstack);
  void run_vit(const VitCall& call);
  void upload_positions_and_mask(const View<int32_t>& pos3, int L, int rows);
  int run_layers(int rows, int history, size_t kv_offset, const std::vector<VisualRun>& runs);
  int add_deepstack(int cur, int layer, const std::vector<VisualRun>& runs);
  int run_lm_head(bm_device_mem_t hidden_row, std::vector<float>& logits);

  // decode steps
  int decode_stage() const;
  void upload_decode_mask(int stage);

  // device memory helpers (every transfer is counted)
  bm_device_mem_t alloc(size_t bytes);
  void s2d(bm_device_mem_t dst, const void* src, size_t bytes);
  void s2d_at(bm_device_mem_t dst, size_t offset, const void* src, size_t bytes);
  void d2s_at(void* dst, bm_device_mem_t src, size_t offset, size_t bytes);
  void d2d(bm_device_mem_t dst, size_t dst_offset, bm_device_mem_t src, size_t src_offset, size_t bytes);
  void memset16(bm_device_mem_t mem, uint16_t pattern);
  void sync();
  void launch(const Net& n, bm_tensor_t* in, int nin, bm_tensor_t* out, int nout);
};

}  // namespace qwen3vl
