#include "stages.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace qwen3vl {

// ---- KV cache --------------------------------------------------------------------------

KvCache::KvCache(Device& dev, const Model& model) : dev_(dev) {
  const ModelInfo& mi = model.info;
  for (const Net& c : model.caches) {
    k_.push_back(c.in_mem(3, model.cache_full_stage));
    v_.push_back(c.in_mem(4, model.cache_full_stage));
  }
  row_bytes_ = static_cast<size_t>(mi.kv_heads) * mi.head_dim * dtype_size(model.caches[0].in_dtype(3));
  rows_ = mi.batch_slot_kv ? mi.seq_len : mi.seq_len * mi.batch;  // "slots" builds: slot 0's buffers
  clear();
}

void KvCache::zero(int from, int to) {
  if (to <= from) return;
  const size_t at = static_cast<size_t>(from) * row_bytes_, bytes = static_cast<size_t>(to - from) * row_bytes_;
  for (size_t l = 0; l < k_.size(); l++) {
    dev_.memset16(sub(k_[l], at, bytes), 0);
    dev_.memset16(sub(v_[l], at, bytes), 0);
  }
}

void KvCache::clear() {
  zero(0, rows_);
  unwritten_rows_ = 0;
}

void KvCache::fill(uint16_t pattern) {
  for (size_t l = 0; l < k_.size(); l++) {
    dev_.memset16(k_[l], pattern);
    dev_.memset16(v_[l], pattern);
  }
  unwritten_rows_ = rows_;
}

std::vector<uint16_t> KvCache::read(int layer, int which) {
  if (layer < 0 || layer >= static_cast<int>(k_.size()) || which < 0 || which > 1)
    throw std::invalid_argument("no such KV buffer");
  const bm_device_mem_t m = (which == 0 ? k_ : v_)[static_cast<size_t>(layer)];
  std::vector<uint16_t> out(bm_mem_get_device_size(m) / 2);
  dev_.sync();
  dev_.d2s_at(out.data(), m, 0, out.size() * 2);
  return out;
}

// ---- vision ----------------------------------------------------------------------------

std::vector<VisualRun> visual_runs(const View<int32_t>& vis_pos) {
  std::vector<VisualRun> runs;
  for (size_t i = 0; i < vis_pos.size;) {
    size_t j = i + 1;
    while (j < vis_pos.size && vis_pos.data[j] == vis_pos.data[j - 1] + 1) j++;
    runs.push_back({i, vis_pos.data[i], static_cast<int>(j - i)});
    i = j;
  }
  return runs;
}

Vision::Vision(Device& dev, const Model& model) : dev_(dev), model_(model) {
  if (!model.vit.present()) return;
  for (int i = 0; i < model.info.vit_inputs; i++) in_.push_back(dev.alloc(model.vit.in_bytes(i)));
  for (int i = 0; i < model.info.vit_outputs; i++) out_.push_back(dev.alloc(model.vit.out_bytes(i)));
}

