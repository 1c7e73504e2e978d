// qwen3vl_native: a small pybind11 module that runs a vendor-compiled Qwen3-VL bmodel on
// a BM1684X (or its cmodel simulator) through libbmrt / libbmlib.
//
// The bmodel holds one network per stage of the model (see README.md): `embedding`,
// `embedding_cache`, `vit`, `block_i`, `block_cache_i`, `lm_head` (+ optional heads).
// Everything that is a shape -- SEQLEN, MAX_INPUT_LENGTH, hidden size, vit patches, KV
// heads -- is read from the networks' tensor shapes when the model is loaded.
//
// Every long call releases the GIL.  One Runtime owns one device handle; a mutex makes
// concurrent calls on the same object safe (they serialise), and close() frees every
// device buffer before the runtime and the handle, so a process can load and unload
// models repeatedly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bm_api.h"

namespace py = pybind11;

namespace {

constexpr float kMaskValue = -10000.0f;  // additive attention mask for "cannot attend"

// ---- small float conversions (bf16 / f16 <-> f32) --------------------------------------
inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  x += 0x7fffu + ((x >> 16) & 1u);                      // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t x = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if (((x >> 23) & 0xff) == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0));
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exp <= 0) {
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) half++;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;
  return static_cast<uint16_t>(half);
}
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      x = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    x = sign | 0x7f800000u | (mant << 13);
  } else {
    x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

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

struct Net {
  const bm_net_info_t* info = nullptr;
  std::string name;
  bool present() const { return info != nullptr; }
  const bm_shape_t& in_shape(int i) const { return info->stages[0].input_shapes[i]; }
  const bm_shape_t& out_shape(int i) const { return info->stages[0].output_shapes[i]; }
  bm_data_type_t in_dtype(int i) const { return info->input_dtypes[i]; }
  bm_data_type_t out_dtype(int i) const { return info->output_dtypes[i]; }
  size_t in_bytes(int i) const { return shape_count(in_shape(i)) * dtype_size(in_dtype(i)); }
  size_t out_bytes(int i) const { return shape_count(out_shape(i)) * dtype_size(out_dtype(i)); }
};

}  // namespace

class Runtime;
static std::mutex g_live_mu;
static std::vector<Runtime*> g_live;  // open runtimes, closed at interpreter exit

class Runtime {
 public:
  Runtime(const std::string& bmodel_path, int devid) : path_(bmodel_path), devid_(devid) {
    try {
      open();
    } catch (...) {
      close_locked();
      throw;
    }
    std::lock_guard<std::mutex> g(g_live_mu);
    g_live.push_back(this);
  }
  ~Runtime() {
    {
      std::lock_guard<std::mutex> g(g_live_mu);
      for (auto it = g_live.begin(); it != g_live.end(); ++it)
        if (*it == this) {
          g_live.erase(it);
          break;
        }
    }
    std::lock_guard<std::mutex> g(mu_);
    close_locked();
  }
  // Device buffers must be freed before the process exits (the device memory pool asserts
  // otherwise), even when Python never collected an engine.
  static void close_all() {
    std::vector<Runtime*> live;
    {
      std::lock_guard<std::mutex> g(g_live_mu);
      live = g_live;
    }
    for (Runtime* r : live) r->close();
  }

  void close() {
    std::lock_guard<std::mutex> g(mu_);
    close_locked();
  }
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
  bool has_greedy_head = false;  // device-side heads over the last logits (--do_sample builds)
  bool has_sample_head = false;
  int sample_candidates = 0;     // sample_head's top-k width
  bool prefill_dynamic = false;
  int token_length = 0;  // tokens in the KV cache
  std::vector<std::string> networks;
  std::string path_;
  int devid_;

  // ---- calls (GIL released by the bindings) ----

