#include "verify.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace qwen3vl {

namespace {

[[noreturn]] void refuse(const Model& m, const std::string& what) {
  throw std::runtime_error("unsupported bmodel " + m.path + ": " + what +
                           "; the verify nets of `--speculative K` are embedding_verify [1,R] -> [1,R,H], "
                           "block_verify_<i> (states [1,R,H], positions [3,R], mask [1,1,R,SEQLEN+R], history K/V "
                           "[1,SEQLEN,kv_heads,head_dim]; 3 outputs) for every layer and lm_head_verify [R,H] -> "
                           "logits [R,vocab], on a batch-1 single-sequence build with logits");
}

}  // namespace

void SingleLayout::advance(int rows) { token_length_ += rows; }  // rows written, so finite (KvCache)

bool Verifier::available(const Device& dev) { return dev.has("block_verify_0"); }

Verifier::Verifier(const Parts& parts, SingleLayout& layout)
    : p_(parts), layout_(layout), info_(parts.model.info) {
  const Device& dev = p_.dev;
  const Model& m = p_.model;
  const ModelInfo& mi = info_;
  emb_ = dev.net("embedding_verify", false);
  lm_ = dev.net("lm_head_verify", false);
  if (!emb_.present() || !lm_.present()) refuse(m, "block_verify_0 without embedding_verify / lm_head_verify");
  if (mi.batch != 1 || mi.history_kv || !mi.lm_head_logits) refuse(m, "verify nets on a batch/history-KV/token-id build");
  const bm_shape_t& es = emb_.in_shape(0);
  if (es.num_dims != 2 || es.dims[0] != 1 || es.dims[1] < 2) refuse(m, "embedding_verify input " + shape_str(es));
  const int R = rows_ = es.dims[1];
  const int H = mi.hidden_size, S = mi.seq_len, kvh = mi.kv_heads, hd = mi.head_dim;
  if (!same_shape(emb_.out_shape(0), {1, R, H})) refuse(m, "embedding_verify output " + shape_str(emb_.out_shape(0)));
  if (!same_shape(lm_.in_shape(0), {R, H}) || !same_shape(lm_.out_shape(0), {R, mi.vocab_size}) ||
      lm_.out_dtype(0) == BM_INT32)
    refuse(m, "lm_head_verify " + shape_str(lm_.in_shape(0)) + " -> " + shape_str(lm_.out_shape(0)));
  for (int l = 0; l < mi.num_layers; l++) {
    Net b = dev.net("block_verify_" + std::to_string(l), false);
    if (!b.present()) refuse(m, "no block_verify_" + std::to_string(l));
    if (b.info->is_dynamic || b.info->input_num != 5 || b.info->output_num != 3 || !same_shape(b.in_shape(0), {1, R, H}) ||
        !same_shape(b.in_shape(1), {3, R}) || !same_shape(b.in_shape(2), {1, 1, R, S + R}) ||
        !same_shape(b.in_shape(3), {1, S, kvh, hd}) || !same_shape(b.in_shape(4), {1, S, kvh, hd}) ||
        !same_shape(b.out_shape(0), {1, R, H}) || !same_shape(b.out_shape(1), {1, R, kvh, hd}) ||
        !same_shape(b.out_shape(2), {1, R, kvh, hd}) || b.in_dtype(3) != m.caches[0].in_dtype(3))
      refuse(m, b.name + " inputs " + shape_str(b.in_shape(0)) + " " + shape_str(b.in_shape(1)) + " " +
                    shape_str(b.in_shape(2)) + " " + shape_str(b.in_shape(3)));
    blocks_.push_back(b);
  }
  Device& d = p_.dev;
  const size_t kv_rows = static_cast<size_t>(R) * p_.kv.row_bytes();
  ids_ = d.alloc(static_cast<size_t>(R) * 4);
  pos_ = d.alloc(static_cast<size_t>(3 * R) * 4);
  mask_ = d.alloc(blocks_[0].in_bytes(2));
  for (auto& h : hid_) h = d.alloc(static_cast<size_t>(R) * m.hidden_row_bytes());
  logits_ = d.alloc(lm_.out_bytes(0));
  for (int l = 0; l < mi.num_layers; l++) {
    pend_k_.push_back(d.alloc(kv_rows));
    pend_v_.push_back(d.alloc(kv_rows));
  }
}