void Vision::encode(const PrefillInputs& in, const std::vector<VisualRun>& runs, bm_device_mem_t hidden,
                    const std::vector<bm_device_mem_t>& deepstack) {
  for (auto& d : deepstack) dev_.memset16(d, 0);
  const int outputs = model_.info.vit_outputs;
  const size_t row_bytes = model_.hidden_row_bytes();
  size_t first = 0;  // index of the call's first vision token
  for (size_t k = 0; k < in.vit_calls.size(); k++) {
    const VitCall& call = in.vit_calls[k];
    if (k > 0) dev_.sync();  // the previous call may still read the vit input buffers
    const size_t rows_bytes = static_cast<size_t>(call.tokens) * row_bytes;
    if (!call.cached.empty()) {
      for (int i = 0; i < outputs; i++)
        dev_.s2d(out_[static_cast<size_t>(i)], call.cached.data + static_cast<size_t>(i) * rows_bytes / 2, rows_bytes);
    } else {
      run(call);
      if (call.capture) {
        dev_.sync();
        std::vector<uint16_t>& keep = last_rows_[k];
        keep.resize(static_cast<size_t>(outputs) * rows_bytes / 2);
        for (int i = 0; i < outputs; i++)
          dev_.d2s_at(keep.data() + static_cast<size_t>(i) * rows_bytes / 2, out_[static_cast<size_t>(i)], 0, rows_bytes);
      }
    }
    const size_t end = first + static_cast<size_t>(call.tokens);
    for (const VisualRun& r : runs) {
      const size_t lo = std::max(first, r.first), hi = std::min(end, r.first + static_cast<size_t>(r.count));
      if (lo >= hi) continue;
      const size_t dst = (static_cast<size_t>(r.row) + (lo - r.first)) * row_bytes;
      const size_t src = (lo - first) * row_bytes;
      dev_.d2d(hidden, dst, out_[0], src, (hi - lo) * row_bytes);
      for (size_t i = 0; i < deepstack.size(); i++) dev_.d2d(deepstack[i], dst, out_[i + 1], src, (hi - lo) * row_bytes);
    }
    first = end;
  }
}

void Vision::run(const VitCall& call) {
  const Net& vit = model_.vit;
  const ModelInfo& mi = model_.info;
  const size_t P = mi.vit_patch_dim ? call.pixels.size / static_cast<size_t>(mi.vit_patch_dim) : 0;
  if (P == 0 || P > static_cast<size_t>(mi.vit_patches) || P % 4) throw std::invalid_argument("bad vit patch count");
  if (!mi.vit_dynamic && P != static_cast<size_t>(mi.vit_patches))
    throw std::invalid_argument("static vit needs inputs padded to " + std::to_string(mi.vit_patches) + " patches");
  if (call.pixels.size != P * mi.vit_patch_dim || call.pos_ids.size != P * 2 || call.pos_idx.size != P * 4 ||
      call.pos_weight.size != P * 4)
    throw std::invalid_argument("vit input sizes do not match the patch count");
  if (call.tokens < 0 || static_cast<size_t>(call.tokens) > P / 4) throw std::invalid_argument("bad vit token count");
  const bool with_mask = mi.vit_inputs >= 5;
  if (with_mask && call.mask.size != P * P) throw std::invalid_argument("vit attention mask must be [P, P]");
  auto upload_floats = [&](bm_device_mem_t dst, const View<float>& v, bm_data_type_t dt) {
    if (dt == BM_FLOAT32) {
      dev_.s2d(dst, v.data, v.size * 4);
    } else {
      const auto enc = encode_floats(v.data, v.size, dt);
      dev_.s2d(dst, enc.data(), enc.size());
    }
  };
  upload_floats(in_[0], call.pixels, vit.in_dtype(0));
  dev_.s2d(in_[1], call.pos_ids.data, call.pos_ids.size * 4);
  dev_.s2d(in_[2], call.pos_idx.data, call.pos_idx.size * 4);
  upload_floats(in_[3], call.pos_weight, vit.in_dtype(3));
  const int p = static_cast<int>(P);
  std::vector<bm_tensor_t> in(static_cast<size_t>(mi.vit_inputs));
  in[0] = tensor(in_[0], vit.in_dtype(0), make_shape({p, mi.vit_patch_dim}));
  in[1] = tensor(in_[1], vit.in_dtype(1), make_shape({p, 2}));
  in[2] = tensor(in_[2], vit.in_dtype(2), make_shape({p, 4}));
  in[3] = tensor(in_[3], vit.in_dtype(3), make_shape({p, 4, 1}));
  if (with_mask) {
    // the mask depends only on the grid: a repeated shape reuses the device copy
    const std::string key = call.mask_key.empty() ? std::string() : call.mask_key + "/" + std::to_string(P);
    if (key.empty() || key != mask_key_) {
      mask_key_.clear();
      upload_floats(in_[4], call.mask, vit.in_dtype(4));
      mask_key_ = key;
    }
    in[4] = tensor(in_[4], vit.in_dtype(4), make_shape({1, 1, p, p}));
  }
  std::vector<bm_tensor_t> out(static_cast<size_t>(mi.vit_outputs));
  for (int i = 0; i < mi.vit_outputs; i++)
    out[static_cast<size_t>(i)] =
        tensor(out_[static_cast<size_t>(i)], vit.out_dtype(i), make_shape({p / 4, mi.hidden_size}));
  dev_.launch(vit, in.data(), mi.vit_inputs, out.data(), mi.vit_outputs);
}

