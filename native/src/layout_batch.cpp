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
  if (info_.batch_slot_kv) {
    // Prefill writes a slot's K and V at one offset from slot 0's buffers in every layer.
    const auto addr = [](bm_device_mem_t m) { return bm_mem_get_device_addr(m); };
    for (int s = 0; s < info_.batch; s++) {
      const Net& c0 = p_.model.caches[0];
      const auto off = addr(c0.in_mem(3 + 2 * s)) - addr(c0.in_mem(3));
      for (const Net& c : p_.model.caches)
        if (addr(c.in_mem(3 + 2 * s)) - addr(c.in_mem(3)) != off || addr(c.in_mem(4 + 2 * s)) - addr(c.in_mem(4)) != off)
          throw std::runtime_error("unsupported bmodel: " + c.name + "'s history inputs of slot " + std::to_string(s) +
                                   " do not sit at the same offset from slot 0's for K and V in every layer");
      slot_offset_.push_back(static_cast<size_t>(off));
    }
    zero_slot_buffers();
  }
  if (info_.batch_heads) logits_ = dev.alloc(p_.model.lm_batch.out_bytes(0));
}

void BatchLayout::zero_slot_buffers() {  // slot 0's are KvCache's
  const size_t bytes = static_cast<size_t>(info_.seq_len) * p_.kv.row_bytes();
  for (const Net& c : p_.model.caches)
    for (int s = 1; s < info_.batch; s++) {
      p_.dev.memset16(sub(c.in_mem(3 + 2 * s), 0, bytes), 0);
      p_.dev.memset16(sub(c.in_mem(4 + 2 * s), 0, bytes), 0);
    }
}

void BatchLayout::reset() {
  p_.kv.clear();
  if (info_.batch_slot_kv) zero_slot_buffers();
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
  const size_t region = info_.batch_slot_kv ? slot_offset_[static_cast<size_t>(slot)]
                                            : static_cast<size_t>(slot) * info_.seq_len * p_.kv.row_bytes();
  StepResult r = p_.heads.lm_head(p_.prefill.run(in, region));
  slot_length_[static_cast<size_t>(slot)] = L;
  return r;
}

// The step's slots exist, appear once, hold a prefill and have room for one more row.
void BatchLayout::check_steps(const std::vector<SlotStep>& steps, std::vector<char>& active) const {
  const int batch = info_.batch;
  if (steps.empty()) throw std::invalid_argument("decode_batch needs one token and one position per slot");
  active.assign(static_cast<size_t>(batch), 0);
  for (const SlotStep& st : steps) {
    const int s = st.slot;
    if (s < 0 || s >= batch) throw std::invalid_argument("slot " + std::to_string(s) + " outside [0, " + std::to_string(batch) + ")");
    if (active[static_cast<size_t>(s)]) throw std::invalid_argument("slot " + std::to_string(s) + " given twice");
    active[static_cast<size_t>(s)] = 1;
    const int len = slot_length_[static_cast<size_t>(s)];
    if (len <= 0) throw std::logic_error("decode of slot " + std::to_string(s) + " before its prefill");
    if (len >= info_.max_context)
      throw std::length_error("slot " + std::to_string(s) + "'s KV cache is full (SEQLEN " + std::to_string(info_.seq_len) +
                              (info_.batch_slot_kv ? ")" : ", the last row is the batch net's insertion row)"));
  }
}