  // Returns logits (float32 [vocab]) in `logits`, or a token id.
  int prefill(const std::vector<int32_t>& ids, const std::vector<int32_t>& pos3,
              const std::vector<int32_t>& vis_pos, const std::vector<float>& vis_embeds,
              const std::vector<std::vector<float>>& deepstack, std::vector<float>& logits) {
    std::lock_guard<std::mutex> g(mu_);
    check_open();
    const int L = static_cast<int>(ids.size());
    if (L <= 0) throw std::invalid_argument("empty prompt");
    if (L > max_input_length)
      throw std::invalid_argument("prompt of " + std::to_string(L) + " tokens exceeds MAX_INPUT_LENGTH " +
                                  std::to_string(max_input_length));
    if (pos3.size() != static_cast<size_t>(3 * L)) throw std::invalid_argument("position_ids must be [3, L]");
    const size_t H = static_cast<size_t>(hidden_size);
    const size_t nvis = vis_pos.size();
    if (vis_embeds.size() != nvis * H) throw std::invalid_argument("visual embeds must be [N, hidden]");
    for (auto& d : deepstack)
      if (d.size() != nvis * H) throw std::invalid_argument("deepstack features must be [N, hidden]");
    for (int32_t p : vis_pos)
      if (p < 0 || p >= L) throw std::invalid_argument("visual position outside the prompt");
    token_length = 0;

    const int Lr = prefill_dynamic ? L : max_input_length;  // rows the blocks run on
    // input ids (the embedding stays static in dynamic builds)
    const int Le = emb_.info->is_dynamic ? L : emb_.in_shape(0).dims[1];
    std::vector<int32_t> idbuf(static_cast<size_t>(max_input_length), 0);
    std::copy(ids.begin(), ids.end(), idbuf.begin());
    s2d(ids_, idbuf.data(), static_cast<size_t>(Le) * 4);
    // embedding
    {
      bm_tensor_t in = tensor(ids_, emb_.in_dtype(0), make_shape({1, Le}));
      bm_tensor_t out = tensor(hid_[0], emb_.out_dtype(0), make_shape({1, Le, hidden_size}));
      launch(emb_, &in, 1, &out, 1);
    }
    const bm_data_type_t hdt = emb_.out_dtype(0);
    const size_t row_bytes = H * dtype_size(hdt);
    // runs of consecutive visual positions: (first index into vis arrays, token pos, count)
    std::vector<std::tuple<size_t, int, int>> runs;
    for (size_t i = 0; i < nvis;) {
      size_t j = i + 1;
      while (j < nvis && vis_pos[j] == vis_pos[j - 1] + 1) j++;
      runs.emplace_back(i, vis_pos[i], static_cast<int>(j - i));
      i = j;
    }
    // vision embeddings replace the placeholder rows
    if (nvis) {
      std::vector<uint8_t> enc = encode_floats(vis_embeds.data(), nvis * H, hdt);
      for (auto& r : runs) {
        size_t first = std::get<0>(r);
        s2d_at(hid_[0], static_cast<size_t>(std::get<1>(r)) * row_bytes, enc.data() + first * row_bytes,
               static_cast<size_t>(std::get<2>(r)) * row_bytes);
      }
    }
    // positions [3, Lr]
    std::vector<int32_t> pbuf(static_cast<size_t>(3 * Lr), 0);
    for (int r = 0; r < 3; r++)
      for (int i = 0; i < L; i++) pbuf[static_cast<size_t>(r * Lr + i)] = pos3[static_cast<size_t>(r * L + i)];
    s2d(pos_, pbuf.data(), pbuf.size() * 4);
    // causal mask [1, 1, Lr, Lr]
    bool has_mask = blocks_[0].info->input_num >= 3;
    if (has_mask && (prefill_dynamic || !mask_ready_)) {
      std::vector<float> m(static_cast<size_t>(Lr) * Lr, 0.0f);
      for (int i = 0; i < Lr; i++)
        for (int j = i + 1; j < Lr; j++) m[static_cast<size_t>(i) * Lr + j] = kMaskValue;
      auto enc = encode_floats(m.data(), m.size(), blocks_[0].in_dtype(2));
      s2d(mask_, enc.data(), enc.size());
      mask_ready_ = !prefill_dynamic;
    }
    // blocks
    int cur = 0;
    const size_t kv_row = static_cast<size_t>(kv_heads) * head_dim;
    for (int l = 0; l < num_layers; l++) {
      const Net& n = blocks_[static_cast<size_t>(l)];
      bm_tensor_t in[3];
      in[0] = tensor(hid_[cur], n.in_dtype(0), make_shape({1, Lr, hidden_size}));
      in[1] = tensor(pos_, n.in_dtype(1), make_shape({3, Lr}));
      if (has_mask) in[2] = tensor(mask_, n.in_dtype(2), make_shape({1, 1, Lr, Lr}));
      bm_tensor_t out[3];
      out[0] = tensor(hid_[1 - cur], n.out_dtype(0), make_shape({1, Lr, hidden_size}));
      // dynamic nets check the user buffer against their largest output: give them the
      // cache's first MAX_INPUT_LENGTH rows (SEQLEN >= MAX_INPUT_LENGTH)
      size_t kv_bytes = static_cast<size_t>(max_input_length) * kv_row * dtype_size(n.out_dtype(1));
      out[1] = tensor(sub(kcache_[static_cast<size_t>(l)], 0, kv_bytes), n.out_dtype(1),
                      make_shape({1, Lr, kv_heads, head_dim}));
      out[2] = tensor(sub(vcache_[static_cast<size_t>(l)], 0, kv_bytes), n.out_dtype(2),
                      make_shape({1, Lr, kv_heads, head_dim}));
      launch(n, in, has_mask ? 3 : 2, out, 3);
      cur = 1 - cur;
      // deepstack: add the l-th feature to the visual rows after block l
      if (nvis && static_cast<size_t>(l) < deepstack.size()) {
        std::vector<uint8_t> rows(row_bytes * nvis);
        for (auto& r : runs)
          d2s_at(rows.data() + std::get<0>(r) * row_bytes, hid_[cur],
                 static_cast<size_t>(std::get<1>(r)) * row_bytes, static_cast<size_t>(std::get<2>(r)) * row_bytes);
        std::vector<float> f(nvis * H);
        decode_floats(rows.data(), nvis * H, hdt, f.data());
        const auto& ds = deepstack[static_cast<size_t>(l)];
        for (size_t i = 0; i < f.size(); i++) f[i] += ds[i];
        auto enc = encode_floats(f.data(), f.size(), hdt);
        for (auto& r : runs)
          s2d_at(hid_[cur], static_cast<size_t>(std::get<1>(r)) * row_bytes, enc.data() + std::get<0>(r) * row_bytes,
                 static_cast<size_t>(std::get<2>(r)) * row_bytes);
      }
    }
    token_length = L;
    // lm_head on the last prompt row
    bm_device_mem_t last = sub(hid_[cur], static_cast<size_t>(L - 1) * row_bytes, row_bytes);
    return run_lm_head(last, logits);
  }