// ---- heads -----------------------------------------------------------------------------

Heads::Heads(Device& dev, const Model& model) : dev_(dev), model_(model) {
  logits_ = dev.alloc(model.lm.out_bytes(0));
  if (model.info.has_greedy_head) tok_ = dev.alloc(4);
  if (model.info.has_sample_head) {
    const Net& sample = model.sample;
    const bm_shape_t& hs = sample.in_shape(1);
    hist_cap_ = hs.dims[hs.num_dims - 1];
    s_ids_ = dev.alloc(sample.in_bytes(1));
    s_penalty_ = dev.alloc(4);
    s_temp_ = dev.alloc(4);
    s_topk_ = dev.alloc(4);
    s_topp_ = dev.alloc(4);
    s_probs_bytes_ = sample.out_bytes(0);
    s_out_ = dev.alloc(s_probs_bytes_ + sample.out_bytes(1));  // one read brings both back
  }
}

void Heads::set_plan(const HeadPlan& plan, const std::vector<int32_t>& history) {
  const ModelInfo& mi = model_.info;
  if (plan.kind == HeadPlan::Kind::kLogits) {
    plan_ = plan;
    return;
  }
  if (plan.kind == HeadPlan::Kind::kGreedy && !mi.has_greedy_head)
    throw std::invalid_argument("this bmodel has no greedy_head over logits (built without --do_sample)");
  if (plan.kind == HeadPlan::Kind::kSample) {
    if (!mi.has_sample_head) throw std::invalid_argument("this bmodel has no sample_head over logits (built without --do_sample)");
    if (plan.top_k < 1 || plan.top_k > mi.sample_candidates)
      throw std::invalid_argument("sample_head top_k must be in [1, " + std::to_string(mi.sample_candidates) + "]");
    if (!(plan.temperature > 0.0f) || !(plan.penalty > 0.0f))
      throw std::invalid_argument("sample_head needs a positive temperature and penalty");
    // Only the repetition penalty reads the ids; without one a single id stands in.
    std::vector<int32_t> ids;
    if (plan.penalty != 1.0f)
      ids.assign(history.end() - static_cast<std::ptrdiff_t>(std::min<size_t>(history.size(), hist_cap_)),
                 history.end());
    if (ids.empty()) ids.push_back(history.empty() ? 0 : history.back());
    hist_len_ = static_cast<int>(ids.size());
    // a static net reads all hist_cap_ ids: pad with an id already there (a repeat changes nothing)
    if (!model_.sample.info->is_dynamic) ids.resize(static_cast<size_t>(hist_cap_), ids.back());
    dev_.s2d(s_ids_, ids.data(), ids.size() * 4);
    const float top_p = 2.0f;  // keep every candidate: the host applies top-p (docs/sampling-on-device.md)
    dev_.s2d(s_penalty_, &plan.penalty, 4);
    dev_.s2d(s_temp_, &plan.temperature, 4);
    dev_.s2d(s_topk_, &plan.top_k, 4);
    dev_.s2d(s_topp_, &top_p, 4);
  }
  plan_ = plan;
}