// First-workaround ("concat") and one-output builds: one launch of each block_cache_i
// advances every slot.  Slots not stepped get a closed mask (only their own insertion row
// open), position 0 and last step's states row; their KV regions are untouched, since only
// the stepped slots' inserted rows are copied out.
std::vector<StepResult> BatchLayout::decode_batch(const std::vector<SlotStep>& steps) {
  if (info_.batch_slot_kv) return decode_slots(steps);
  const int S = info_.seq_len;
  std::vector<char> active;
  check_steps(steps, active);
  Device& dev = p_.dev;
  const Model& m = p_.model;
  last_decode_kv_length_ = S;
  const Net& c0 = m.caches[0];
  const bool kv_out = c0.info->output_num == 3;  // new K/V as outputs, else inserted at row SEQLEN-1
  const size_t state_row = static_cast<size_t>(info_.hidden_size) * dtype_size(c0.in_dtype(0));
  // embedding_cache is batch 1: one launch per stepped slot, into that slot's states row
  std::vector<int32_t> ids, pos;
  std::vector<float> mask;
  step_inputs(steps, S, ids, pos, mask);  // the inserted row last
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

// A step's token and positions per slot (0 for slots not stepped), and its mask: `keys`
// per slot, open over the slot's rows and its last key (the step's own row).
void BatchLayout::step_inputs(const std::vector<SlotStep>& steps, int keys, std::vector<int32_t>& ids,
                              std::vector<int32_t>& pos, std::vector<float>& mask) const {
  const size_t batch = static_cast<size_t>(info_.batch), K = static_cast<size_t>(keys);
  ids.assign(batch, 0);
  pos.assign(batch * 3, 0);
  mask.assign(batch * K, kMaskValue);
  for (size_t s = 0; s < batch; s++) mask[(s + 1) * K - 1] = 0.0f;
  for (const SlotStep& st : steps) {
    const size_t s = static_cast<size_t>(st.slot);
    ids[s] = st.token;
    for (size_t r = 0; r < 3; r++) pos[s * 3 + r] = st.position;
    std::fill(mask.begin() + static_cast<std::ptrdiff_t>(s * K),
              mask.begin() + static_cast<std::ptrdiff_t>(s * K + static_cast<size_t>(slot_length_[s])), 0.0f);
  }
}

// ---- "slots" builds: K/V written in place, embedding and lm_head once per step ----------

// The step's token ids into the batched states input of block_cache_0: one
// embedding_cache_batch launch, else one embedding_cache launch per stepped slot.
void BatchLayout::embed_step(const std::vector<SlotStep>& steps, const std::vector<int32_t>& ids, size_t state_row) {
  Device& dev = p_.dev;
  const Model& m = p_.model;
  const Net& c0 = m.caches[0];
  dev.s2d(ids_, ids.data(), ids.size() * 4);
  if (info_.batch_heads) {
    bm_tensor_t in = tensor(ids_, m.embc_batch.in_dtype(0), m.embc_batch.in_shape(0));
    bm_tensor_t out = tensor(c0.in_mem(0), m.embc_batch.out_dtype(0), m.embc_batch.out_shape(0));
    dev.launch(m.embc_batch, &in, 1, &out, 1);
    return;
  }
  for (const SlotStep& st : steps) {
    const size_t s = static_cast<size_t>(st.slot);
    bm_tensor_t in = tensor(sub(ids_, s * 4, 4), m.embc.in_dtype(0), make_shape({1, 1}));
    bm_tensor_t out = tensor(sub(c0.in_mem(0), s * state_row, state_row), m.embc.out_dtype(0), m.embc.out_shape(0));
    dev.launch(m.embc, &in, 1, &out, 1);
  }
}

// The last layer's states of every slot through lm_head_batch (one launch, one wait), each
// stepped slot's row read back; else lm_head once per stepped slot.
std::vector<StepResult> BatchLayout::heads_step(const std::vector<SlotStep>& steps, size_t state_row) {
  std::vector<StepResult> results;
  results.reserve(steps.size());
  if (!info_.batch_heads) {
    for (const SlotStep& st : steps)
      results.push_back(p_.heads.lm_head(sub(dlast_, static_cast<size_t>(st.slot) * state_row, state_row)));
    return results;
  }
  Device& dev = p_.dev;
  const Net& lm = p_.model.lm_batch;
  bm_tensor_t in = tensor(dlast_, lm.in_dtype(0), lm.in_shape(0));
  bm_tensor_t out = tensor(logits_, lm.out_dtype(0), lm.out_shape(0));
  dev.launch(lm, &in, 1, &out, 1);
  dev.sync();
  const size_t width = static_cast<size_t>(lm.out_shape(0).dims[1]);
  const size_t row = width * dtype_size(lm.out_dtype(0));
  for (const SlotStep& st : steps) {
    const size_t at = static_cast<size_t>(st.slot) * row;
    StepResult r;
    if (info_.lm_head_logits) {
      r.logits.resize(width);
      if (lm.out_dtype(0) == BM_FLOAT32) {
        dev.d2s_at(r.logits.data(), logits_, at, row);
      } else {
        std::vector<uint8_t> raw(row);
        dev.d2s_at(raw.data(), logits_, at, row);
        decode_floats(raw.data(), width, lm.out_dtype(0), r.logits.data());
      }
    } else {
      int32_t tok = 0;
      dev.d2s_at(&tok, logits_, at, 4);
      r.token = tok;
    }
    results.push_back(std::move(r));
  }
  return results;
}

// One launch of each block_cache_i advances every slot.  Slot s attends over its own
// history inputs plus its new row (placed right after them by the compiler); the net's
// k_cache_s / v_cache_s outputs go straight to row len_s of slot s's history, so no row is
// moved afterwards.  Slots not stepped: position 0, a mask opening only their new row, and
// their new rows left in the net's own output buffers (their history is not written).
std::vector<StepResult> BatchLayout::decode_slots(const std::vector<SlotStep>& steps) {
  const int batch = info_.batch, S = info_.seq_len;
  std::vector<char> active;
  check_steps(steps, active);
  Device& dev = p_.dev;
  const Model& m = p_.model;
  last_decode_kv_length_ = S;
  const Net& c0 = m.caches[0];
  const size_t state_row = static_cast<size_t>(info_.hidden_size) * dtype_size(c0.in_dtype(0));
  const int M = S + 1;  // keys per slot: the history, then the new row
  std::vector<int32_t> ids, pos;
  std::vector<float> mask;
  step_inputs(steps, M, ids, pos, mask);  // the new row last
  embed_step(steps, ids, state_row);
  dev.s2d(c0.in_mem(1), pos.data(), pos.size() * 4);
  const auto enc = encode_floats(mask.data(), mask.size(), c0.in_dtype(2));
  dev.s2d(c0.in_mem(2), enc.data(), enc.size());
  const size_t kv_row = p_.kv.row_bytes();
  const int nio = 1 + 2 * batch;
  std::vector<bm_tensor_t> in(static_cast<size_t>(nio + 2)), out(static_cast<size_t>(nio));
  for (int l = 0; l < info_.num_layers; l++) {
    const Net& n = m.caches[static_cast<size_t>(l)];
    in[0] = tensor(n.in_mem(0), n.in_dtype(0), n.in_shape(0));
    in[1] = tensor(c0.in_mem(1), n.in_dtype(1), n.in_shape(1));  // positions and mask: layer 0's copy
    in[2] = tensor(c0.in_mem(2), n.in_dtype(2), n.in_shape(2));
    const bm_device_mem_t next = l + 1 < info_.num_layers ? m.caches[static_cast<size_t>(l) + 1].in_mem(0) : dlast_;
    out[0] = tensor(next, n.out_dtype(0), n.out_shape(0));
    for (int s = 0; s < batch; s++) {
      const size_t su = static_cast<size_t>(s);
      for (int w = 0; w < 2; w++) {  // K, then V
        const int i = 3 + 2 * s + w, o = 1 + 2 * s + w;
        const bm_device_mem_t hist = n.in_mem(i);
        in[static_cast<size_t>(i)] = tensor(hist, n.in_dtype(i), n.in_shape(i));
        const bm_device_mem_t dst = active[su] ? sub(hist, static_cast<size_t>(slot_length_[su]) * kv_row, kv_row)
                                               : n.info->stages[0].output_mems[o];
        out[static_cast<size_t>(o)] = tensor(dst, n.out_dtype(o), n.out_shape(o));
      }
    }
    dev.launch(n, in.data(), nio + 2, out.data(), nio);
  }
  std::vector<StepResult> results = heads_step(steps, state_row);
  for (const SlotStep& st : steps) slot_length_[static_cast<size_t>(st.slot)]++;
  return results;
}

}  // namespace qwen3vl