  int decode(int32_t token, int32_t position, std::vector<float>& logits) {
    std::lock_guard<std::mutex> g(mu_);
    check_open();
    if (token_length <= 0) throw std::logic_error("decode before prefill");
    if (token_length >= seq_len) throw std::length_error("KV cache is full (SEQLEN " + std::to_string(seq_len) + ")");
    s2d(id1_, &token, 4);
    {
      bm_tensor_t in = tensor(id1_, embc_.in_dtype(0), make_shape({1, 1}));
      bm_tensor_t out = tensor(dh_[0], embc_.out_dtype(0), make_shape({1, 1, hidden_size}));
      launch(embc_, &in, 1, &out, 1);
    }
    int32_t p3[3] = {position, position, position};
    s2d(pos1_, p3, 12);
    const Net& c0 = caches_[0];
    {
      std::vector<float> m(static_cast<size_t>(seq_len) + 1, 0.0f);
      for (int j = token_length; j < seq_len; j++) m[static_cast<size_t>(j)] = kMaskValue;
      auto enc = encode_floats(m.data(), m.size(), c0.in_dtype(2));
      s2d(dmask_, enc.data(), enc.size());
    }
    const size_t kv_row_bytes = static_cast<size_t>(kv_heads) * head_dim * dtype_size(c0.in_dtype(3));
    int cur = 0;
    for (int l = 0; l < num_layers; l++) {
      const Net& n = caches_[static_cast<size_t>(l)];
      bm_tensor_t in[5];
      in[0] = tensor(dh_[cur], n.in_dtype(0), make_shape({1, 1, hidden_size}));
      in[1] = tensor(pos1_, n.in_dtype(1), make_shape({3, 1}));
      in[2] = tensor(dmask_, n.in_dtype(2), make_shape({1, 1, 1, seq_len + 1}));
      in[3] = tensor(kcache_[static_cast<size_t>(l)], n.in_dtype(3), make_shape({1, seq_len, kv_heads, head_dim}));
      in[4] = tensor(vcache_[static_cast<size_t>(l)], n.in_dtype(4), make_shape({1, seq_len, kv_heads, head_dim}));
      bm_tensor_t out[3];
      out[0] = tensor(dh_[1 - cur], n.out_dtype(0), make_shape({1, 1, hidden_size}));
      out[1] = tensor(knew_, n.out_dtype(1), make_shape({1, 1, kv_heads, head_dim}));
      out[2] = tensor(vnew_, n.out_dtype(2), make_shape({1, 1, kv_heads, head_dim}));
      launch(n, in, 5, out, 3);
      check(bm_memcpy_d2d_byte(handle_, kcache_[static_cast<size_t>(l)], static_cast<size_t>(token_length) * kv_row_bytes,
                               knew_, 0, kv_row_bytes),
            "d2d k");
      check(bm_memcpy_d2d_byte(handle_, vcache_[static_cast<size_t>(l)], static_cast<size_t>(token_length) * kv_row_bytes,
                               vnew_, 0, kv_row_bytes),
            "d2d v");
      cur = 1 - cur;
    }
    token_length++;
    return run_lm_head(dh_[cur], logits);
  }

