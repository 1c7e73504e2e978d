#include <algorithm>
#include <stdexcept>

#include "layouts.h"

namespace qwen3vl {

SingleLayout::SingleLayout(const Parts& parts) : p_(parts), info_(parts.model.info) {
  id1_ = p_.dev.alloc(4);
  dlast_ = p_.dev.alloc(p_.model.hidden_row_bytes());
}

// ---- prefill ---------------------------------------------------------------------------

void SingleLayout::check_length(int keep, int L) const {
  if (keep > 0) throw std::invalid_argument("only a --use_history_kv bmodel prefills on top of cached rows");
  if (L > info_.max_input_length)
    throw std::invalid_argument("prompt of " + std::to_string(L) + " tokens exceeds MAX_INPUT_LENGTH " +
                                std::to_string(info_.max_input_length));
}

StepResult SingleLayout::prefill(const PrefillInputs& in, int keep) {
  if (keep < 0 || keep > token_length_)
    throw std::invalid_argument("cannot keep " + std::to_string(keep) + " rows: the cache holds " +
                                std::to_string(token_length_));
  check_length(keep, static_cast<int>(in.ids.size));
  p_.prefill.check(in);
  token_length_ = 0;
  dmask_stage_ = -1;
  const int end = keep + static_cast<int>(in.ids.size);
  // Rows past the ones this prefill writes keep what an earlier sequence left there (finite
  // K/V the decode mask closes); only rows nothing ever wrote are zeroed (KvCache).
  const int rows = info_.prefill_dynamic ? end : info_.max_input_length;
  p_.kv.zero(rows, p_.kv.unwritten_rows());
  p_.kv.set_unwritten_rows(0);
  StepResult r = run_prompt(in, keep);
  token_length_ = end;
  return r;
}

StepResult SingleLayout::run_prompt(const PrefillInputs& in, int /*keep*/) {
  return p_.heads.lm_head(p_.prefill.run(in, 0));
}

void SingleLayout::reset() {
  p_.kv.clear();
  token_length_ = 0;
  dmask_stage_ = -1;
}

// ---- decode ----------------------------------------------------------------------------

// The smallest block_cache stage whose history holds every cached row.
int SingleLayout::decode_stage() const {
  for (size_t i = 0; i < info_.decode_stages.size(); i++)
    if (info_.decode_stages[i] >= token_length_) return static_cast<int>(i);
  return static_cast<int>(info_.decode_stages.size()) - 1;
}

// The decode mask [1, 1, 1, kv_len + 1] lives in block_cache_0's own input: rows
// [0, token_length) open, the rest of the history closed, the last slot (the new token
// itself) open.  A new stage (or sequence) gets the whole mask; between steps only the
// aligned piece holding the newly opened rows is written (kMaskAlign bytes, from an
// aligned offset, as the vendor writes whole masks or aligned pieces).
void SingleLayout::upload_decode_mask(int stage) {
  const Net& c0 = p_.model.caches[0];
  const int s = p_.model.cache_stage_index[static_cast<size_t>(stage)];
  const int kv_len = info_.decode_stages[static_cast<size_t>(stage)];
  const bm_data_type_t dt = c0.in_dtype(2);
  const int es = static_cast<int>(dtype_size(dt));
  auto value = [&](int j) { return j < token_length_ || j == kv_len ? 0.0f : kMaskValue; };
  if (dmask_stage_ == stage && dmask_rows_ <= token_length_) {
    if (dmask_rows_ == token_length_) return;
    const int per = std::max(1, kMaskAlign / es);  // mask values per aligned piece
    const int lo = dmask_rows_ / per * per;
    const int hi = std::min((token_length_ + per - 1) / per * per, kv_len + 1);
    std::vector<float> piece(static_cast<size_t>(hi - lo));
    for (int j = lo; j < hi; j++) piece[static_cast<size_t>(j - lo)] = value(j);
    const auto enc = encode_floats(piece.data(), piece.size(), dt);
    p_.dev.s2d_at(c0.in_mem(2, s), static_cast<size_t>(lo) * static_cast<size_t>(es), enc.data(), enc.size());
  } else {
    std::vector<float> m(static_cast<size_t>(kv_len) + 1);
    for (int j = 0; j <= kv_len; j++) m[static_cast<size_t>(j)] = value(j);
    const auto enc = encode_floats(m.data(), m.size(), dt);
    p_.dev.s2d(c0.in_mem(2, s), enc.data(), enc.size());
    dmask_stage_ = stage;
  }
  dmask_rows_ = token_length_;
}

StepResult SingleLayout::decode(int32_t token, int32_t position) {
  if (token_length_ <= 0) throw std::logic_error("decode before prefill");
  if (token_length_ >= info_.seq_len)
    throw std::length_error("KV cache is full (SEQLEN " + std::to_string(info_.seq_len) + ")");
  Device& dev = p_.dev;
  const Model& m = p_.model;
  const int stage = decode_stage();
  const int s = m.cache_stage_index[static_cast<size_t>(stage)];
  const int kv_len = info_.decode_stages[static_cast<size_t>(stage)];
  last_decode_kv_length_ = kv_len;
  const Net& c0 = m.caches[0];
  p_.heads.fed(token);
  // every hidden state goes straight into the next network's own input buffer
  dev.s2d(id1_, &token, 4);
  {
    bm_tensor_t in = tensor(id1_, m.embc.in_dtype(0), make_shape({1, 1}));
    bm_tensor_t out = tensor(c0.in_mem(0, s), m.embc.out_dtype(0), c0.in_shape(0, s));
    dev.launch(m.embc, &in, 1, &out, 1);
  }
  const int32_t p3[3] = {position, position, position};
  dev.s2d(c0.in_mem(1, s), p3, 12);
  upload_decode_mask(stage);
  const size_t kv_row = p_.kv.row_bytes();
  const size_t row_at = static_cast<size_t>(token_length_) * kv_row;
  for (int l = 0; l < info_.num_layers; l++) {
    const Net& n = m.caches[static_cast<size_t>(l)];
    const bm_device_mem_t k = p_.kv.k(l), v = p_.kv.v(l);
    bm_tensor_t in[5];
    in[0] = tensor(n.in_mem(0, s), n.in_dtype(0), n.in_shape(0, s));
    in[1] = tensor(c0.in_mem(1, s), n.in_dtype(1), n.in_shape(1, s));  // positions and mask: layer 0's copy
    in[2] = tensor(c0.in_mem(2, s), n.in_dtype(2), n.in_shape(2, s));
    in[3] = tensor(sub(k, 0, static_cast<size_t>(kv_len) * kv_row), n.in_dtype(3), n.in_shape(3, s));
    in[4] = tensor(sub(v, 0, static_cast<size_t>(kv_len) * kv_row), n.in_dtype(4), n.in_shape(4, s));
    bm_tensor_t out[3];
    const bm_device_mem_t next = l + 1 < info_.num_layers ? m.caches[static_cast<size_t>(l) + 1].in_mem(0, s) : dlast_;
    out[0] = tensor(next, n.out_dtype(0), n.out_shape(0, s));
    out[1] = tensor(sub(k, row_at, kv_row), n.out_dtype(1), n.out_shape(1, s));  // the new row, in place
    out[2] = tensor(sub(v, row_at, kv_row), n.out_dtype(2), n.out_shape(2, s));
    dev.launch(n, in, 5, out, 3);
  }
  token_length_++;
  return p_.heads.lm_head(dlast_);
}

}  // namespace qwen3vl