void Heads::fed(int32_t token) {
  if (plan_.kind != HeadPlan::Kind::kSample || plan_.penalty == 1.0f || hist_len_ >= hist_cap_) return;
  dev_.s2d_at(s_ids_, static_cast<size_t>(hist_len_) * 4, &token, 4);
  hist_len_++;
}

StepResult Heads::lm_head(bm_device_mem_t hidden_row) {
  const Net& lm = model_.lm;
  bm_tensor_t in = tensor(hidden_row, lm.in_dtype(0), make_shape({1, model_.info.hidden_size}));
  bm_tensor_t out = tensor(logits_, lm.out_dtype(0), lm.out_shape(0));
  dev_.launch(lm, &in, 1, &out, 1);
  logits_valid_ = true;
  StepResult r;
  switch (plan_.kind) {
    case HeadPlan::Kind::kGreedy:
      r.candidates = greedy();
      return r;
    case HeadPlan::Kind::kSample:
      r.candidates = sample();
      return r;
    case HeadPlan::Kind::kLogits:
      break;
  }
  dev_.sync();
  return read_logits();
}

StepResult Heads::logits() {
  if (!logits_valid_) throw std::logic_error("no logits yet: run prefill first");
  if (!model_.info.lm_head_logits) throw std::logic_error("this bmodel's lm_head returns a token id, not logits");
  dev_.sync();
  return read_logits();
}

StepResult Heads::read_logits() {
  const Net& lm = model_.lm;
  StepResult r;
  if (model_.info.lm_head_logits) {
    const size_t n = static_cast<size_t>(model_.info.vocab_size);
    r.logits.resize(n);
    if (lm.out_dtype(0) == BM_FLOAT32) {
      dev_.d2s_at(r.logits.data(), logits_, 0, n * 4);
    } else {
      std::vector<uint8_t> raw(n * dtype_size(lm.out_dtype(0)));
      dev_.d2s_at(raw.data(), logits_, 0, raw.size());
      decode_floats(raw.data(), n, lm.out_dtype(0), r.logits.data());
    }
    return r;
  }
  int32_t tok = 0;
  dev_.d2s_at(&tok, logits_, 0, 4);
  r.token = tok;
  return r;
}

// greedy_head: the most likely token (equal logits: the lowest id, as the host's argmax).
Candidates Heads::greedy() {
  const Net& greedy = model_.greedy;
  bm_tensor_t in = tensor(logits_, greedy.in_dtype(0), make_shape({1, model_.info.vocab_size}));
  bm_tensor_t out = tensor(tok_, greedy.out_dtype(0), make_shape({1, 1}));
  dev_.launch(greedy, &in, 1, &out, 1);
  dev_.sync();
  Candidates c;
  c.ids.resize(1);
  dev_.d2s_at(c.ids.data(), tok_, 0, 4);
  c.probs = {1.0f};
  return c;
}

// sample_head: repetition penalty over the history ids, then the top_k largest logits
// (most likely first), divided by the temperature, softmaxed.
Candidates Heads::sample() {
  const Net& sample = model_.sample;
  const int n = sample.info->is_dynamic ? hist_len_ : hist_cap_;
  bm_tensor_t in[6];
  in[0] = tensor(logits_, sample.in_dtype(0), make_shape({1, model_.info.vocab_size}));
  in[1] = tensor(s_ids_, sample.in_dtype(1), make_shape({1, n}));
  in[2] = tensor(s_penalty_, sample.in_dtype(2), make_shape({1}));
  in[3] = tensor(s_temp_, sample.in_dtype(3), make_shape({1}));
  in[4] = tensor(s_topk_, sample.in_dtype(4), make_shape({1}));
  in[5] = tensor(s_topp_, sample.in_dtype(5), make_shape({1}));
  bm_tensor_t out[2];
  out[0] = tensor(sub(s_out_, 0, s_probs_bytes_), sample.out_dtype(0), sample.out_shape(0));
  out[1] = tensor(sub(s_out_, s_probs_bytes_, sample.out_bytes(1)), sample.out_dtype(1), sample.out_shape(1));
  dev_.launch(sample, in, 6, out, 2);
  dev_.sync();
  // a dynamic net may give fewer than its compiled width: the first top_k are the ones asked for
  const size_t width = static_cast<size_t>(model_.info.sample_candidates);
  const size_t k = std::min({static_cast<size_t>(plan_.top_k), shape_count(out[0].shape), width});
  std::vector<uint8_t> raw(s_probs_bytes_ + sample.out_bytes(1));
  dev_.d2s_at(raw.data(), s_out_, 0, raw.size());
  Candidates c;
  c.probs.resize(k);
  c.ids.resize(k);
  std::memcpy(c.probs.data(), raw.data(), k * 4);
  std::memcpy(c.ids.data(), raw.data() + s_probs_bytes_, k * 4);
  return c;
}