  // Vision encoder.  Inputs already padded to the compiled patch count for static builds.
  std::vector<std::vector<float>> run_vit(const std::vector<float>& pixels, const std::vector<int32_t>& pos_ids,
                                          const std::vector<int32_t>& pos_idx, const std::vector<float>& pos_w,
                                          const std::vector<float>& mask, int patches) {
    std::lock_guard<std::mutex> g(mu_);
    check_open();
    if (!vit_.present()) throw std::logic_error("this bmodel has no vision encoder");
    if (patches <= 0 || patches > vit_patches) throw std::invalid_argument("bad patch count");
    if (!vit_dynamic && patches != vit_patches)
      throw std::invalid_argument("static vit needs inputs padded to " + std::to_string(vit_patches) + " patches");
    const int P = patches;
    if (pixels.size() != static_cast<size_t>(P) * vit_patch_dim || pos_ids.size() != static_cast<size_t>(P) * 2 ||
        pos_idx.size() != static_cast<size_t>(P) * 4 || pos_w.size() != static_cast<size_t>(P) * 4)
      throw std::invalid_argument("vit input sizes do not match the patch count");
    bool with_mask = vit_inputs >= 5;
    if (with_mask && mask.size() != static_cast<size_t>(P) * P)
      throw std::invalid_argument("vit attention mask must be [P, P]");
    auto enc0 = encode_floats(pixels.data(), pixels.size(), vit_.in_dtype(0));
    s2d(vit_in_[0], enc0.data(), enc0.size());
    s2d(vit_in_[1], const_cast<int32_t*>(pos_ids.data()), pos_ids.size() * 4);
    s2d(vit_in_[2], const_cast<int32_t*>(pos_idx.data()), pos_idx.size() * 4);
    auto enc3 = encode_floats(pos_w.data(), pos_w.size(), vit_.in_dtype(3));
    s2d(vit_in_[3], enc3.data(), enc3.size());
    std::vector<bm_tensor_t> in(static_cast<size_t>(vit_inputs));
    in[0] = tensor(vit_in_[0], vit_.in_dtype(0), make_shape({P, vit_patch_dim}));
    in[1] = tensor(vit_in_[1], vit_.in_dtype(1), make_shape({P, 2}));
    in[2] = tensor(vit_in_[2], vit_.in_dtype(2), make_shape({P, 4}));
    in[3] = tensor(vit_in_[3], vit_.in_dtype(3), make_shape({P, 4, 1}));
    if (with_mask) {
      auto enc4 = encode_floats(mask.data(), mask.size(), vit_.in_dtype(4));
      s2d(vit_in_[4], enc4.data(), enc4.size());
      in[4] = tensor(vit_in_[4], vit_.in_dtype(4), make_shape({1, 1, P, P}));
    }
    const int rows = P / 4;
    std::vector<bm_tensor_t> out(static_cast<size_t>(vit_outputs));
    for (int i = 0; i < vit_outputs; i++)
      out[static_cast<size_t>(i)] = tensor(vit_out_[static_cast<size_t>(i)], vit_.out_dtype(i), make_shape({rows, hidden_size}));
    launch(vit_, in.data(), vit_inputs, out.data(), vit_outputs);
    std::vector<std::vector<float>> res;
    for (int i = 0; i < vit_outputs; i++) {
      size_t n = static_cast<size_t>(rows) * hidden_size;
      std::vector<uint8_t> raw(n * dtype_size(vit_.out_dtype(i)));
      d2s_at(raw.data(), vit_out_[static_cast<size_t>(i)], 0, raw.size());
      std::vector<float> f(n);
      decode_floats(raw.data(), n, vit_.out_dtype(i), f.data());
      res.push_back(std::move(f));
    }
    return res;
  }

  // Device-side heads over the logits of the last prefill/decode (still on the device).
  // On the simulator they take minutes (the sort engine is simulated): box only.
  int greedy_last() {
    std::lock_guard<std::mutex> g(mu_);
    check_open();
    if (!has_greedy_head) throw std::logic_error("this bmodel has no greedy_head over logits");
    if (!logits_valid_) throw std::logic_error("no logits yet: run prefill first");
    bm_tensor_t in = tensor(logits_, greedy_.in_dtype(0), make_shape({1, vocab_size}));
    bm_tensor_t out = tensor(tok_, greedy_.out_dtype(0), make_shape({1, 1}));
    launch(greedy_, &in, 1, &out, 1);
    int32_t tok = 0;
    d2s_at(&tok, tok_, 0, 4);
    return tok;
  }

