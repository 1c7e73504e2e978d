// Model: the networks of a loaded Qwen3-VL bmodel and what their tensor shapes say.
//
// The bmodel holds one network per stage of the model (see README.md): `embedding`,
// `embedding_cache`, `vit`, `block_i`, `block_cache_i`, `lm_head`, `add` (+ optional
// heads, + `block_kv_i` in history-KV builds).  Everything that is a shape -- SEQLEN,
// MAX_INPUT_LENGTH, hidden size, vit patches, KV heads, the batch -- is read here, and a
// layout this code does not run is refused with a message naming what was found and what
// is supported.  Read-only once built: every other part gets it as `const Model&`.
#pragma once

#include <string>
#include <vector>

#include "device.h"
#include "types.h"

namespace qwen3vl {

struct Model {
  Model(const Device& dev, const std::string& bmodel_path);

  std::string path;
  ModelInfo info;
  Net emb, embc, lm, vit, add, greedy, sample;
  Net embc_batch, lm_batch;  // batch-N builds of our converter wrapper: the step's embedding and lm_head for all slots
  std::vector<Net> blocks, caches;
  std::vector<Net> kv_blocks;  // history-KV builds: block_kv_i
  // block_cache stage numbers: decode_stages[i] is stage cache_stage_index[i]; the KV cache
  // is the history inputs of stage cache_full_stage (SEQLEN rows)
  std::vector<int> cache_stage_index;
  int cache_full_stage = 0;

  bm_data_type_t hidden_dtype() const { return emb.out_dtype(0); }
  size_t hidden_row_bytes() const { return static_cast<size_t>(info.hidden_size) * dtype_size(hidden_dtype()); }
  bool prefill_mask() const { return blocks[0].info->input_num >= 3; }  // block_i takes a causal mask

 private:
  void read(const Device& dev);
  void read_cache_stages();
  void read_batch_cache();
  void read_batch_slot_cache();
  void read_batch_heads();
  void read_history_blocks(const Device& dev);
  void read_vit();
  void read_stage_inputs();
  [[noreturn]] void unsupported(const std::string& found) const;
};

}  // namespace qwen3vl
