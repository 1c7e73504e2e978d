#include "runtime.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "half.h"

namespace qwen3vl {

namespace {

constexpr float kMaskValue = -10000.0f;  // additive attention mask for "cannot attend"

std::mutex g_live_mu;
std::vector<Runtime*> g_live;  // open runtimes, closed at interpreter exit

size_t dtype_size(bm_data_type_t dt) {
  switch (dt) {
    case BM_FLOAT32:
    case BM_INT32:
    case BM_UINT32:
      return 4;
    case BM_FLOAT16:
    case BM_BFLOAT16:
    case BM_INT16:
    case BM_UINT16:
      return 2;
    default:
      return 1;
  }
}

// float32 values -> bytes of the given floating dtype
std::vector<uint8_t> encode_floats(const float* src, size_t n, bm_data_type_t dt) {
  std::vector<uint8_t> out(n * dtype_size(dt));
  if (dt == BM_FLOAT32) {
    std::memcpy(out.data(), src, n * 4);
  } else if (dt == BM_BFLOAT16) {
    auto* p = reinterpret_cast<uint16_t*>(out.data());
    for (size_t i = 0; i < n; i++) p[i] = f32_to_bf16(src[i]);
  } else if (dt == BM_FLOAT16) {
    auto* p = reinterpret_cast<uint16_t*>(out.data());
    for (size_t i = 0; i < n; i++) p[i] = f32_to_f16(src[i]);
  } else {
    throw std::runtime_error("unsupported floating dtype " + std::to_string(dt));
  }
  return out;
}

void decode_floats(const uint8_t* src, size_t n, bm_data_type_t dt, float* dst) {
  if (dt == BM_FLOAT32) {
    std::memcpy(dst, src, n * 4);
  } else if (dt == BM_BFLOAT16) {
    auto* p = reinterpret_cast<const uint16_t*>(src);
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(p[i]);
  } else if (dt == BM_FLOAT16) {
    auto* p = reinterpret_cast<const uint16_t*>(src);
    for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(p[i]);
  } else {
    throw std::runtime_error("unsupported floating dtype " + std::to_string(dt));
  }
}

bm_shape_t make_shape(std::initializer_list<int> dims) {
  bm_shape_t s{};
  s.num_dims = 0;
  for (int d : dims) s.dims[s.num_dims++] = d;
  return s;
}

size_t shape_count(const bm_shape_t& s) {
  size_t n = 1;
  for (int i = 0; i < s.num_dims; i++) n *= static_cast<size_t>(s.dims[i]);
  return n;
}

std::string shape_str(const bm_shape_t& s) {
  std::string r = "[";
  for (int i = 0; i < s.num_dims; i++) r += (i ? "," : "") + std::to_string(s.dims[i]);
  return r + "]";
}

void check(bm_status_t st, const char* what) {
  if (st != BM_SUCCESS) throw std::runtime_error(std::string("bmlib: ") + what + " failed (" + std::to_string(st) + ")");
}

bm_device_mem_t sub(bm_device_mem_t m, size_t offset, size_t bytes) {
  return bm_mem_from_device(bm_mem_get_device_addr(m) + offset, static_cast<unsigned int>(bytes));
}

bool same_shape(const bm_shape_t& a, std::initializer_list<int> dims) {
  if (a.num_dims != static_cast<int>(dims.size())) return false;
  int i = 0;
  for (int d : dims)
    if (a.dims[i++] != d) return false;
  return true;
}

bm_tensor_t tensor(bm_device_mem_t mem, bm_data_type_t dt, bm_shape_t shape) {
  bm_tensor_t t;
  std::memset(&t, 0, sizeof(t));
  bmrt_tensor_with_device(&t, mem, dt, shape);
  return t;
}

}  // namespace

size_t Net::in_bytes(int i, int stage) const { return shape_count(in_shape(i, stage)) * dtype_size(in_dtype(i)); }
size_t Net::out_bytes(int i, int stage) const { return shape_count(out_shape(i, stage)) * dtype_size(out_dtype(i)); }

// ---- lifecycle -------------------------------------------------------------------------

Runtime::Runtime(const std::string& bmodel_path, int devid) : path_(bmodel_path), devid_(devid) {
  try {
    open();
  } catch (...) {
    close_locked();
    throw;
  }
  std::lock_guard<std::mutex> g(g_live_mu);
  g_live.push_back(this);
}

Runtime::~Runtime() {
  {
    std::lock_guard<std::mutex> g(g_live_mu);
    g_live.erase(std::remove(g_live.begin(), g_live.end(), this), g_live.end());
  }
  std::lock_guard<std::mutex> g(mu_);
  close_locked();
}

void Runtime::close_all() {
  std::vector<Runtime*> live;
  {
    std::lock_guard<std::mutex> g(g_live_mu);
    live = g_live;
  }
  for (Runtime* r : live) r->close();
}

void Runtime::close() {
  std::lock_guard<std::mutex> g(mu_);
  close_locked();
}

void Runtime::check_open() const {
  if (!rt_) throw std::logic_error("runtime is closed");
}

void Runtime::open() {
  check(bm_dev_request(&handle_, devid_), "bm_dev_request");
  rt_ = bmrt_create(handle_);
  if (!rt_) throw std::runtime_error("bmrt_create failed");
  // as the vendor's demos run: one activation memory shared by all networks (they run one
  // at a time), instead of one per network
  bmrt_set_flags(rt_, BM_RUNTIME_SHARE_MEM);
  if (!bmrt_load_bmodel(rt_, path_.c_str())) throw std::runtime_error("cannot load bmodel " + path_);
  const char** names = nullptr;
  bmrt_get_network_names(rt_, &names);
  int nn = bmrt_get_network_number(rt_);
  for (int i = 0; i < nn; i++) networks.emplace_back(names[i]);
  std::free(names);
  read_layout();
  allocate_buffers();
  zero_kv_rows(0, seq_len * batch);  // device memory is not zeroed by the allocator on a real box
  kv_dirty_rows_ = 0;
  // batch builds: slots not in a step still run through the layers; their rows must be finite
  if (batch > 1) memset16(caches_[0].in_mem(0), 0);
  sync();
}

Net Runtime::net(const std::string& name, bool required) {
  Net n;
  n.name = name;
  if (std::find(networks.begin(), networks.end(), name) == networks.end()) {
    if (required) throw std::runtime_error("bmodel has no network '" + name + "'");
    return n;
  }
  n.info = bmrt_get_network_info(rt_, name.c_str());
  if (!n.info) throw std::runtime_error("cannot read network info of '" + name + "'");
  return n;
}

// ---- layout: read the shapes, refuse what this runtime cannot run ---------------------

namespace {

const char* kSupported =
    "supported: a batch-1, single-device Qwen3-VL bmodel from tpu-mlir's llm_convert (static or --dynamic, "
    "with or without --do_sample; bf16/f16 activations): networks embedding, embedding_cache, lm_head, "
    "block_<i> (2-3 inputs, 3 outputs) and block_cache_<i> (5 inputs incl. history K/V [1,SEQLEN,kv_heads,"
    "head_dim], 3 outputs) for every layer, optionally vit (pos_idx [P,4]), add, greedy_head, sample_head; "
    "or a batch-N build (llm_convert -b N): block_cache_<i> with states [N,1,H], positions [N,3,1], mask "
    "[N,1,1,SEQLEN], history K/V [N,SEQLEN,kv_heads,head_dim] and 1 output (K/V inserted at row SEQLEN-1) or 3 "
    "(+ new K/V [N,1,kv_heads,head_dim]), one stage; batch-1 prefill, "
    "embedding_cache and lm_head; or a batch-1 --use_history_kv build: dynamic block_<i> without mask and "
    "block_kv_<i> (states [1,MAX_INPUT_LENGTH,H], positions, history K/V [1,SEQLEN,kv_heads,head_dim]; 3 outputs)";

std::string dims_of(const Net& n, bool inputs) {
  std::string r;
  const int count = inputs ? n.info->input_num : n.info->output_num;
  for (int i = 0; i < count; i++)
    r += (i ? " " : "") + shape_str(inputs ? n.in_shape(i) : n.out_shape(i));
  return r;
}

[[noreturn]] void unsupported(const std::string& path, const std::string& found) {
  throw std::runtime_error("unsupported bmodel " + path + ": " + found + "; " + kSupported);
}

}  // namespace

void Runtime::read_layout() {
  for (const char* name : {"embedding", "embedding_cache", "lm_head", "block_0", "block_cache_0"})
    if (std::find(networks.begin(), networks.end(), name) == networks.end()) {
      std::string all;
      for (auto& s : networks) all += (all.empty() ? "" : ", ") + s;
      unsupported(path_, std::string("no network '") + name + "' (networks: " + all + ")");
    }
  emb_ = net("embedding", true);
  embc_ = net("embedding_cache", true);
  lm_ = net("lm_head", true);
  vit_ = net("vit", false);
  add_ = net("add", false);
  greedy_ = net("greedy_head", false);
  sample_ = net("sample_head", false);
  for (int l = 0;; l++) {
    Net b = net("block_" + std::to_string(l), false);
    Net c = net("block_cache_" + std::to_string(l), false);
    if (!b.present() && !c.present()) break;
    if (!b.present() || !c.present())
      unsupported(path_, "layer " + std::to_string(l) + " has only one of block_" + std::to_string(l) +
                             " / block_cache_" + std::to_string(l));
    blocks_.push_back(b);
    caches_.push_back(c);
  }
  num_layers = static_cast<int>(blocks_.size());

  const Net& b0 = blocks_[0];
  if (b0.info->input_num == 5)
    unsupported(path_, "block_0 takes 5 inputs (history K/V: a --use_history_kv build)");
  const bm_shape_t& hs = b0.in_shape(0);  // [1, MAX_INPUT_LENGTH, H]
  if (b0.info->input_num < 2 || b0.info->input_num > 3 || b0.info->output_num != 3 || hs.num_dims != 3 ||
      hs.dims[0] != 1)
    unsupported(path_, "block_0 inputs " + dims_of(b0, true) + ", outputs " + dims_of(b0, false));
  max_input_length = hs.dims[1];
  hidden_size = hs.dims[2];
  prefill_dynamic = b0.info->is_dynamic;
  const bm_data_type_t hdt = emb_.out_dtype(0);
  if (hdt != BM_BFLOAT16 && hdt != BM_FLOAT16)
    unsupported(path_, "activations of dtype " + std::to_string(hdt) + " (embedding output)");

  const Net& first_cache = caches_[0];
  const bool batched = first_cache.info->input_num == 5 && first_cache.in_shape(0).num_dims == 3 &&
                       first_cache.in_shape(0).dims[0] > 1;
  if (batched) {
    read_batch_layout();
  } else {
    const Net& c0 = caches_[0];
    if (c0.info->input_num != 5 || c0.info->output_num != 3) {
      const int batch = c0.in_shape(0).num_dims > 0 ? c0.in_shape(0).dims[0] : 0;
      unsupported(path_, "block_cache_0 takes " + std::to_string(c0.info->input_num) + " inputs and gives " +
                             std::to_string(c0.info->output_num) + " outputs (" + dims_of(c0, true) + " -> " +
                             dims_of(c0, false) + (batch > 1 ? ": a batch-" + std::to_string(batch) + " build" : "") +
                             ")");
    }
    // block_cache may hold several stages (llm_convert --chunk_length): one per KV length
    std::vector<std::pair<int, int>> stages;  // (kv length, stage number)
    for (int s = 0; s < c0.info->stage_num; s++) {
      const bm_shape_t& ks = c0.in_shape(3, s);  // [1, kv_len, kv_heads, head_dim]
      if (ks.num_dims != 4 || ks.dims[0] != 1 || !same_shape(c0.in_shape(0, s), {1, 1, hidden_size}))
        unsupported(path_, "block_cache_0 stage " + std::to_string(s) + " history " + shape_str(ks) + ", states " +
                               shape_str(c0.in_shape(0, s)));
      stages.emplace_back(ks.dims[1], s);
    }
    std::sort(stages.begin(), stages.end());
    for (auto& [len, s] : stages) {
      decode_stages.push_back(len);
      cache_stage_index_.push_back(s);
    }
    cache_full_stage_ = stages.back().second;
    const bm_shape_t& ks = c0.in_shape(3, cache_full_stage_);
    seq_len = ks.dims[1];
    kv_heads = ks.dims[2];
    head_dim = ks.dims[3];
    if (seq_len < max_input_length)
      unsupported(path_, "SEQLEN " + std::to_string(seq_len) + " below MAX_INPUT_LENGTH " + std::to_string(max_input_length));
    for (const Net& c : caches_)
      if (c.info->stage_num != c0.info->stage_num || !same_shape(c.in_shape(3, cache_full_stage_), {1, seq_len, kv_heads, head_dim}))
        unsupported(path_, c.name + " differs from block_cache_0 (" + dims_of(c, true) + ")");
  }

  if (std::find(networks.begin(), networks.end(), "block_kv_0") != networks.end()) read_history_layout();

  const bm_shape_t& lin = lm_.in_shape(0);
  if (lin.num_dims != 2 || lin.dims[1] != hidden_size)
    unsupported(path_, "lm_head input " + shape_str(lin) + " (hidden size " + std::to_string(hidden_size) + ")");
  const bm_shape_t& ls = lm_.out_shape(0);
  lm_head_logits = lm_.out_dtype(0) != BM_INT32 && shape_count(ls) > 1;
  vocab_size = lm_head_logits ? ls.dims[ls.num_dims - 1] : 0;

  if (vit_.present()) {
    const bm_shape_t& px = vit_.in_shape(0);
    vit_inputs = vit_.info->input_num;
    vit_outputs = vit_.info->output_num;
    if (px.num_dims != 2 || vit_inputs < 4 || vit_inputs > 5 || vit_outputs < 1)
      unsupported(path_, "vit inputs " + dims_of(vit_, true) + ", outputs " + dims_of(vit_, false));
    vit_patches = px.dims[0];
    vit_patch_dim = px.dims[1];
    if (same_shape(vit_.in_shape(2), {4, vit_patches}) && vit_patches != 4)
      unsupported(path_, "vit pos_idx " + shape_str(vit_.in_shape(2)) + " (the older [4,P] layout; this runtime feeds [P,4])");
    if (!same_shape(vit_.in_shape(1), {vit_patches, 2}) || !same_shape(vit_.in_shape(2), {vit_patches, 4}))
      unsupported(path_, "vit inputs " + dims_of(vit_, true));
    for (int i = 0; i < vit_outputs; i++)
      if (!same_shape(vit_.out_shape(i), {vit_patches / 4, hidden_size}))
        unsupported(path_, "vit outputs " + dims_of(vit_, false));
    vit_dynamic = vit_.info->is_dynamic;
  }
  // `add` adds a deepstack feature to a whole prefill hidden buffer; used when it fits
  has_add = add_.present() && add_.info->input_num == 2 && add_.info->output_num == 1 &&
            add_.in_bytes(0) == static_cast<size_t>(max_input_length) * hidden_size * dtype_size(hdt) &&
            add_.in_dtype(0) == hdt && add_.in_dtype(1) == hdt;
  has_greedy_head = lm_head_logits && greedy_.present();
  has_sample_head = lm_head_logits && sample_.present() && sample_.info->input_num == 6;
  if (has_sample_head) sample_candidates = sample_.out_shape(0).dims[sample_.out_shape(0).num_dims - 1];
}

// block_cache_i of a batch-N build: all N slots in one launch, new K/V inserted into the
// history inputs at row SEQLEN-1 of each slot (so a slot holds at most SEQLEN-1 tokens).
void Runtime::read_batch_layout() {
  const Net& c0 = caches_[0];
  const bm_shape_t& st = c0.in_shape(0);
  batch = st.dims[0];
  const bm_shape_t& ks = c0.in_shape(3);
  if (c0.info->stage_num != 1 || ks.num_dims != 4 || ks.dims[0] != batch || !same_shape(st, {batch, 1, hidden_size}))
    unsupported(path_, "batch-" + std::to_string(batch) + " block_cache_0 with " + std::to_string(c0.info->stage_num) +
                           " stage(s): " + dims_of(c0, true));
  seq_len = ks.dims[1];
  kv_heads = ks.dims[2];
  head_dim = ks.dims[3];
  for (const Net& c : caches_)
    if (c.info->input_num != 5 || (c.info->output_num != 1 && c.info->output_num != 3) ||
        c.info->output_num != c0.info->output_num || c.info->stage_num != 1 ||
        !same_shape(c.in_shape(0), {batch, 1, hidden_size}) || !same_shape(c.in_shape(1), {batch, 3, 1}) ||
        !same_shape(c.in_shape(2), {batch, 1, 1, seq_len}) ||
        !same_shape(c.in_shape(3), {batch, seq_len, kv_heads, head_dim}) ||
        !same_shape(c.in_shape(4), {batch, seq_len, kv_heads, head_dim}) || !same_shape(c.out_shape(0), {batch, 1, hidden_size}) ||
        (c.info->output_num == 3 && (!same_shape(c.out_shape(1), {batch, 1, kv_heads, head_dim}) ||
                                     !same_shape(c.out_shape(2), {batch, 1, kv_heads, head_dim}))))
      unsupported(path_, "batch-" + std::to_string(batch) + " " + c.name + " inputs " + dims_of(c, true) + ", outputs " +
                             dims_of(c, false));
  if (!same_shape(embc_.in_shape(0), {1, 1}) || lm_.in_shape(0).dims[0] != 1)
    unsupported(path_, "batch-" + std::to_string(batch) + " build with embedding_cache " + dims_of(embc_, true) +
                           " and lm_head " + dims_of(lm_, true) + " (this runtime runs them once per slot: batch 1)");
  if (seq_len <= max_input_length)
    unsupported(path_, "SEQLEN " + std::to_string(seq_len) + " not above MAX_INPUT_LENGTH " + std::to_string(max_input_length));
  decode_stages = {seq_len};
  cache_stage_index_ = {0};
  cache_full_stage_ = 0;
  slot_length_.assign(static_cast<size_t>(batch), 0);
}

// block_kv_i of a --use_history_kv build: a prefill chunk (states [1,C,H], positions) on
// top of history K/V [1,h,kv_heads,head_dim] (dynamic: the h rows before the chunk, no mask
// needed), giving the chunk's states and K/V.  block_i runs a chunk with no history.
void Runtime::read_history_layout() {
  if (batch > 1) unsupported(path_, "a batch-" + std::to_string(batch) + " --use_history_kv build");
  const Net& b0 = blocks_[0];
  if (!prefill_dynamic || b0.info->input_num != 2)
    unsupported(path_, "a --use_history_kv build whose block_0 is not dynamic with 2 inputs (" +
                           std::string(prefill_dynamic ? "dynamic" : "static") + ", inputs " + dims_of(b0, true) + ")");
  for (int l = 0; l < num_layers; l++) {
    Net k = net("block_kv_" + std::to_string(l), false);
    const std::initializer_list<int> chunk_kv = {1, max_input_length, kv_heads, head_dim};
    if (!k.present())
      unsupported(path_, "a --use_history_kv build without block_kv_" + std::to_string(l));
    if (!k.info->is_dynamic || k.info->input_num != 4 || k.info->output_num != 3 ||
        !same_shape(k.in_shape(0), {1, max_input_length, hidden_size}) ||
        !same_shape(k.in_shape(2), {1, seq_len, kv_heads, head_dim}) ||
        !same_shape(k.in_shape(3), {1, seq_len, kv_heads, head_dim}) || !same_shape(k.out_shape(1), chunk_kv) ||
        !same_shape(k.out_shape(2), chunk_kv))
      unsupported(path_, k.name + " inputs " + dims_of(k, true) + ", outputs " + dims_of(k, false) +
                             (k.info->is_dynamic ? "" : " (static)"));
    kv_blocks_.push_back(k);
  }
  history_kv = true;
}

void Runtime::allocate_buffers() {
  const Net& b0 = blocks_[0];
  const size_t hsz = dtype_size(emb_.out_dtype(0));
  const size_t hidden_buffer = static_cast<size_t>(max_input_length) * hidden_size * hsz;
  ids_ = alloc(static_cast<size_t>(max_input_length) * 4);
  pos_ = alloc(static_cast<size_t>(3 * max_input_length) * 4);
  if (b0.info->input_num >= 3) mask_ = alloc(b0.in_bytes(2));
  for (auto& h : hid_) h = alloc(hidden_buffer);
  // the KV cache is the block_cache nets' own history inputs (their largest stage)
  for (const Net& c : caches_) {
    kcache_.push_back(c.in_mem(3, cache_full_stage_));
    vcache_.push_back(c.in_mem(4, cache_full_stage_));
  }
  logits_ = alloc(lm_.out_bytes(0));
  id1_ = alloc(4);
  dlast_ = alloc(static_cast<size_t>(batch) * hidden_size * hsz);
  if (batch > 1) batch_ids_ = alloc(static_cast<size_t>(batch) * 4);
  if (batch > 1 && caches_[0].info->output_num == 3)
    for (const Net& c : caches_) {
      batch_new_k_.push_back(alloc(c.out_bytes(1)));
      batch_new_v_.push_back(alloc(c.out_bytes(2)));
    }
  if (has_greedy_head) tok_ = alloc(4);
  if (has_sample_head) {
    s_ids_ = alloc(sample_.in_bytes(1));
    s_penalty_ = alloc(4);
    s_temp_ = alloc(4);
    s_topk_ = alloc(4);
    s_topp_ = alloc(4);
    s_probs_ = alloc(sample_.out_bytes(0));
    s_idx_ = alloc(sample_.out_bytes(1));
  }
  if (vit_.present()) {
    for (int i = 0; i < vit_inputs; i++) vit_in_.push_back(alloc(vit_.in_bytes(i)));
    for (int i = 0; i < vit_outputs; i++) vit_out_.push_back(alloc(vit_.out_bytes(i)));
    for (int i = 1; i < vit_outputs; i++) deepstack_.push_back(alloc(hidden_buffer));
  }
  if (history_kv) {
    // + one chunk: the static embedding writes whole chunks
    const size_t prompt_buffer = static_cast<size_t>(seq_len + max_input_length) * hidden_size * hsz;
    prompt_hid_ = alloc(prompt_buffer);
    for (size_t i = 0; i < deepstack_.size(); i++) prompt_ds_.push_back(alloc(prompt_buffer));
    for (auto& t : kv_tail_) t = alloc(blocks_[0].out_bytes(1));
  }
}

void Runtime::close_locked() {
  if (handle_) {
    for (auto& m : owned_) bm_free_device(handle_, m);
  }
  owned_.clear();
  kcache_.clear();
  vcache_.clear();
  vit_in_.clear();
  vit_out_.clear();
  batch_new_k_.clear();
  batch_new_v_.clear();
  deepstack_.clear();
  prompt_ds_.clear();
  if (rt_) {
    bmrt_destroy(rt_);
    rt_ = nullptr;
  }
  if (handle_) {
    bm_dev_free(handle_);
    handle_ = nullptr;
  }
  token_length = 0;
  logits_valid_ = false;
}

// ---- KV cache --------------------------------------------------------------------------

// Rows a decode step never writes before it attends to them (masked, but a NaN or Inf
// there still poisons the softmax) must hold finite values: zeros.
void Runtime::zero_kv_rows(int from, int to) {
  if (to <= from) return;
  const size_t row = static_cast<size_t>(kv_heads) * head_dim * dtype_size(caches_[0].in_dtype(3));
  for (int l = 0; l < num_layers; l++) {
    memset16(sub(kcache_[static_cast<size_t>(l)], static_cast<size_t>(from) * row, static_cast<size_t>(to - from) * row), 0);
    memset16(sub(vcache_[static_cast<size_t>(l)], static_cast<size_t>(from) * row, static_cast<size_t>(to - from) * row), 0);
  }
}

void Runtime::reset() {
  std::lock_guard<std::mutex> g(mu_);
  check_open();
  zero_kv_rows(0, seq_len * batch);
  sync();
  kv_dirty_rows_ = 0;
  token_length = 0;
  std::fill(slot_length_.begin(), slot_length_.end(), 0);
  dmask_stage_ = -1;
}

void Runtime::test_fill_kv_cache(uint16_t pattern) {
  std::lock_guard<std::mutex> g(mu_);
  check_open();
  for (int l = 0; l < num_layers; l++) {
    memset16(kcache_[static_cast<size_t>(l)], pattern);
    memset16(vcache_[static_cast<size_t>(l)], pattern);
  }
  sync();
  kv_dirty_rows_ = seq_len;
}

std::vector<uint16_t> Runtime::test_read_kv_cache(int layer, int which) {
  std::lock_guard<std::mutex> g(mu_);
  check_open();
  if (layer < 0 || layer >= num_layers || which < 0 || which > 1) throw std::invalid_argument("no such KV buffer");
  const bm_device_mem_t m = (which == 0 ? kcache_ : vcache_)[static_cast<size_t>(layer)];
  std::vector<uint16_t> out(bm_mem_get_device_size(m) / 2);
  sync();
  d2s_at(out.data(), m, 0, out.size() * 2);
  return out;
}

// ---- prefill ---------------------------------------------------------------------------

int Runtime::prefill(const PrefillInputs& in, std::vector<float>& logits, int keep) {
  std::lock_guard<std::mutex> g(mu_);
  check_open();
  if (batch > 1) throw std::logic_error("a batch-" + std::to_string(batch) + " bmodel prefills per slot (prefill_slot)");
  check_prefill(in, keep);
  token_length = 0;
  dmask_stage_ = -1;
  const int end = keep + static_cast<int>(in.ids.size);
  const int rows = prefill_dynamic ? end : max_input_length;  // cache rows holding K/V after this prefill
  zero_kv_rows(rows, kv_dirty_rows_);
  kv_dirty_rows_ = rows;
  const int tok = history_kv ? run_prefill_chunked(in, keep, logits) : run_prefill(in, 0, logits);
  token_length = end;
  return tok;
}

// Rows of a slot past its length are never zeroed: the decode mask closes them and they
// hold finite values (zeros from load, or K/V an earlier sequence computed).
int Runtime::prefill_slot(int slot, const PrefillInputs& in, std::vector<float>& logits) {
  std::lock_guard<std::mutex> g(mu_);
  check_open();
  if (batch <= 1) throw std::logic_error("prefill_slot needs a batch-N bmodel; this one is batch 1 (use prefill)");
  if (slot < 0 || slot >= batch) throw std::invalid_argument("slot " + std::to_string(slot) + " outside [0, " + std::to_string(batch) + ")");
  check_prefill(in, 0);
  slot_length_[static_cast<size_t>(slot)] = 0;
  const size_t kv_row = static_cast<size_t>(kv_heads) * head_dim * dtype_size(caches_[0].in_dtype(3));
  const int tok = run_prefill(in, static_cast<size_t>(slot) * seq_len * kv_row, logits);
  slot_length_[static_cast<size_t>(slot)] = static_cast<int>(in.ids.size);
  return tok;
}

std::vector<int> Runtime::slot_lengths() {
  std::lock_guard<std::mutex> g(mu_);
  return slot_length_;
}

// The prompt through embedding, vision and the prefill blocks; each block's K/V go straight
// into the cache at byte `kv_offset` of every layer's history buffers.
int Runtime::run_prefill(const PrefillInputs& in, size_t kv_offset, std::vector<float>& logits) {
  const int L = static_cast<int>(in.ids.size);
  last_vit_rows.assign(in.vit_calls.size(), {});
  const int rows = prefill_dynamic ? L : max_input_length;
  embed_prompt(in.ids, hid_[0]);
  const std::vector<VisualRun> runs = visual_runs(in.vis_pos);
  if (!runs.empty()) encode_vision(in, runs, hid_[0], deepstack_);
  upload_positions_and_mask(in.pos3, L, rows);
  const int cur = run_layers(rows, 0, kv_offset, runs);
  const size_t row_bytes = static_cast<size_t>(hidden_size) * dtype_size(emb_.out_dtype(0));
  return run_lm_head(sub(hid_[cur], static_cast<size_t>(L - 1) * row_bytes, row_bytes), logits);
}

// History-KV builds: the prompt after the `keep` cached rows, in chunks of MAX_INPUT_LENGTH.
// Embeddings and vision rows of the whole prompt are laid out first (a vision block may
// straddle two chunks); then each chunk's rows, deepstack rows and positions are copied to
// where the blocks read them and run on top of every row before them.
int Runtime::run_prefill_chunked(const PrefillInputs& in, int keep, std::vector<float>& logits) {
  const int L = static_cast<int>(in.ids.size), C = max_input_length;
  last_vit_rows.assign(in.vit_calls.size(), {});
  const size_t row_bytes = static_cast<size_t>(hidden_size) * dtype_size(emb_.out_dtype(0));
  for (int c0 = 0; c0 < L; c0 += C)
    embed_prompt({in.ids.data + c0, static_cast<size_t>(std::min(C, L - c0))},
                 sub(prompt_hid_, static_cast<size_t>(c0) * row_bytes, static_cast<size_t>(C) * row_bytes));
  const std::vector<VisualRun> runs = visual_runs(in.vis_pos);
  if (!runs.empty()) encode_vision(in, runs, prompt_hid_, prompt_ds_);
  int cur = 0, rows = 0;
  for (int c0 = 0; c0 < L; c0 += C) {
    rows = std::min(C, L - c0);
    const size_t at = static_cast<size_t>(c0) * row_bytes, bytes = static_cast<size_t>(rows) * row_bytes;
    d2d(hid_[0], 0, prompt_hid_, at, bytes);
    std::vector<VisualRun> chunk_runs;  // rows relative to the chunk
    for (const VisualRun& r : runs) {
      const int lo = std::max(r.row, c0), hi = std::min(r.row + r.count, c0 + rows);
      if (lo < hi) chunk_runs.push_back({r.first + static_cast<size_t>(lo - r.row), lo - c0, hi - lo});
    }
    if (!chunk_runs.empty())
      for (size_t i = 0; i < deepstack_.size(); i++) d2d(deepstack_[i], 0, prompt_ds_[i], at, bytes);
    std::vector<int32_t> pos(static_cast<size_t>(3 * rows));
    for (int r = 0; r < 3; r++)
      std::copy_n(in.pos3.data + static_cast<size_t>(r) * L + c0, rows, pos.begin() + static_cast<std::ptrdiff_t>(r) * rows);
    upload_positions_and_mask({pos.data(), pos.size()}, rows, rows);
    cur = run_layers(rows, keep + c0, 0, chunk_runs);
  }
  return run_lm_head(sub(hid_[cur], static_cast<size_t>(rows - 1) * row_bytes, row_bytes), logits);
}

// `rows` prompt rows (states in hid_[0], positions and mask uploaded) through every layer.
// Their K/V go into the cache at row `history` of the region at byte `kv_offset`; with
// history > 0 (history-KV builds) block_kv_i attends to the rows before them.  Deepstack
// features are added over `runs` (rows relative to hid_).  Returns the buffer holding the
// last layer's states.
int Runtime::run_layers(int rows, int history, size_t kv_offset, const std::vector<VisualRun>& runs) {
  int cur = 0;
  const bool with_deepstack = !runs.empty() && !deepstack_.empty();
  const bool has_mask = blocks_[0].info->input_num >= 3;
  const size_t kv_row = static_cast<size_t>(kv_heads) * head_dim * dtype_size(blocks_[0].out_dtype(1));
  const size_t at = kv_offset + static_cast<size_t>(history) * kv_row;
  // dynamic nets check a user buffer against their largest output: MAX_INPUT_LENGTH rows,
  // straight in the cache when they fit there, else in a spare buffer copied after
  const size_t chunk_bytes = static_cast<size_t>(max_input_length) * kv_row;
  const bool tail = history + max_input_length > seq_len;
  for (int l = 0; l < num_layers; l++) {
    const Net& n = history > 0 ? kv_blocks_[static_cast<size_t>(l)] : blocks_[static_cast<size_t>(l)];
    const bm_device_mem_t k = kcache_[static_cast<size_t>(l)], v = vcache_[static_cast<size_t>(l)];
    bm_tensor_t inputs[4];
    int nin = 0;
    inputs[nin++] = tensor(hid_[cur], n.in_dtype(0), make_shape({1, rows, hidden_size}));
    // batch-N builds declare prefill positions [1, 3, L]
    inputs[nin++] =
        tensor(pos_, n.in_dtype(1), n.in_shape(1).num_dims == 3 ? make_shape({1, 3, rows}) : make_shape({3, rows}));
    if (history > 0) {
      // The net concatenates history and chunk K/V in place (the compiler lays its history
      // input out in front of the chunk's rows): the history goes into its own input
      // buffers, not a pointer to the cache.
      const bm_shape_t hs = make_shape({1, history, kv_heads, head_dim});
      const size_t hbytes = static_cast<size_t>(history) * kv_row;
      d2d(n.in_mem(2), 0, k, kv_offset, hbytes);
      d2d(n.in_mem(3), 0, v, kv_offset, hbytes);
      inputs[nin++] = tensor(n.in_mem(2), n.in_dtype(2), hs);
      inputs[nin++] = tensor(n.in_mem(3), n.in_dtype(3), hs);
    } else if (has_mask) {
      inputs[nin++] = tensor(mask_, n.in_dtype(2), make_shape({1, 1, rows, rows}));
    }
    bm_tensor_t out[3];
    const bm_shape_t kvs = make_shape({1, rows, kv_heads, head_dim});
    out[0] = tensor(hid_[1 - cur], n.out_dtype(0), make_shape({1, rows, hidden_size}));
    out[1] = tensor(tail ? kv_tail_[0] : sub(k, at, chunk_bytes), n.out_dtype(1), kvs);
    out[2] = tensor(tail ? kv_tail_[1] : sub(v, at, chunk_bytes), n.out_dtype(2), kvs);
    launch(n, inputs, nin, out, 3);
    if (tail) {
      d2d(k, at, kv_tail_[0], 0, static_cast<size_t>(rows) * kv_row);
      d2d(v, at, kv_tail_[1], 0, static_cast<size_t>(rows) * kv_row);
    }
    cur = 1 - cur;
    if (with_deepstack && static_cast<size_t>(l) < deepstack_.size()) cur = add_deepstack(cur, l, runs);
  }
  return cur;
}

void Runtime::check_prefill(const PrefillInputs& in, int keep) const {
  const int L = static_cast<int>(in.ids.size);
  if (L <= 0) throw std::invalid_argument("empty prompt");
  if (keep < 0 || keep > token_length)
    throw std::invalid_argument("cannot keep " + std::to_string(keep) + " rows: the cache holds " +
                                std::to_string(token_length));
  if (keep > 0 && !history_kv)
    throw std::invalid_argument("only a --use_history_kv bmodel prefills on top of cached rows");
  if (history_kv && keep + L > seq_len)
    throw std::invalid_argument("prompt of " + std::to_string(keep + L) + " tokens exceeds SEQLEN " +
                                std::to_string(seq_len));
  if (!history_kv && L > max_input_length)
    throw std::invalid_argument("prompt of " + std::to_string(L) + " tokens exceeds MAX_INPUT_LENGTH " +
                                std::to_string(max_input_length));
  if (in.pos3.size != static_cast<size_t>(3 * L)) throw std::invalid_argument("position_ids must be [3, L]");
  for (size_t i = 0; i < in.vis_pos.size; i++)
    if (in.vis_pos.data[i] < 0 || in.vis_pos.data[i] >= L) throw std::invalid_argument("visual position outside the prompt");
  size_t tokens = 0;
  for (const VitCall& c : in.vit_calls) tokens += static_cast<size_t>(c.tokens);
  if (tokens != in.vis_pos.size)
    throw std::invalid_argument("the vision calls give " + std::to_string(tokens) + " tokens for " +
                                std::to_string(in.vis_pos.size) + " visual positions");
  if (tokens && !vit_.present()) throw std::invalid_argument("this bmodel has no vision encoder");
  const size_t row = static_cast<size_t>(hidden_size);
  for (const VitCall& c : in.vit_calls)
    if (!c.cached.empty() && (c.cached.size != static_cast<size_t>(vit_outputs) * c.tokens * row ||
                              dtype_size(emb_.out_dtype(0)) != 2 || c.tokens > vit_patches / 4))
      throw std::invalid_argument("cached vit rows must be [vit outputs, tokens, hidden] 16-bit values");
}

// Token ids -> hidden rows in `dst` (the embedding stays static in dynamic builds).
void Runtime::embed_prompt(const View<int32_t>& ids, bm_device_mem_t dst) {
  const int L = static_cast<int>(ids.size);
  const int Le = emb_.info->is_dynamic ? L : emb_.in_shape(0).dims[1];
  std::vector<int32_t> idbuf(static_cast<size_t>(max_input_length), 0);
  std::copy(ids.data, ids.data + L, idbuf.begin());
  s2d(ids_, idbuf.data(), static_cast<size_t>(Le) * 4);
  bm_tensor_t in = tensor(ids_, emb_.in_dtype(0), make_shape({1, Le}));
  bm_tensor_t out = tensor(dst, emb_.out_dtype(0), make_shape({1, Le, hidden_size}));
  launch(emb_, &in, 1, &out, 1);
}

std::vector<VisualRun> Runtime::visual_runs(const View<int32_t>& vis_pos) const {
  std::vector<VisualRun> runs;
  for (size_t i = 0; i < vis_pos.size;) {
    size_t j = i + 1;
    while (j < vis_pos.size && vis_pos.data[j] == vis_pos.data[j - 1] + 1) j++;
    runs.push_back({i, vis_pos.data[i], static_cast<int>(j - i)});
    i = j;
  }
  return runs;
}

// Every vit call's rows go, on the device, to their prompt rows: the merged embeddings
// into `hidden`, deepstack feature i into `deepstack[i]` (zeros elsewhere).
void Runtime::encode_vision(const PrefillInputs& in, const std::vector<VisualRun>& runs, bm_device_mem_t hidden,
                            const std::vector<bm_device_mem_t>& deepstack) {
  for (auto& d : deepstack) memset16(d, 0);
  const size_t row_bytes = static_cast<size_t>(hidden_size) * dtype_size(emb_.out_dtype(0));
  size_t first = 0;  // index of the call's first vision token
  for (size_t k = 0; k < in.vit_calls.size(); k++) {
    const VitCall& call = in.vit_calls[k];
    if (k > 0) sync();  // the previous call may still read the vit input buffers
    const size_t rows_bytes = static_cast<size_t>(call.tokens) * row_bytes;
    if (!call.cached.empty()) {
      for (int i = 0; i < vit_outputs; i++)
        s2d(vit_out_[static_cast<size_t>(i)], call.cached.data + static_cast<size_t>(i) * rows_bytes / 2, rows_bytes);
    } else {
      run_vit(call);
      if (call.capture) {
        sync();
        std::vector<uint16_t>& keep = last_vit_rows[k];
        keep.resize(static_cast<size_t>(vit_outputs) * rows_bytes / 2);
        for (int i = 0; i < vit_outputs; i++)
          d2s_at(keep.data() + static_cast<size_t>(i) * rows_bytes / 2, vit_out_[static_cast<size_t>(i)], 0, rows_bytes);
      }
    }
    const size_t end = first + static_cast<size_t>(call.tokens);
    for (const VisualRun& r : runs) {
      const size_t lo = std::max(first, r.first), hi = std::min(end, r.first + static_cast<size_t>(r.count));
      if (lo >= hi) continue;
      const size_t dst = (static_cast<size_t>(r.row) + (lo - r.first)) * row_bytes;
      const size_t src = (lo - first) * row_bytes;
      d2d(hidden, dst, vit_out_[0], src, (hi - lo) * row_bytes);
      for (size_t i = 0; i < deepstack.size(); i++) d2d(deepstack[i], dst, vit_out_[i + 1], src, (hi - lo) * row_bytes);
    }
    first = end;
  }
}

void Runtime::run_vit(const VitCall& call) {
  const size_t P = vit_patch_dim ? call.pixels.size / static_cast<size_t>(vit_patch_dim) : 0;
  if (P == 0 || P > static_cast<size_t>(vit_patches) || P % 4) throw std::invalid_argument("bad vit patch count");
  if (!vit_dynamic && P != static_cast<size_t>(vit_patches))
    throw std::invalid_argument("static vit needs inputs padded to " + std::to_string(vit_patches) + " patches");
  if (call.pixels.size != P * vit_patch_dim || call.pos_ids.size != P * 2 || call.pos_idx.size != P * 4 ||
      call.pos_weight.size != P * 4)
    throw std::invalid_argument("vit input sizes do not match the patch count");
  if (call.tokens < 0 || static_cast<size_t>(call.tokens) > P / 4) throw std::invalid_argument("bad vit token count");
  const bool with_mask = vit_inputs >= 5;
  if (with_mask && call.mask.size != P * P) throw std::invalid_argument("vit attention mask must be [P, P]");
  auto upload_floats = [&](bm_device_mem_t dst, const View<float>& v, bm_data_type_t dt) {
    if (dt == BM_FLOAT32) {
      s2d(dst, v.data, v.size * 4);
    } else {
      const auto enc = encode_floats(v.data, v.size, dt);
      s2d(dst, enc.data(), enc.size());
    }
  };
  upload_floats(vit_in_[0], call.pixels, vit_.in_dtype(0));
  s2d(vit_in_[1], call.pos_ids.data, call.pos_ids.size * 4);
  s2d(vit_in_[2], call.pos_idx.data, call.pos_idx.size * 4);
  upload_floats(vit_in_[3], call.pos_weight, vit_.in_dtype(3));
  const int p = static_cast<int>(P);
  std::vector<bm_tensor_t> in(static_cast<size_t>(vit_inputs));
  in[0] = tensor(vit_in_[0], vit_.in_dtype(0), make_shape({p, vit_patch_dim}));
  in[1] = tensor(vit_in_[1], vit_.in_dtype(1), make_shape({p, 2}));
  in[2] = tensor(vit_in_[2], vit_.in_dtype(2), make_shape({p, 4}));
  in[3] = tensor(vit_in_[3], vit_.in_dtype(3), make_shape({p, 4, 1}));
  if (with_mask) {
    // the mask depends only on the grid: a repeated shape reuses the device copy
    const std::string key = call.mask_key.empty() ? std::string() : call.mask_key + "/" + std::to_string(P);
    if (key.empty() || key != vit_mask_key_) {
      vit_mask_key_.clear();
      upload_floats(vit_in_[4], call.mask, vit_.in_dtype(4));
      vit_mask_key_ = key;
    }
    in[4] = tensor(vit_in_[4], vit_.in_dtype(4), make_shape({1, 1, p, p}));
  }
  std::vector<bm_tensor_t> out(static_cast<size_t>(vit_outputs));
  for (int i = 0; i < vit_outputs; i++)
    out[static_cast<size_t>(i)] =
        tensor(vit_out_[static_cast<size_t>(i)], vit_.out_dtype(i), make_shape({p / 4, hidden_size}));
  launch(vit_, in.data(), vit_inputs, out.data(), vit_outputs);
}

// Positions [3, rows] and, when the blocks take one, the causal mask [1, 1, rows, rows].
void Runtime::upload_positions_and_mask(const View<int32_t>& pos3, int L, int rows) {
  std::vector<int32_t> pbuf(static_cast<size_t>(3 * rows), 0);
  for (int r = 0; r < 3; r++)
    for (int i = 0; i < L; i++) pbuf[static_cast<size_t>(r * rows + i)] = pos3.data[static_cast<size_t>(r * L + i)];
  s2d(pos_, pbuf.data(), pbuf.size() * 4);
  const bool has_mask = blocks_[0].info->input_num >= 3;
  if (has_mask && (prefill_dynamic || !mask_ready_)) {
    std::vector<float> m(static_cast<size_t>(rows) * rows, 0.0f);
    for (int i = 0; i < rows; i++)
      for (int j = i + 1; j < rows; j++) m[static_cast<size_t>(i) * rows + j] = kMaskValue;
    const auto enc = encode_floats(m.data(), m.size(), blocks_[0].in_dtype(2));
    s2d(mask_, enc.data(), enc.size());
    mask_ready_ = !prefill_dynamic;
  }
}

// Deepstack feature `layer` is added to the hidden states after block `layer`: by the
// bmodel's `add` net into the other hidden buffer when there is one, else on the host
// over the vision rows.  Returns the buffer holding the result.
int Runtime::add_deepstack(int cur, int layer, const std::vector<VisualRun>& runs) {
  const bm_device_mem_t feature = deepstack_[static_cast<size_t>(layer)];
  if (has_add) {
    bm_tensor_t in[2];
    in[0] = tensor(hid_[cur], add_.in_dtype(0), add_.in_shape(0));
    in[1] = tensor(feature, add_.in_dtype(1), add_.in_shape(1));
    bm_tensor_t out = tensor(hid_[1 - cur], add_.out_dtype(0), add_.out_shape(0));
    launch(add_, in, 2, &out, 1);
    return 1 - cur;
  }
  const bm_data_type_t hdt = emb_.out_dtype(0);
  const size_t row_bytes = static_cast<size_t>(hidden_size) * dtype_size(hdt);
  sync();
  for (const VisualRun& r : runs) {
    const size_t off = static_cast<size_t>(r.row) * row_bytes, n = static_cast<size_t>(r.count) * hidden_size;
    std::vector<uint8_t> h(n * dtype_size(hdt)), f(n * dtype_size(hdt));
    d2s_at(h.data(), hid_[cur], off, h.size());
    d2s_at(f.data(), feature, off, f.size());
    std::vector<float> a(n), b(n);
    decode_floats(h.data(), n, hdt, a.data());
    decode_floats(f.data(), n, hdt, b.data());
    for (size_t i = 0; i < n; i++) a[i] += b[i];
    const auto enc = encode_floats(a.data(), n, hdt);
    s2d_at(hid_[cur], off, enc.data(), enc.size());
  }
  return cur;
}

int Runtime::run_lm_head(bm_device_mem_t hidden_row, std::vector<float>& logits) {
  bm_tensor_t in = tensor(hidden_row, lm_.in_dtype(0), make_shape({1, hidden_size}));
  bm_tensor_t out = tensor(logits_, lm_.out_dtype(0), lm_.out_shape(0));
  launch(lm_, &in, 1, &out, 1);
  sync();
  logits_valid_ = true;
  if (lm_head_logits) {
    const size_t n = static_cast<size_t>(vocab_size);
    logits.resize(n);
    if (lm_.out_dtype(0) == BM_FLOAT32) {
      d2s_at(logits.data(), logits_, 0, n * 4);
    } else {
      std::vector<uint8_t> raw(n * dtype_size(lm_.out_dtype(0)));
      d2s_at(raw.data(), logits_, 0, raw.size());
      decode_floats(raw.data(), n, lm_.out_dtype(0), logits.data());
    }
    return -1;
  }
  int32_t tok = 0;
  d2s_at(&tok, logits_, 0, 4);
  return tok;
}

// ---- decode ----------------------------------------------------------------------------

// The smallest block_cache stage whose history holds every cached row.
int Runtime::decode_stage() const {
  for (size_t i = 0; i < decode_stages.size(); i++)
    if (decode_stages[i] >= token_length) return static_cast<int>(i);
  return static_cast<int>(decode_stages.size()) - 1;
}

// The decode mask [1, 1, 1, kv_len + 1] lives in block_cache_0's own input: rows
// [0, token_length) open, the rest of the history closed, the last slot (the new token
// itself) open.  Between steps only the newly cached row opens: a 2-byte upload.
void Runtime::upload_decode_mask(int stage) {
  const Net& c0 = caches_[0];
  const int s = cache_stage_index_[static_cast<size_t>(stage)];
  const int kv_len = decode_stages[static_cast<size_t>(stage)];
  const bm_data_type_t dt = c0.in_dtype(2);
  const size_t es = dtype_size(dt);
  if (dmask_stage_ == stage && dmask_rows_ <= token_length) {
    if (dmask_rows_ == token_length) return;
    const std::vector<float> zeros(static_cast<size_t>(token_length - dmask_rows_), 0.0f);
    const auto enc = encode_floats(zeros.data(), zeros.size(), dt);
    s2d_at(c0.in_mem(2, s), static_cast<size_t>(dmask_rows_) * es, enc.data(), enc.size());
  } else {
    std::vector<float> m(static_cast<size_t>(kv_len) + 1, 0.0f);
    for (int j = token_length; j < kv_len; j++) m[static_cast<size_t>(j)] = kMaskValue;
    const auto enc = encode_floats(m.data(), m.size(), dt);
    s2d(c0.in_mem(2, s), enc.data(), enc.size());
    dmask_stage_ = stage;
  }
  dmask_rows_ = token_length;
}

int Runtime::decode(int32_t token, int32_t position, std::vector<float>& logits) {
  std::lock_guard<std::mutex> g(mu_);
  check_open();
  if (batch > 1) throw std::logic_error("a batch-" + std::to_string(batch) + " bmodel decodes per step (decode_batch)");
  if (token_length <= 0) throw std::logic_error("decode before prefill");
  if (token_length >= seq_len) throw std::length_error("KV cache is full (SEQLEN " + std::to_string(seq_len) + ")");
  const int stage = decode_stage();
  const int s = cache_stage_index_[static_cast<size_t>(stage)];
  const int kv_len = decode_stages[static_cast<size_t>(stage)];
  last_decode_kv_length = kv_len;
  const Net& c0 = caches_[0];
  // every hidden state goes straight into the next network's own input buffer
  s2d(id1_, &token, 4);
  {
    bm_tensor_t in = tensor(id1_, embc_.in_dtype(0), make_shape({1, 1}));
    bm_tensor_t out = tensor(c0.in_mem(0, s), embc_.out_dtype(0), c0.in_shape(0, s));
    launch(embc_, &in, 1, &out, 1);
  }
  const int32_t p3[3] = {position, position, position};
  s2d(c0.in_mem(1, s), p3, 12);
  upload_decode_mask(stage);
  const size_t kv_row = static_cast<size_t>(kv_heads) * head_dim * dtype_size(c0.in_dtype(3));
  const size_t row_at = static_cast<size_t>(token_length) * kv_row;
  for (int l = 0; l < num_layers; l++) {
    const Net& n = caches_[static_cast<size_t>(l)];
    const bm_device_mem_t k = kcache_[static_cast<size_t>(l)], v = vcache_[static_cast<size_t>(l)];
    bm_tensor_t in[5];
    in[0] = tensor(n.in_mem(0, s), n.in_dtype(0), n.in_shape(0, s));
    in[1] = tensor(c0.in_mem(1, s), n.in_dtype(1), n.in_shape(1, s));  // positions and mask: layer 0's copy
    in[2] = tensor(c0.in_mem(2, s), n.in_dtype(2), n.in_shape(2, s));
    in[3] = tensor(sub(k, 0, static_cast<size_t>(kv_len) * kv_row), n.in_dtype(3), n.in_shape(3, s));
    in[4] = tensor(sub(v, 0, static_cast<size_t>(kv_len) * kv_row), n.in_dtype(4), n.in_shape(4, s));
    bm_tensor_t out[3];
    const bm_device_mem_t next = l + 1 < num_layers ? caches_[static_cast<size_t>(l) + 1].in_mem(0, s) : dlast_;
    out[0] = tensor(next, n.out_dtype(0), n.out_shape(0, s));
    out[1] = tensor(sub(k, row_at, kv_row), n.out_dtype(1), n.out_shape(1, s));  // the new row, in place
    out[2] = tensor(sub(v, row_at, kv_row), n.out_dtype(2), n.out_shape(2, s));
    launch(n, in, 5, out, 3);
  }
  token_length++;
  kv_dirty_rows_ = std::max(kv_dirty_rows_, token_length);
  return run_lm_head(dlast_, logits);
}

// One launch of each block_cache_i advances every slot.  Slots not in `slots` get a closed
// mask (only their own insertion row open), position 0 and last step's states row; their
// KV regions are untouched, since only the active slots' inserted rows are copied out.
std::vector<int> Runtime::decode_batch(const std::vector<int>& slots, const std::vector<int32_t>& tokens,
                                       const std::vector<int32_t>& positions, std::vector<std::vector<float>>& logits) {
  std::lock_guard<std::mutex> g(mu_);
  check_open();
  if (batch <= 1) throw std::logic_error("decode_batch needs a batch-N bmodel; this one is batch 1 (use decode)");
  if (slots.empty() || slots.size() != tokens.size() || slots.size() != positions.size())
    throw std::invalid_argument("decode_batch needs one token and one position per slot");
  std::vector<char> active(static_cast<size_t>(batch), 0);
  for (int s : slots) {
    if (s < 0 || s >= batch) throw std::invalid_argument("slot " + std::to_string(s) + " outside [0, " + std::to_string(batch) + ")");
    if (active[static_cast<size_t>(s)]) throw std::invalid_argument("slot " + std::to_string(s) + " given twice");
    active[static_cast<size_t>(s)] = 1;
    const int len = slot_length_[static_cast<size_t>(s)];
    if (len <= 0) throw std::logic_error("decode of slot " + std::to_string(s) + " before its prefill");
    if (len >= seq_len - 1)
      throw std::length_error("slot " + std::to_string(s) + "'s KV cache is full (SEQLEN " + std::to_string(seq_len) +
                              ", the last row is the batch net's insertion row)");
  }
  last_decode_kv_length = seq_len;
  const Net& c0 = caches_[0];
  const bool kv_out = c0.info->output_num == 3;  // new K/V as outputs, else inserted at row SEQLEN-1
  const bm_data_type_t hdt = c0.in_dtype(0);
  const size_t state_row = static_cast<size_t>(hidden_size) * dtype_size(hdt);
  // embedding_cache is batch 1: one launch per active slot, into that slot's states row
  std::vector<int32_t> ids(static_cast<size_t>(batch), 0);
  std::vector<int32_t> pos(static_cast<size_t>(batch) * 3, 0);
  std::vector<float> mask(static_cast<size_t>(batch) * seq_len, kMaskValue);
  for (int s = 0; s < batch; s++) mask[static_cast<size_t>(s + 1) * seq_len - 1] = 0.0f;  // the inserted row
  for (size_t i = 0; i < slots.size(); i++) {
    const size_t s = static_cast<size_t>(slots[i]);
    ids[s] = tokens[i];
    for (int r = 0; r < 3; r++) pos[s * 3 + static_cast<size_t>(r)] = positions[i];
    std::fill(mask.begin() + static_cast<std::ptrdiff_t>(s * seq_len),
              mask.begin() + static_cast<std::ptrdiff_t>(s * seq_len + static_cast<size_t>(slot_length_[s])), 0.0f);
  }
  s2d(batch_ids_, ids.data(), ids.size() * 4);
  for (int s : slots) {
    bm_tensor_t in = tensor(sub(batch_ids_, static_cast<size_t>(s) * 4, 4), embc_.in_dtype(0), make_shape({1, 1}));
    bm_tensor_t out = tensor(sub(c0.in_mem(0), static_cast<size_t>(s) * state_row, state_row), embc_.out_dtype(0),
                             embc_.out_shape(0));
    launch(embc_, &in, 1, &out, 1);
  }
  s2d(c0.in_mem(1), pos.data(), pos.size() * 4);
  const auto enc = encode_floats(mask.data(), mask.size(), c0.in_dtype(2));
  s2d(c0.in_mem(2), enc.data(), enc.size());
  for (int l = 0; l < num_layers; l++) {
    const Net& n = caches_[static_cast<size_t>(l)];
    bm_tensor_t in[5];
    in[0] = tensor(n.in_mem(0), n.in_dtype(0), n.in_shape(0));
    in[1] = tensor(c0.in_mem(1), n.in_dtype(1), n.in_shape(1));  // positions and mask: layer 0's copy
    in[2] = tensor(c0.in_mem(2), n.in_dtype(2), n.in_shape(2));
    in[3] = tensor(kcache_[static_cast<size_t>(l)], n.in_dtype(3), n.in_shape(3));
    in[4] = tensor(vcache_[static_cast<size_t>(l)], n.in_dtype(4), n.in_shape(4));
    const bm_device_mem_t next = l + 1 < num_layers ? caches_[static_cast<size_t>(l) + 1].in_mem(0) : dlast_;
    bm_tensor_t out[3];
    out[0] = tensor(next, n.out_dtype(0), n.out_shape(0));
    if (kv_out) {
      out[1] = tensor(batch_new_k_[static_cast<size_t>(l)], n.out_dtype(1), n.out_shape(1));
      out[2] = tensor(batch_new_v_[static_cast<size_t>(l)], n.out_dtype(2), n.out_shape(2));
    }
    launch(n, in, 5, out, kv_out ? 3 : 1);
  }
  // lm_head is batch 1: one launch per active slot (each waits for its result)
  std::vector<int> result(slots.size());
  logits.assign(slots.size(), {});
  for (size_t i = 0; i < slots.size(); i++)
    result[i] = run_lm_head(sub(dlast_, static_cast<size_t>(slots[i]) * state_row, state_row), logits[i]);
  // each slot's new K/V row (an output row, or inserted by the net at the slot's row
  // SEQLEN-1) goes to the slot's next row
  const size_t kv_row = static_cast<size_t>(kv_heads) * head_dim * dtype_size(c0.in_dtype(3));
  for (int s : slots) {
    const size_t base = static_cast<size_t>(s) * seq_len * kv_row;
    const size_t to = base + static_cast<size_t>(slot_length_[static_cast<size_t>(s)]) * kv_row;
    for (int l = 0; l < num_layers; l++) {
      const size_t li = static_cast<size_t>(l);
      if (kv_out) {
        d2d(kcache_[li], to, batch_new_k_[li], static_cast<size_t>(s) * kv_row, kv_row);
        d2d(vcache_[li], to, batch_new_v_[li], static_cast<size_t>(s) * kv_row, kv_row);
      } else {
        const size_t from = base + static_cast<size_t>(seq_len - 1) * kv_row;
        d2d(kcache_[li], to, kcache_[li], from, kv_row);
        d2d(vcache_[li], to, vcache_[li], from, kv_row);
      }
    }
    slot_length_[static_cast<size_t>(s)]++;
  }
  return result;
}

// ---- device heads (box only: minutes per call on the simulator) -----------------------

int Runtime::greedy_last() {
  std::lock_guard<std::mutex> g(mu_);
  check_open();
  if (!has_greedy_head) throw std::logic_error("this bmodel has no greedy_head over logits");
  if (!logits_valid_) throw std::logic_error("no logits yet: run prefill first");
  bm_tensor_t in = tensor(logits_, greedy_.in_dtype(0), make_shape({1, vocab_size}));
  bm_tensor_t out = tensor(tok_, greedy_.out_dtype(0), make_shape({1, 1}));
  launch(greedy_, &in, 1, &out, 1);
  sync();
  int32_t tok = 0;
  d2s_at(&tok, tok_, 0, 4);
  return tok;
}

// The top candidates (probabilities after temperature/top-k/top-p/penalty, and their
// token ids); the caller draws one of them.
Candidates Runtime::sample_last(const std::vector<int32_t>& history, float penalty, float temperature, int32_t top_k,
                                float top_p) {
  std::lock_guard<std::mutex> g(mu_);
  check_open();
  if (!has_sample_head) throw std::logic_error("this bmodel has no sample_head over logits");
  if (!logits_valid_) throw std::logic_error("no logits yet: run prefill first");
  const int max_hist = sample_.in_shape(1).dims[sample_.in_shape(1).num_dims - 1];
  std::vector<int32_t> hist(history.end() - std::min<size_t>(history.size(), static_cast<size_t>(max_hist)),
                            history.end());
  if (hist.empty()) hist.push_back(0);
  const int n = sample_.info->is_dynamic ? static_cast<int>(hist.size()) : max_hist;
  hist.resize(static_cast<size_t>(n), hist.back());
  s2d(s_ids_, hist.data(), hist.size() * 4);
  s2d(s_penalty_, &penalty, 4);
  s2d(s_temp_, &temperature, 4);
  s2d(s_topk_, &top_k, 4);
  s2d(s_topp_, &top_p, 4);
  bm_tensor_t in[6];
  in[0] = tensor(logits_, sample_.in_dtype(0), make_shape({1, vocab_size}));
  in[1] = tensor(s_ids_, sample_.in_dtype(1), make_shape({1, n}));
  in[2] = tensor(s_penalty_, sample_.in_dtype(2), make_shape({1}));
  in[3] = tensor(s_temp_, sample_.in_dtype(3), make_shape({1}));
  in[4] = tensor(s_topk_, sample_.in_dtype(4), make_shape({1}));
  in[5] = tensor(s_topp_, sample_.in_dtype(5), make_shape({1}));
  bm_tensor_t out[2];
  out[0] = tensor(s_probs_, sample_.out_dtype(0), sample_.out_shape(0));
  out[1] = tensor(s_idx_, sample_.out_dtype(1), sample_.out_shape(1));
  launch(sample_, in, 6, out, 2);
  sync();
  Candidates c;
  c.probs.resize(static_cast<size_t>(sample_candidates));
  c.ids.resize(static_cast<size_t>(sample_candidates));
  d2s_at(c.probs.data(), s_probs_, 0, c.probs.size() * 4);
  d2s_at(c.ids.data(), s_idx_, 0, c.ids.size() * 4);
  return c;
}

// ---- timings and counters ----------------------------------------------------------------

std::map<std::string, NetTiming> Runtime::timings() {
  std::lock_guard<std::mutex> g(stats_mu_);
  return timings_;
}

void Runtime::reset_timings() {
  std::lock_guard<std::mutex> g(stats_mu_);
  timings_.clear();
}

DeviceCounters Runtime::counters() {
  std::lock_guard<std::mutex> g(stats_mu_);
  return counters_;
}

void Runtime::reset_counters() {
  std::lock_guard<std::mutex> g(stats_mu_);
  counters_ = DeviceCounters{};
}

// ---- device memory helpers ---------------------------------------------------------------

bm_device_mem_t Runtime::alloc(size_t bytes) {
  bm_device_mem_t m{};
  if (bytes == 0) bytes = 4;
  check(bm_malloc_device_byte(handle_, &m, static_cast<unsigned int>(bytes)), "bm_malloc_device_byte");
  owned_.push_back(m);
  return m;
}

void Runtime::s2d(bm_device_mem_t dst, const void* src, size_t bytes) {
  check(bm_memcpy_s2d_partial(handle_, dst, const_cast<void*>(src), static_cast<unsigned int>(bytes)), "s2d");
  std::lock_guard<std::mutex> g(stats_mu_);
  counters_.s2d_copies++;
  counters_.s2d_bytes += static_cast<long long>(bytes);
}

void Runtime::s2d_at(bm_device_mem_t dst, size_t offset, const void* src, size_t bytes) {
  s2d(sub(dst, offset, bytes), src, bytes);
}

void Runtime::d2s_at(void* dst, bm_device_mem_t src, size_t offset, size_t bytes) {
  check(bm_memcpy_d2s_partial(handle_, dst, sub(src, offset, bytes), static_cast<unsigned int>(bytes)), "d2s");
  std::lock_guard<std::mutex> g(stats_mu_);
  counters_.d2s_copies++;
  counters_.d2s_bytes += static_cast<long long>(bytes);
}

void Runtime::d2d(bm_device_mem_t dst, size_t dst_offset, bm_device_mem_t src, size_t src_offset, size_t bytes) {
  check(bm_memcpy_d2d_byte(handle_, dst, dst_offset, src, src_offset, bytes), "d2d");
  std::lock_guard<std::mutex> g(stats_mu_);
  counters_.d2d_copies++;
}

void Runtime::memset16(bm_device_mem_t mem, uint16_t pattern) {
  int value = pattern;  // mode 2: the low two bytes of *value, repeated
  check(bm_memset_device_ext(handle_, &value, 2, mem), "bm_memset_device_ext");
  std::lock_guard<std::mutex> g(stats_mu_);
  counters_.memsets++;
}

// Launches are queued; the host waits only before it reads a result or overwrites an
// input a queued launch may still read.
void Runtime::sync() {
  check(bm_thread_sync(handle_), "bm_thread_sync");
  std::lock_guard<std::mutex> g(stats_mu_);
  counters_.syncs++;
}

void Runtime::launch(const Net& n, bm_tensor_t* in, int nin, bm_tensor_t* out, int nout) {
  const auto t0 = std::chrono::steady_clock::now();
  if (!bmrt_launch_tensor_ex(rt_, n.name.c_str(), in, nin, out, nout, true, false))
    throw std::runtime_error("launching network '" + n.name + "' failed");
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> g(stats_mu_);
  NetTiming& e = timings_[n.name];
  e.calls++;
  e.ms += ms;
  counters_.launches++;
}

}  // namespace qwen3vl