  // Returns the top candidates (probabilities after temperature/top-k/top-p/penalty, and
  // their token ids); the caller draws one of them.
  void sample_last(const std::vector<int32_t>& history, float penalty, float temperature, int32_t top_k,
                   float top_p, std::vector<float>& probs, std::vector<int32_t>& ids) {
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
    probs.resize(static_cast<size_t>(sample_candidates));
    ids.resize(static_cast<size_t>(sample_candidates));
    d2s_at(probs.data(), s_probs_, 0, probs.size() * 4);
    d2s_at(ids.data(), s_idx_, 0, ids.size() * 4);
  }

  std::map<std::string, std::pair<long, double>> timings() {
    std::lock_guard<std::mutex> g(timings_mu_);
    return timings_;
  }
  void reset_timings() {
    std::lock_guard<std::mutex> g(timings_mu_);
    timings_.clear();
  }

 private:
  std::mutex mu_;
  bm_handle_t handle_ = nullptr;
  void* rt_ = nullptr;
  std::vector<bm_device_mem_t> owned_;
  Net emb_, embc_, lm_, vit_, greedy_, sample_;
  bool logits_valid_ = false;
  bm_device_mem_t tok_{}, s_ids_{}, s_penalty_{}, s_temp_{}, s_topk_{}, s_topp_{}, s_probs_{}, s_idx_{};
  std::vector<Net> blocks_, caches_;
  bm_device_mem_t ids_{}, pos_{}, mask_{}, hid_[2]{}, logits_{};
  bm_device_mem_t id1_{}, pos1_{}, dmask_{}, dh_[2]{}, knew_{}, vnew_{};
  std::vector<bm_device_mem_t> kcache_, vcache_, vit_in_, vit_out_;
  bool mask_ready_ = false;
  std::mutex timings_mu_;
  std::map<std::string, std::pair<long, double>> timings_;

  static void check(bm_status_t st, const char* what) {
    if (st != BM_SUCCESS) throw std::runtime_error(std::string("bmlib: ") + what + " failed (" + std::to_string(st) + ")");
  }
  void check_open() const {
    if (!rt_) throw std::logic_error("runtime is closed");
  }

  Net net(const std::string& name, bool required) {
    Net n;
    n.name = name;
    bool found = false;
    for (auto& s : networks) found |= (s == name);
    if (!found) {
      if (required) throw std::runtime_error("bmodel has no network '" + name + "'");
      return n;
    }
    n.info = bmrt_get_network_info(rt_, name.c_str());
    if (!n.info) throw std::runtime_error("cannot read network info of '" + name + "'");
    return n;
  }

  bm_device_mem_t alloc(size_t bytes) {
    bm_device_mem_t m{};
    if (bytes == 0) bytes = 4;
    check(bm_malloc_device_byte(handle_, &m, static_cast<unsigned int>(bytes)), "bm_malloc_device_byte");
    owned_.push_back(m);
    return m;
  }

  static bm_device_mem_t sub(bm_device_mem_t m, size_t offset, size_t bytes) {
    return bm_mem_from_device(bm_mem_get_device_addr(m) + offset, static_cast<unsigned int>(bytes));
  }

  void s2d(bm_device_mem_t dst, const void* src, size_t bytes) {
    check(bm_memcpy_s2d_partial(handle_, dst, const_cast<void*>(src), static_cast<unsigned int>(bytes)), "s2d");
  }
  void s2d_at(bm_device_mem_t dst, size_t offset, const void* src, size_t bytes) {
    check(bm_memcpy_s2d_partial(handle_, sub(dst, offset, bytes), const_cast<void*>(src), static_cast<unsigned int>(bytes)),
          "s2d");
  }
  void d2s_at(void* dst, bm_device_mem_t src, size_t offset, size_t bytes) {
    check(bm_memcpy_d2s_partial(handle_, dst, sub(src, offset, bytes), static_cast<unsigned int>(bytes)), "d2s");
  }

  static bm_tensor_t tensor(bm_device_mem_t mem, bm_data_type_t dt, bm_shape_t shape) {
    bm_tensor_t t;
    std::memset(&t, 0, sizeof(t));
    bmrt_tensor_with_device(&t, mem, dt, shape);
    return t;
  }

