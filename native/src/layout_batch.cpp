#include <algorithm>
#include <stdexcept>

#include "layouts.h"

namespace qwen3vl {

BatchLayout::BatchLayout(const Parts& parts) : p_(parts), info_(parts.model.info) {
  Device& dev = p_.dev;
  dlast_ = dev.alloc(static_cast<size_t>(info_.batch) * p_.model.hidden_row_bytes());
  ids_ = dev.alloc(static_cast<size_t>(info_.batch) * 4);
  if (p_.model.caches[0].info->output_num == 3)
    for (const Net& c : p_.model.caches) {
      new_k_.push_back(dev.alloc(c.out_bytes(1)));
      new_v_.push_back(dev.alloc(c.out_bytes(2)));
    }
  slot_length_.assign(static_cast<size_t>(info_.batch), 0);
  // slots not in a step still run through the layers: their states rows must be finite
  dev.memset16(p_.model.caches[0].in_mem(0), 0);
}

void BatchLayout::reset() {
  p_.kv.clear();
  std::fill(slot_length_.begin(), slot_length_.end(), 0);
}

// Rows of a slot past its length are never zeroed: the decode mask closes them and they
// hold finite values (zeros from load, or K/V an earlier sequence computed).
StepResult BatchLayout::prefill_slot(int slot, const PrefillInputs& in) {
  if (slot < 0 || slot >= info_.batch)
    throw std::invalid_argument("slot " + std::to_string(slot) + " outside [0, " + std::to_string(info_.batch) + ")");
  const int L = static_cast<int>(in.ids.size);
  if (L > info_.max_input_length)
    throw std::invalid_argument("prompt of " + std::to_string(L) + " tokens exceeds MAX_INPUT_LENGTH " +
                                std::to_string(info_.max_input_length));
  p_.prefill.check(in);
  slot_length_[static_cast<size_t>(slot)] = 0;
  const size_t region = static_cast<size_t>(slot) * info_.seq_len * p_.kv.row_bytes();
  StepResult r = p_.heads.lm_head(p_.prefill.run(in, region));
  slot_length_[static_cast<size_t>(slot)] = L;
  return r;
}

// One launch of each block_cache_i advances every slot.  Slots not stepped get a closed
// mask (only their own insertion row open), position 0 and last step's states row; their
// KV regions are untouched, since only the stepped slots' inserted rows are copied out.
std::vector<StepResult> BatchLayout::decode_batch(const std::vector<SlotStep>& steps) {
  const int batch = info_.batch, S = info_.seq_len;
  if (steps.empty()) throw std::invalid_argument("decode_batch needs one token and one position per slot");
  std::vector<char> active(static_cast<size_t>(batch), 0);
  for (const SlotStep& st : steps) {
    const int s = st.slot;
    if (s < 0 || s >= batch) throw std::invalid_argument("slot " + std::to_string(s) + " outside [0, " + std::to_string(batch) + ")");
    if (active[static_cast<size_t>(s)]) throw std::invalid_argument("slot " + std::to_string(s) + " given twice");
    active[static_cast<size_t>(s)] = 1;
    const int len = slot_length_[static_cast<size_t>(s)];
    if (len <= 0) throw std::logic_error("decode of slot " + std::to_string(s) + " before its prefill");
    if (len >= S - 1)
      throw std::length_error("slot " + std::to_string(s) + "'s KV cache is full (SEQLEN " + std::to_string(S) +
                              ", the last row is the batch net's insertion row)");
  }
  Device& dev = p_.dev;
  const Model& m = p_.model;
  last_decode_kv_length_ = S;
  const Net& c0 = m.caches[0];
  const bool kv_out = c0.info->output_num == 3;  // new K/V as outputs, else inserted at row SEQLEN-1
  const size_t state_row = static_cast<size_t>(info_.hidden_size) * dtype_size(c0.in_dtype(0));
  // embedding_cache is batch 1: one launch per stepped slot, into that slot's states row
  std::vector<int32_t> ids(static_cast<size_t>(batch), 0);
  std::vector<int32_t> pos(static_cast<size_t>(batch) * 3, 0);
  std::vector<float> mask(static_cast<size_t>(batch) * S, kMaskValue);
  for (int s = 0; s < batch; s++) mask[static_cast<size_t>(s + 1) * S - 1] = 0.0f;  // the inserted row
  for (const SlotStep& st : steps) {
    const size_t s = static_cast<size_t>(st.slot);
    ids[s] = st.token;
    for (int r = 0; r < 3; r++) pos[s * 3 + static_cast<size_t>(r)] = st.position;
    std::fill(mask.begin() + static_cast<std::ptrdiff_t>(s * S),
              mask.begin() + static_cast<std::ptrdiff_t>(s * S + static_cast<size_t>(slot_length_[s])), 0.0f);
  }
  dev.s2d(ids_, ids.data(), ids.size() * 4);
  for (const SlotStep& st : steps) {
    const size_t s = static_cast<size_t>(st.slot);
    bm_tensor_t in = tensor(sub(ids_, s * 4, 4), m.embc.in_dtype(0), make_shape({1, 1}));
    bm_tensor_t out = tensor(sub(c0.in_mem(0), s * state_row, state_row), m.embc.out_dtype(0), m.embc.out_shape(0));
    dev.launch(m.embc, &in, 1, &out, 1);
  }
  dev.s2d(c0.in_mem(1), pos.data(), pos.size() * 4);
  const auto enc = encode_floats(mask.data(), mask.size(), c0.in_dtype(2));
  dev.s2d(c0.in_mem(2), enc.data(), enc.size());
  for (int l = 0; l < info_.num_layers; l++) {
    const Net& n = m.caches[static_cast<size_t>(l)];
    bm_tensor_t in[5];
    in[0] = tensor(n.in_mem(0), n.in_dtype(0), n.in_shape(0));
    in[1] = tensor(c0.in_mem(1), n.in_dtype(1), n.in_shape(1));  // positions and mask: layer 0's copy
    in[2] = tensor(c0.in_mem(2), n.in_dtype(2), n.in_shape(2));
    in[3] = tensor(p_.kv.k(l), n.in_dtype(3), n.in_shape(3));
    in[4] = tensor(p_.kv.v(l), n.in_dtype(4), n.in_shape(4));
    const bm_device_mem_t next = l + 1 < info_.num_layers ? m.caches[static_cast<size_t>(l) + 1].in_mem(0) : dlast_;
    bm_tensor_t out[3];
    out[0] = tensor(next, n.out_dtype(0), n.out_shape(0));
    if (kv_out) {
      out[1] = tensor(new_k_[static_cast<size_t>(l)], n.out_dtype(1), n.out_shape(1));
      out[2] = tensor(new_v_[static_cast<size_t>(l)], n.out_dtype(2), n.out_shape(2));
    }
    dev.launch(n, in, 5, out, kv_out ? 3 : 1);
  }
  // lm_head is batch 1: one launch per stepped slot (each waits for its result)
  std::vector<StepResult> results;
  results.reserve(steps.size());
  for (const SlotStep& st : steps)
    results.push_back(p_.heads.lm_head(sub(dlast_, static_cast<size_t>(st.slot) * state_row, state_row)));
  // each slot's new K/V row (an output row, or inserted by the net at the slot's row
  // SEQLEN-1) goes to the slot's next row
  const size_t kv_row = p_.kv.row_bytes();
  for (const SlotStep& st : steps) {
    const size_t s = static_cast<size_t>(st.slot);
    const size_t base = s * S * kv_row;
    const size_t to = base + static_cast<size_t>(slot_length_[s]) * kv_row;
    for (int l = 0; l < info_.num_layers; l++) {
      const size_t li = static_cast<size_t>(l);
      const bm_device_mem_t k = p_.kv.k(l), v = p_.kv.v(l);
      if (kv_out) {
        dev.d2d(k, to, new_k_[li], s * kv_row, kv_row);
        dev.d2d(v, to, new_v_[li], s * kv_row, kv_row);
      } else {
        const size_t from = base + static_cast<size_t>(S - 1) * kv_row;
        dev.d2d(k, to, k, from, kv_row);
        dev.d2d(v, to, v, from, kv_row);
      }
    }
    slot_length_[s]++;
  }
  return results;
}

}  // namespace qwen3vl