// ---- prefill ---------------------------------------------------------------------------

Prefill::Prefill(Device& dev, const Model& model, KvCache& kv, Vision& vision)
    : dev_(dev), model_(model), kv_(kv), vision_(vision) {
  const ModelInfo& mi = model.info;
  const size_t hidden_buffer = static_cast<size_t>(mi.max_input_length) * model.hidden_row_bytes();
  ids_ = dev.alloc(static_cast<size_t>(mi.max_input_length) * 4);
  pos_ = dev.alloc(static_cast<size_t>(3 * mi.max_input_length) * 4);
  if (model.prefill_mask()) mask_ = dev.alloc(model.blocks[0].in_bytes(2));
  for (auto& h : hid_) h = dev.alloc(hidden_buffer);
  for (int i = 1; i < mi.vit_outputs; i++) deepstack_.push_back(dev.alloc(hidden_buffer));
}

void Prefill::check(const PrefillInputs& in) const {
  const ModelInfo& mi = model_.info;
  const int L = static_cast<int>(in.ids.size);
  if (L <= 0) throw std::invalid_argument("empty prompt");
  if (in.pos3.size != static_cast<size_t>(3 * L)) throw std::invalid_argument("position_ids must be [3, L]");
  for (size_t i = 0; i < in.vis_pos.size; i++)
    if (in.vis_pos.data[i] < 0 || in.vis_pos.data[i] >= L) throw std::invalid_argument("visual position outside the prompt");
  size_t tokens = 0;
  for (const VitCall& c : in.vit_calls) tokens += static_cast<size_t>(c.tokens);
  if (tokens != in.vis_pos.size)
    throw std::invalid_argument("the vision calls give " + std::to_string(tokens) + " tokens for " +
                                std::to_string(in.vis_pos.size) + " visual positions");
  if (tokens && !model_.vit.present()) throw std::invalid_argument("this bmodel has no vision encoder");
  const size_t row = static_cast<size_t>(mi.hidden_size);
  for (const VitCall& c : in.vit_calls)
    if (!c.cached.empty() && (c.cached.size != static_cast<size_t>(mi.vit_outputs) * c.tokens * row ||
                              dtype_size(model_.hidden_dtype()) != 2 || c.tokens > mi.vit_patches / 4))
      throw std::invalid_argument("cached vit rows must be [vit outputs, tokens, hidden] 16-bit values");
}

bm_device_mem_t Prefill::run(const PrefillInputs& in, size_t kv_offset) {
  const int L = static_cast<int>(in.ids.size);
  vision_.start(in.vit_calls.size());
  const int rows = model_.info.prefill_dynamic ? L : model_.info.max_input_length;
  embed(in.ids, hid_[0]);
  const std::vector<VisualRun> runs = visual_runs(in.vis_pos);
  if (!runs.empty()) vision_.encode(in, runs, hid_[0], deepstack_);
  upload_positions_and_mask(in.pos3, L, rows);
  const int cur = run_layers(rows, kv_offset, runs);
  const size_t row_bytes = model_.hidden_row_bytes();
  return sub(hid_[cur], static_cast<size_t>(L - 1) * row_bytes, row_bytes);
}