  void launch(const Net& n, bm_tensor_t* in, int nin, bm_tensor_t* out, int nout) {
    auto t0 = std::chrono::steady_clock::now();
    if (!bmrt_launch_tensor_ex(rt_, n.name.c_str(), in, nin, out, nout, true, false))
      throw std::runtime_error("launching network '" + n.name + "' failed");
    check(bm_thread_sync(handle_), "bm_thread_sync");
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::lock_guard<std::mutex> g(timings_mu_);
    auto& e = timings_[n.name];
    e.first++;
    e.second += ms;
  }

  int run_lm_head(bm_device_mem_t hidden_row, std::vector<float>& logits) {
    bm_tensor_t in = tensor(hidden_row, lm_.in_dtype(0), make_shape({1, hidden_size}));
    bm_tensor_t out = tensor(logits_, lm_.out_dtype(0), lm_.out_shape(0));
    launch(lm_, &in, 1, &out, 1);
    logits_valid_ = true;
    if (lm_head_logits) {
      size_t n = static_cast<size_t>(vocab_size);
      std::vector<uint8_t> raw(n * dtype_size(lm_.out_dtype(0)));
      d2s_at(raw.data(), logits_, 0, raw.size());
      logits.resize(n);
      decode_floats(raw.data(), n, lm_.out_dtype(0), logits.data());
      return -1;
    }
    int32_t tok = 0;
    d2s_at(&tok, logits_, 0, 4);
    return tok;
  }

  void open() {
    check(bm_dev_request(&handle_, devid_), "bm_dev_request");
    rt_ = bmrt_create(handle_);
    if (!rt_) throw std::runtime_error("bmrt_create failed");
    if (!bmrt_load_bmodel(rt_, path_.c_str())) throw std::runtime_error("cannot load bmodel " + path_);
    const char** names = nullptr;
    bmrt_get_network_names(rt_, &names);
    int nn = bmrt_get_network_number(rt_);
    for (int i = 0; i < nn; i++) networks.emplace_back(names[i]);
    std::free(names);

    emb_ = net("embedding", true);
    embc_ = net("embedding_cache", true);
    lm_ = net("lm_head", true);
    vit_ = net("vit", false);
    greedy_ = net("greedy_head", false);
    sample_ = net("sample_head", false);
    for (int l = 0;; l++) {
      Net b = net("block_" + std::to_string(l), false);
      if (!b.present()) break;
      blocks_.push_back(b);
      caches_.push_back(net("block_cache_" + std::to_string(l), true));
    }
    num_layers = static_cast<int>(blocks_.size());
    if (num_layers == 0) throw std::runtime_error("bmodel has no block_0");

    const Net& b0 = blocks_[0];
    const bm_shape_t& hs = b0.in_shape(0);  // [1, MAX_INPUT_LENGTH, H]
    if (hs.num_dims != 3) throw std::runtime_error("unexpected block input shape " + shape_str(hs));
    max_input_length = hs.dims[1];
    hidden_size = hs.dims[2];
    prefill_dynamic = b0.info->is_dynamic;
    const Net& c0 = caches_[0];
    const bm_shape_t& ks = c0.in_shape(3);  // [1, SEQLEN, kv_heads, head_dim]
    if (c0.info->input_num < 5 || ks.num_dims != 4)
      throw std::runtime_error("unexpected block_cache inputs (batch>1 builds are not supported)");
    seq_len = ks.dims[1];
    kv_heads = ks.dims[2];
    head_dim = ks.dims[3];
    const bm_shape_t& ls = lm_.out_shape(0);
    lm_head_logits = lm_.out_dtype(0) != BM_INT32 && shape_count(ls) > 1;
    vocab_size = lm_head_logits ? ls.dims[ls.num_dims - 1] : 0;
    if (vit_.present()) {
      vit_patches = vit_.in_shape(0).dims[0];
      vit_patch_dim = vit_.in_shape(0).dims[1];
      vit_inputs = vit_.info->input_num;
      vit_outputs = vit_.info->output_num;
      vit_dynamic = vit_.info->is_dynamic;
    }

    // device buffers
    const size_t hsz = dtype_size(b0.in_dtype(0));
    ids_ = alloc(static_cast<size_t>(max_input_length) * 4);
    pos_ = alloc(static_cast<size_t>(3 * max_input_length) * 4);
    if (b0.info->input_num >= 3) mask_ = alloc(b0.in_bytes(2));
    for (auto& h : hid_) h = alloc(static_cast<size_t>(max_input_length) * hidden_size * hsz);
    const size_t kvb = static_cast<size_t>(seq_len) * kv_heads * head_dim * dtype_size(c0.in_dtype(3));
    for (int l = 0; l < num_layers; l++) {
      kcache_.push_back(alloc(kvb));
      vcache_.push_back(alloc(kvb));
    }
    logits_ = alloc(lm_.out_bytes(0));
    id1_ = alloc(4);
    pos1_ = alloc(12);
    dmask_ = alloc(c0.in_bytes(2));
    for (auto& h : dh_) h = alloc(static_cast<size_t>(hidden_size) * hsz);
    knew_ = alloc(c0.out_bytes(1));
    vnew_ = alloc(c0.out_bytes(2));
    has_greedy_head = lm_head_logits && greedy_.present();
    has_sample_head = lm_head_logits && sample_.present() && sample_.info->input_num == 6;
    if (has_greedy_head) tok_ = alloc(4);
    if (has_sample_head) {
      s_ids_ = alloc(sample_.in_bytes(1));
      s_penalty_ = alloc(4);
      s_temp_ = alloc(4);
      s_topk_ = alloc(4);
      s_topp_ = alloc(4);
      s_probs_ = alloc(sample_.out_bytes(0));
      s_idx_ = alloc(sample_.out_bytes(1));
      sample_candidates = sample_.out_shape(0).dims[sample_.out_shape(0).num_dims - 1];
    }
    if (vit_.present()) {
      for (int i = 0; i < vit_inputs; i++) vit_in_.push_back(alloc(vit_.in_bytes(i)));
      for (int i = 0; i < vit_outputs; i++) vit_out_.push_back(alloc(vit_.out_bytes(i)));
    }
  }