std::vector<StepResult> Verifier::verify(const std::vector<int32_t>& tokens, int32_t position) {
  const int n = static_cast<int>(tokens.size()), R = rows_;
  const int len = layout_.token_length();
  const ModelInfo& mi = info_;
  const int S = mi.seq_len;
  if (n < 1 || n > R)
    throw std::invalid_argument("a verify step takes 1-" + std::to_string(R) + " tokens, not " + std::to_string(n));
  if (len <= 0) throw std::logic_error("verify before prefill");
  if (len + n > S) throw std::length_error("KV cache is full (SEQLEN " + std::to_string(S) + ")");
  base_ = -1;
  Device& dev = p_.dev;
  // the fed tokens (padded with the last one: its rows are computed and never kept)
  std::vector<int32_t> ids(tokens);
  ids.resize(static_cast<size_t>(R), tokens.back());
  dev.s2d(ids_, ids.data(), ids.size() * 4);
  {
    bm_tensor_t in = tensor(ids_, emb_.in_dtype(0), emb_.in_shape(0));
    bm_tensor_t out = tensor(hid_[0], emb_.out_dtype(0), emb_.out_shape(0));
    dev.launch(emb_, &in, 1, &out, 1);
  }
  std::vector<int32_t> pos(static_cast<size_t>(3 * R));
  for (int r = 0; r < 3; r++)
    for (int i = 0; i < R; i++) pos[static_cast<size_t>(r * R + i)] = position + i;
  dev.s2d(pos_, pos.data(), pos.size() * 4);
  // row i sees the cached rows and fed rows 0..i
  const int W = S + R;
  std::vector<float> mask(static_cast<size_t>(R) * W, kMaskValue);
  for (int i = 0; i < R; i++) {
    std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>(i) * W, len, 0.0f);
    std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>(i) * W + S, i + 1, 0.0f);
  }
  const auto enc = encode_floats(mask.data(), mask.size(), blocks_[0].in_dtype(2));
  dev.s2d(mask_, enc.data(), enc.size());
  // the new rows go straight into the cache when all R fit, else to the pending buffers
  pending_ = len + R > S;
  const size_t kv_row = p_.kv.row_bytes(), new_bytes = static_cast<size_t>(R) * kv_row;
  const size_t hist_bytes = static_cast<size_t>(S) * kv_row, at = static_cast<size_t>(len) * kv_row;
  int cur = 0;
  for (int l = 0; l < mi.num_layers; l++) {
    const Net& b = blocks_[static_cast<size_t>(l)];
    const bm_device_mem_t k = p_.kv.k(l), v = p_.kv.v(l);
    dev.d2d(b.in_mem(3), 0, k, 0, hist_bytes);
    dev.d2d(b.in_mem(4), 0, v, 0, hist_bytes);
    bm_tensor_t in[5];
    in[0] = tensor(hid_[cur], b.in_dtype(0), b.in_shape(0));
    in[1] = tensor(pos_, b.in_dtype(1), b.in_shape(1));
    in[2] = tensor(mask_, b.in_dtype(2), b.in_shape(2));
    in[3] = tensor(b.in_mem(3), b.in_dtype(3), b.in_shape(3));
    in[4] = tensor(b.in_mem(4), b.in_dtype(4), b.in_shape(4));
    bm_tensor_t out[3];
    out[0] = tensor(hid_[1 - cur], b.out_dtype(0), b.out_shape(0));
    out[1] = tensor(pending_ ? pend_k_[static_cast<size_t>(l)] : sub(k, at, new_bytes), b.out_dtype(1), b.out_shape(1));
    out[2] = tensor(pending_ ? pend_v_[static_cast<size_t>(l)] : sub(v, at, new_bytes), b.out_dtype(2), b.out_shape(2));
    dev.launch(b, in, 5, out, 3);
    cur = 1 - cur;
  }
  {
    bm_tensor_t in = tensor(hid_[cur], lm_.in_dtype(0), lm_.in_shape(0));
    bm_tensor_t out = tensor(logits_, lm_.out_dtype(0), lm_.out_shape(0));
    dev.launch(lm_, &in, 1, &out, 1);
  }
  dev.sync();
  const size_t V = static_cast<size_t>(mi.vocab_size);
  std::vector<StepResult> results(static_cast<size_t>(n));
  const bm_data_type_t dt = lm_.out_dtype(0);
  std::vector<uint8_t> raw(static_cast<size_t>(n) * V * dtype_size(dt));
  dev.d2s_at(raw.data(), logits_, 0, raw.size());
  for (int i = 0; i < n; i++) {
    std::vector<float>& lg = results[static_cast<size_t>(i)].logits;
    lg.resize(V);
    decode_floats(raw.data() + static_cast<size_t>(i) * V * dtype_size(dt), V, dt, lg.data());
  }
  base_ = len;
  fed_ = n;
  return results;
}

void Verifier::commit(int keep) {
  if (base_ < 0 || layout_.token_length() != base_) throw std::logic_error("commit without a verify step before it");
  if (keep < 1 || keep > fed_)
    throw std::invalid_argument("commit keeps 1-" + std::to_string(fed_) + " tokens, not " + std::to_string(keep));
  if (pending_) {
    const size_t kv_row = p_.kv.row_bytes(), bytes = static_cast<size_t>(keep) * kv_row;
    const size_t at = static_cast<size_t>(base_) * kv_row;
    for (int l = 0; l < info_.num_layers; l++) {
      p_.dev.d2d(p_.kv.k(l), at, pend_k_[static_cast<size_t>(l)], 0, bytes);
      p_.dev.d2d(p_.kv.v(l), at, pend_v_[static_cast<size_t>(l)], 0, bytes);
    }
  }
  base_ = -1;
  layout_.advance(keep);
}

}  // namespace qwen3vl