// The embedding stays static in dynamic builds: it reads MAX_INPUT_LENGTH ids.
void Prefill::embed(const View<int32_t>& ids, bm_device_mem_t dst) {
  const Net& emb = model_.emb;
  const int L = static_cast<int>(ids.size);
  const int Le = emb.info->is_dynamic ? L : emb.in_shape(0).dims[1];
  std::vector<int32_t> idbuf(static_cast<size_t>(model_.info.max_input_length), 0);
  std::copy(ids.data, ids.data + L, idbuf.begin());
  dev_.s2d(ids_, idbuf.data(), static_cast<size_t>(Le) * 4);
  bm_tensor_t in = tensor(ids_, emb.in_dtype(0), make_shape({1, Le}));
  bm_tensor_t out = tensor(dst, emb.out_dtype(0), make_shape({1, Le, model_.info.hidden_size}));
  dev_.launch(emb, &in, 1, &out, 1);
}

void Prefill::upload_positions_and_mask(const View<int32_t>& pos3, int L, int rows) {
  std::vector<int32_t> pbuf(static_cast<size_t>(3 * rows), 0);
  for (int r = 0; r < 3; r++)
    for (int i = 0; i < L; i++) pbuf[static_cast<size_t>(r * rows + i)] = pos3.data[static_cast<size_t>(r * L + i)];
  dev_.s2d(pos_, pbuf.data(), pbuf.size() * 4);
  const bool dynamic = model_.info.prefill_dynamic;
  if (model_.prefill_mask() && (dynamic || !mask_ready_)) {
    std::vector<float> m(static_cast<size_t>(rows) * rows, 0.0f);
    for (int i = 0; i < rows; i++)
      for (int j = i + 1; j < rows; j++) m[static_cast<size_t>(i) * rows + j] = kMaskValue;
    const auto enc = encode_floats(m.data(), m.size(), model_.blocks[0].in_dtype(2));
    dev_.s2d(mask_, enc.data(), enc.size());
    mask_ready_ = !dynamic;
  }
}