  void close_locked() {
    if (handle_) {
      for (auto& m : owned_) bm_free_device(handle_, m);
    }
    owned_.clear();
    kcache_.clear();
    vcache_.clear();
    vit_in_.clear();
    vit_out_.clear();
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
};

// ---- bindings --------------------------------------------------------------------------

template <typename T>
std::vector<T> to_vec(const py::handle& obj, const char* what) {
  if (obj.is_none()) return {};
  auto arr = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(obj);
  if (!arr) throw std::invalid_argument(std::string(what) + ": expected an array");
  return std::vector<T>(arr.data(), arr.data() + arr.size());
}

py::object step_result(int token, std::vector<float>& logits) {
  if (token >= 0) return py::int_(token);
  py::array_t<float> a(static_cast<py::ssize_t>(logits.size()));
  std::memcpy(a.mutable_data(), logits.data(), logits.size() * sizeof(float));
  return std::move(a);
}

PYBIND11_MODULE(qwen3vl_native, m) {
  m.doc() = "Qwen3-VL bmodel runner over libbmrt/libbmlib (BM1684X or its cmodel simulator)";
#ifdef QWEN3VL_SIM
  m.attr("build_mode") = "sim";
#else
  m.attr("build_mode") = "box";
#endif

  m.def(
      "close_all",
      []() {
        py::gil_scoped_release nogil;
        Runtime::close_all();
      },
      "Close every open Runtime (registered with atexit).");
  py::module_::import("atexit").attr("register")(m.attr("close_all"));

  py::class_<Runtime>(m, "Runtime")
      .def(py::init([](const std::string& path, int devid) {
             py::gil_scoped_release nogil;
             return new Runtime(path, devid);
           }),
           py::arg("bmodel_path"), py::arg("devid") = 0)
      .def(
          "close",
          [](Runtime& r) {
            py::gil_scoped_release nogil;
            r.close();
          })
      .def_property_readonly("closed", &Runtime::closed)
      .def_readonly("path", &Runtime::path_)
      .def_readonly("devid", &Runtime::devid_)
      .def_readonly("seq_len", &Runtime::seq_len)
      .def_readonly("max_input_length", &Runtime::max_input_length)
      .def_readonly("hidden_size", &Runtime::hidden_size)
      .def_readonly("num_layers", &Runtime::num_layers)
      .def_readonly("kv_heads", &Runtime::kv_heads)
      .def_readonly("head_dim", &Runtime::head_dim)
      .def_readonly("vocab_size", &Runtime::vocab_size)
      .def_readonly("lm_head_logits", &Runtime::lm_head_logits)
      .def_readonly("vit_patches", &Runtime::vit_patches)
      .def_readonly("vit_outputs", &Runtime::vit_outputs)
      .def_readonly("vit_patch_dim", &Runtime::vit_patch_dim)
      .def_readonly("vit_inputs", &Runtime::vit_inputs)
      .def_readonly("vit_dynamic", &Runtime::vit_dynamic)
      .def_readonly("prefill_dynamic", &Runtime::prefill_dynamic)
      .def_readonly("token_length", &Runtime::token_length)
      .def_readonly("networks", &Runtime::networks)
      .def(
          "prefill",
          [](Runtime& r, py::handle input_ids, py::handle position_ids, py::handle visual_positions,
             py::handle visual_embeds, py::list deepstack) {
            auto ids = to_vec<int32_t>(input_ids, "input_ids");
            auto pos = to_vec<int32_t>(position_ids, "position_ids");
            auto vpos = to_vec<int32_t>(visual_positions, "visual_positions");
            auto vemb = to_vec<float>(visual_embeds, "visual_embeds");
            std::vector<std::vector<float>> ds;
            for (auto item : deepstack) ds.push_back(to_vec<float>(item, "deepstack"));
            std::vector<float> logits;
            int tok;
            {
              py::gil_scoped_release nogil;
              tok = r.prefill(ids, pos, vpos, vemb, ds, logits);
            }
            return step_result(tok, logits);
          },
          py::arg("input_ids"), py::arg("position_ids"), py::arg("visual_positions") = py::none(),
          py::arg("visual_embeds") = py::none(), py::arg("deepstack") = py::list(),
          "Run the whole prompt; returns float32 logits [vocab] or the device-chosen token id.")
      .def(
          "decode",
          [](Runtime& r, int token, int position) {
            std::vector<float> logits;
            int tok;
            {
              py::gil_scoped_release nogil;
              tok = r.decode(token, position, logits);
            }
            return step_result(tok, logits);
          },
          py::arg("token_id"), py::arg("position"))
      .def(
          "run_vit",
          [](Runtime& r, py::handle pixels, py::handle pos_ids, py::handle pos_idx, py::handle pos_w,
             py::handle mask) {
            auto px = to_vec<float>(pixels, "pixel_values");
            auto pi = to_vec<int32_t>(pos_ids, "position_ids");
            auto ix = to_vec<int32_t>(pos_idx, "pos_idx");
            auto pw = to_vec<float>(pos_w, "pos_weight");
            auto mk = to_vec<float>(mask, "attention_mask");
            int patches = r.vit_patch_dim ? static_cast<int>(px.size() / static_cast<size_t>(r.vit_patch_dim)) : 0;
            std::vector<std::vector<float>> outs;
            {
              py::gil_scoped_release nogil;
              outs = r.run_vit(px, pi, ix, pw, mk, patches);
            }
            py::list res;
            for (auto& o : outs) {
              py::array_t<float> a({static_cast<py::ssize_t>(patches / 4), static_cast<py::ssize_t>(r.hidden_size)});
              std::memcpy(a.mutable_data(), o.data(), o.size() * sizeof(float));
              res.append(a);
            }
            return res;
          },
          py::arg("pixel_values"), py::arg("position_ids"), py::arg("pos_idx"), py::arg("pos_weight"),
          py::arg("attention_mask") = py::none(),
          "Vision encoder: returns [merged embeds, deepstack features...], each float32 [P/4, hidden].")
      .def_readonly("has_greedy_head", &Runtime::has_greedy_head)
      .def_readonly("has_sample_head", &Runtime::has_sample_head)
      .def_readonly("sample_candidates", &Runtime::sample_candidates)
      .def(
          "greedy_last",
          [](Runtime& r) {
            py::gil_scoped_release nogil;
            return r.greedy_last();
          },
          "Device greedy_head over the last logits -> token id (box only: minutes on the simulator).")
      .def(
          "sample_last",
          [](Runtime& r, py::handle history, float penalty, float temperature, int top_k, float top_p) {
            auto hist = to_vec<int32_t>(history, "history");
            std::vector<float> probs;
            std::vector<int32_t> ids;
            {
              py::gil_scoped_release nogil;
              r.sample_last(hist, penalty, temperature, top_k, top_p, probs, ids);
            }
            py::array_t<float> p(static_cast<py::ssize_t>(probs.size()));
            py::array_t<int32_t> i(static_cast<py::ssize_t>(ids.size()));
            std::memcpy(p.mutable_data(), probs.data(), probs.size() * 4);
            std::memcpy(i.mutable_data(), ids.data(), ids.size() * 4);
            return py::make_tuple(p, i);
          },
          py::arg("history"), py::arg("penalty") = 1.0f, py::arg("temperature") = 1.0f, py::arg("top_k") = 50,
          py::arg("top_p") = 1.0f,
          "Device sample_head over the last logits -> (probs, token ids) of the top candidates (box only).")
      .def("timings", &Runtime::timings, "network name -> (calls, total milliseconds)")
      .def("reset_timings", &Runtime::reset_timings);
}