int Prefill::run_layers(int rows, size_t kv_offset, const std::vector<VisualRun>& runs, int history,
                        const KvSpare* spare) {
  const ModelInfo& mi = model_.info;
  int cur = 0;
  const bool with_deepstack = !runs.empty() && !deepstack_.empty();
  const bool has_mask = model_.prefill_mask();
  const size_t kv_row = static_cast<size_t>(mi.kv_heads) * mi.head_dim * dtype_size(model_.blocks[0].out_dtype(1));
  const size_t at = kv_offset + static_cast<size_t>(history) * kv_row;
  // dynamic nets check a user buffer against their largest output: MAX_INPUT_LENGTH rows,
  // straight in the cache when they fit there, else in a spare buffer copied after
  const size_t chunk_bytes = static_cast<size_t>(mi.max_input_length) * kv_row;
  const bool tail = history + mi.max_input_length > mi.seq_len;
  if (tail && !spare) throw std::logic_error("a prefill chunk past the cache's end needs a spare K/V buffer");
  for (int l = 0; l < mi.num_layers; l++) {
    const Net& n = history > 0 ? model_.kv_blocks[static_cast<size_t>(l)] : model_.blocks[static_cast<size_t>(l)];
    const bm_device_mem_t k = kv_.k(l), v = kv_.v(l);
    bm_tensor_t inputs[4];
    int nin = 0;
    inputs[nin++] = tensor(hid_[cur], n.in_dtype(0), make_shape({1, rows, mi.hidden_size}));
    // batch-N builds declare prefill positions [1, 3, L]
    inputs[nin++] =
        tensor(pos_, n.in_dtype(1), n.in_shape(1).num_dims == 3 ? make_shape({1, 3, rows}) : make_shape({3, rows}));
    if (history > 0) {
      // The net concatenates history and chunk K/V in place (the compiler lays its history
      // input out in front of the chunk's rows): the history goes into its own input
      // buffers, not a pointer to the cache.
      const bm_shape_t hs = make_shape({1, history, mi.kv_heads, mi.head_dim});
      const size_t hbytes = static_cast<size_t>(history) * kv_row;
      dev_.d2d(n.in_mem(2), 0, k, kv_offset, hbytes);
      dev_.d2d(n.in_mem(3), 0, v, kv_offset, hbytes);
      inputs[nin++] = tensor(n.in_mem(2), n.in_dtype(2), hs);
      inputs[nin++] = tensor(n.in_mem(3), n.in_dtype(3), hs);
    } else if (has_mask) {
      inputs[nin++] = tensor(mask_, n.in_dtype(2), make_shape({1, 1, rows, rows}));
    }
    bm_tensor_t out[3];
    const bm_shape_t kvs = make_shape({1, rows, mi.kv_heads, mi.head_dim});
    out[0] = tensor(hid_[1 - cur], n.out_dtype(0), make_shape({1, rows, mi.hidden_size}));
    out[1] = tensor(tail ? spare->k : sub(k, at, chunk_bytes), n.out_dtype(1), kvs);
    out[2] = tensor(tail ? spare->v : sub(v, at, chunk_bytes), n.out_dtype(2), kvs);
    dev_.launch(n, inputs, nin, out, 3);
    if (tail) {
      dev_.d2d(k, at, spare->k, 0, static_cast<size_t>(rows) * kv_row);
      dev_.d2d(v, at, spare->v, 0, static_cast<size_t>(rows) * kv_row);
    }
    cur = 1 - cur;
    if (with_deepstack && static_cast<size_t>(l) < deepstack_.size()) cur = add_deepstack(cur, l, runs);
  }
  return cur;
}

// Deepstack feature `layer` is added to the hidden states after block `layer`: by the
// bmodel's `add` net into the other hidden buffer when there is one, else on the host
// over the vision rows.  Returns the buffer holding the result.
int Prefill::add_deepstack(int cur, int layer, const std::vector<VisualRun>& runs) {
  const bm_device_mem_t feature = deepstack_[static_cast<size_t>(layer)];
  if (model_.info.has_add) {
    const Net& add = model_.add;
    bm_tensor_t in[2];
    in[0] = tensor(hid_[cur], add.in_dtype(0), add.in_shape(0));
    in[1] = tensor(feature, add.in_dtype(1), add.in_shape(1));
    bm_tensor_t out = tensor(hid_[1 - cur], add.out_dtype(0), add.out_shape(0));
    dev_.launch(add, in, 2, &out, 1);
    return 1 - cur;
  }
  const bm_data_type_t hdt = model_.hidden_dtype();
  const size_t row_bytes = model_.hidden_row_bytes();
  dev_.sync();
  for (const VisualRun& r : runs) {
    const size_t off = static_cast<size_t>(r.row) * row_bytes;
    const size_t n = static_cast<size_t>(r.count) * model_.info.hidden_size;
    std::vector<uint8_t> h(n * dtype_size(hdt)), f(n * dtype_size(hdt));
    dev_.d2s_at(h.data(), hid_[cur], off, h.size());
    dev_.d2s_at(f.data(), feature, off, f.size());
    std::vector<float> a(n), b(n);
    decode_floats(h.data(), n, hdt, a.data());
    decode_floats(f.data(), n, hdt, b.data());
    for (size_t i = 0; i < n; i++) a[i] += b[i];
    const auto enc = encode_floats(a.data(), n, hdt);
    dev_.s2d_at(hid_[cur], off, enc.data(), enc.size());
  }
  return cur;
}

}  // namespace qwen3vl
