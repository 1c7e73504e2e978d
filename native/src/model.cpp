#include "model.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace qwen3vl {

namespace {

const char* kSupported =
    "supported: a batch-1, single-device Qwen3-VL bmodel from tpu-mlir's llm_convert (static or --dynamic, "
    "with or without --do_sample; bf16/f16 activations): networks embedding, embedding_cache, lm_head, "
    "block_<i> (2-3 inputs, 3 outputs) and block_cache_<i> (5 inputs incl. history K/V [1,SEQLEN,kv_heads,"
    "head_dim], 3 outputs) for every layer, optionally vit (pos_idx [P,4]), add, greedy_head, sample_head; "
    "or a batch-N build (llm_convert -b N): block_cache_<i> with states [N,1,H], positions [N,3,1], mask "
    "[N,1,1,SEQLEN], history K/V [N,SEQLEN,kv_heads,head_dim] and 1 output (K/V inserted at row SEQLEN-1) or 3 "
    "(+ new K/V [N,1,kv_heads,head_dim]), one stage; or our wrapper's batch-N \"slots\" build: mask "
    "[N,1,1,SEQLEN+1], history K/V per slot [1,SEQLEN,kv_heads,head_dim] (3+2N inputs, 1+2N outputs), "
    "optionally embedding_cache_batch and lm_head_batch; batch-1 prefill, "
    "embedding_cache and lm_head; or a batch-1 --use_history_kv build: dynamic block_<i> without mask and "
    "block_kv_<i> (states [1,MAX_INPUT_LENGTH,H], positions, history K/V [1,SEQLEN,kv_heads,head_dim]; 3 outputs)";

std::string dims_of(const Net& n, bool inputs) {
  std::string r;
  const int count = inputs ? n.info->input_num : n.info->output_num;
  for (int i = 0; i < count; i++) r += (i ? " " : "") + shape_str(inputs ? n.in_shape(i) : n.out_shape(i));
  return r;
}

}  // namespace

Model::Model(const Device& dev, const std::string& bmodel_path) : path(bmodel_path) {
  info.networks = dev.networks();
  info.shares_memory = dev.shares_memory();
  read(dev);
}

void Model::unsupported(const std::string& found) const {
  throw std::runtime_error("unsupported bmodel " + path + ": " + found + "; " + kSupported);
}

void Model::read(const Device& dev) {
  for (const char* name : {"embedding", "embedding_cache", "lm_head", "block_0", "block_cache_0"})
    if (!dev.has(name)) {
      std::string all;
      for (auto& s : info.networks) all += (all.empty() ? "" : ", ") + s;
      unsupported(std::string("no network '") + name + "' (networks: " + all + ")");
    }
  emb = dev.net("embedding", true);
  embc = dev.net("embedding_cache", true);
  lm = dev.net("lm_head", true);
  vit = dev.net("vit", false);
  add = dev.net("add", false);
  greedy = dev.net("greedy_head", false);
  sample = dev.net("sample_head", false);
  embc_batch = dev.net("embedding_cache_batch", false);
  lm_batch = dev.net("lm_head_batch", false);
  for (int l = 0;; l++) {
    Net b = dev.net("block_" + std::to_string(l), false);
    Net c = dev.net("block_cache_" + std::to_string(l), false);
    if (!b.present() && !c.present()) break;
    if (!b.present() || !c.present())
      unsupported("layer " + std::to_string(l) + " has only one of block_" + std::to_string(l) + " / block_cache_" +
                  std::to_string(l));
    blocks.push_back(b);
    caches.push_back(c);
  }
  info.num_layers = static_cast<int>(blocks.size());

  const Net& b0 = blocks[0];
  if (b0.info->input_num == 5) unsupported("block_0 takes 5 inputs (history K/V: a --use_history_kv build)");
  const bm_shape_t& hs = b0.in_shape(0);  // [1, MAX_INPUT_LENGTH, H]
  if (b0.info->input_num < 2 || b0.info->input_num > 3 || b0.info->output_num != 3 || hs.num_dims != 3 ||
      hs.dims[0] != 1)
    unsupported("block_0 inputs " + dims_of(b0, true) + ", outputs " + dims_of(b0, false));
  info.max_input_length = hs.dims[1];
  info.hidden_size = hs.dims[2];
  info.prefill_dynamic = b0.info->is_dynamic;
  const bm_data_type_t hdt = hidden_dtype();
  if (hdt != BM_BFLOAT16 && hdt != BM_FLOAT16)
    unsupported("activations of dtype " + std::to_string(hdt) + " (embedding output)");

  const Net& c0 = caches[0];
  const bool batched = c0.in_shape(0).num_dims == 3 && c0.in_shape(0).dims[0] > 1;
  if (batched && c0.info->input_num == 5)
    read_batch_cache();
  else if (batched)
    read_batch_slot_cache();
  else
    read_cache_stages();
  info.max_context = info.batch > 1 && !info.batch_slot_kv ? info.seq_len - 1 : info.seq_len;
  if (dev.has("block_kv_0")) read_history_blocks(dev);
  read_stage_inputs();

  const bm_shape_t& lin = lm.in_shape(0);
  if (lin.num_dims != 2 || lin.dims[1] != info.hidden_size)
    unsupported("lm_head input " + shape_str(lin) + " (hidden size " + std::to_string(info.hidden_size) + ")");
  const bm_shape_t& ls = lm.out_shape(0);
  info.lm_head_logits = lm.out_dtype(0) != BM_INT32 && shape_count(ls) > 1;
  info.vocab_size = info.lm_head_logits ? ls.dims[ls.num_dims - 1] : 0;

  if (vit.present()) read_vit();
  // `add` adds a deepstack feature to a whole prefill hidden buffer; used when it fits
  info.has_add = add.present() && add.info->input_num == 2 && add.info->output_num == 1 &&
                 add.in_bytes(0) == static_cast<size_t>(info.max_input_length) * info.hidden_size * dtype_size(hdt) &&
                 add.in_dtype(0) == hdt && add.in_dtype(1) == hdt;
  // the heads read lm_head's float32 logits in place; their results are read as int32 ids
  // and float32 probabilities
  const bool f32_logits = info.lm_head_logits && lm.out_dtype(0) == BM_FLOAT32;
  info.has_greedy_head = f32_logits && greedy.present() && greedy.in_dtype(0) == BM_FLOAT32 &&
                         greedy.out_dtype(0) == BM_INT32;
  info.has_sample_head = f32_logits && sample.present() && sample.info->input_num == 6 &&
                         sample.info->output_num == 2 && sample.in_dtype(0) == BM_FLOAT32 &&
                         sample.in_dtype(1) == BM_INT32 && sample.out_dtype(0) == BM_FLOAT32 &&
                         sample.out_dtype(1) == BM_INT32;
  if (info.has_sample_head) info.sample_candidates = sample.out_shape(0).dims[sample.out_shape(0).num_dims - 1];
  if (info.batch > 1) read_batch_heads();
}

// block_cache_i of a batch-1 build: one token on top of history K/V [1, kv_len, kv_heads,
// head_dim]; several stages (llm_convert --chunk_length), one per KV length.
void Model::read_cache_stages() {
  const Net& c0 = caches[0];
  if (c0.info->input_num != 5 || c0.info->output_num != 3) {
    const int slots = c0.in_shape(0).num_dims > 0 ? c0.in_shape(0).dims[0] : 0;
    unsupported("block_cache_0 takes " + std::to_string(c0.info->input_num) + " inputs and gives " +
                std::to_string(c0.info->output_num) + " outputs (" + dims_of(c0, true) + " -> " + dims_of(c0, false) +
                (slots > 1 ? ": a batch-" + std::to_string(slots) + " build" : "") + ")");
  }
  std::vector<std::pair<int, int>> stages;  // (kv length, stage number)
  for (int s = 0; s < c0.info->stage_num; s++) {
    const bm_shape_t& ks = c0.in_shape(3, s);  // [1, kv_len, kv_heads, head_dim]
    if (ks.num_dims != 4 || ks.dims[0] != 1 || !same_shape(c0.in_shape(0, s), {1, 1, info.hidden_size}))
      unsupported("block_cache_0 stage " + std::to_string(s) + " history " + shape_str(ks) + ", states " +
                  shape_str(c0.in_shape(0, s)));
    stages.emplace_back(ks.dims[1], s);
  }
  std::sort(stages.begin(), stages.end());
  for (auto& [len, s] : stages) {
    info.decode_stages.push_back(len);
    cache_stage_index.push_back(s);
  }
  cache_full_stage = stages.back().second;
  const bm_shape_t& ks = c0.in_shape(3, cache_full_stage);
  info.seq_len = ks.dims[1];
  info.kv_heads = ks.dims[2];
  info.head_dim = ks.dims[3];
  if (info.seq_len < info.max_input_length)
    unsupported("SEQLEN " + std::to_string(info.seq_len) + " below MAX_INPUT_LENGTH " +
                std::to_string(info.max_input_length));
  for (const Net& c : caches)
    if (c.info->stage_num != c0.info->stage_num ||
        !same_shape(c.in_shape(3, cache_full_stage), {1, info.seq_len, info.kv_heads, info.head_dim}))
      unsupported(c.name + " differs from block_cache_0 (" + dims_of(c, true) + ")");
}

// block_cache_i of a batch-N build: all N slots in one launch, new K/V inserted into the
// history inputs at row SEQLEN-1 of each slot (so a slot holds at most SEQLEN-1 tokens).
void Model::read_batch_cache() {
  const Net& c0 = caches[0];
  const bm_shape_t& st = c0.in_shape(0);
  const int batch = info.batch = st.dims[0];
  const int H = info.hidden_size;
  const std::string what = "batch-" + std::to_string(batch) + " ";
  const bm_shape_t& ks = c0.in_shape(3);
  if (c0.info->stage_num != 1 || ks.num_dims != 4 || ks.dims[0] != batch || !same_shape(st, {batch, 1, H}))
    unsupported(what + "block_cache_0 with " + std::to_string(c0.info->stage_num) + " stage(s): " + dims_of(c0, true));
  const int S = info.seq_len = ks.dims[1];
  const int kvh = info.kv_heads = ks.dims[2];
  const int hd = info.head_dim = ks.dims[3];
  for (const Net& c : caches)
    if (c.info->input_num != 5 || (c.info->output_num != 1 && c.info->output_num != 3) ||
        c.info->output_num != c0.info->output_num || c.info->stage_num != 1 || !same_shape(c.in_shape(0), {batch, 1, H}) ||
        !same_shape(c.in_shape(1), {batch, 3, 1}) || !same_shape(c.in_shape(2), {batch, 1, 1, S}) ||
        !same_shape(c.in_shape(3), {batch, S, kvh, hd}) || !same_shape(c.in_shape(4), {batch, S, kvh, hd}) ||
        !same_shape(c.out_shape(0), {batch, 1, H}) ||
        (c.info->output_num == 3 &&
         (!same_shape(c.out_shape(1), {batch, 1, kvh, hd}) || !same_shape(c.out_shape(2), {batch, 1, kvh, hd}))))
      unsupported(what + c.name + " inputs " + dims_of(c, true) + ", outputs " + dims_of(c, false));
  if (!same_shape(embc.in_shape(0), {1, 1}) || lm.in_shape(0).dims[0] != 1)
    unsupported(what + "build with embedding_cache " + dims_of(embc, true) + " and lm_head " + dims_of(lm, true) +
                " (this runtime runs them once per slot: batch 1)");
  if (S <= info.max_input_length)
    unsupported("SEQLEN " + std::to_string(S) + " not above MAX_INPUT_LENGTH " + std::to_string(info.max_input_length));
  info.decode_stages = {S};
  cache_stage_index = {0};
  cache_full_stage = 0;
}

// block_cache_i of a batch-N "slots" build (our converter wrapper): states [N,1,H],
// positions [N,3,1], mask [N,1,1,SEQLEN+1], then history_k_s / history_v_s [1,SEQLEN,kv,hd]
// for each slot s (inputs 3+2s, 4+2s); outputs states and k_cache_s / v_cache_s [1,1,kv,hd]
// (outputs 1+2s, 2+2s).  Each slot's attention is a batch-1 build's, over SEQLEN+1 keys.
void Model::read_batch_slot_cache() {
  const Net& c0 = caches[0];
  const bm_shape_t& st = c0.in_shape(0);
  const int batch = info.batch = st.dims[0];
  const int H = info.hidden_size;
  const std::string what = "batch-" + std::to_string(batch) + " ";
  const bm_shape_t& ks = c0.in_shape(3);
  if (c0.info->input_num != 3 + 2 * batch || c0.info->output_num != 1 + 2 * batch || ks.num_dims != 4)
    unsupported(what + "block_cache_0 inputs " + dims_of(c0, true) + ", outputs " + dims_of(c0, false));
  const int S = info.seq_len = ks.dims[1];
  const int kvh = info.kv_heads = ks.dims[2];
  const int hd = info.head_dim = ks.dims[3];
  for (const Net& c : caches) {
    bool ok = c.info->input_num == 3 + 2 * batch && c.info->output_num == 1 + 2 * batch && c.info->stage_num == 1 &&
              same_shape(c.in_shape(0), {batch, 1, H}) && same_shape(c.in_shape(1), {batch, 3, 1}) &&
              same_shape(c.in_shape(2), {batch, 1, 1, S + 1}) && same_shape(c.out_shape(0), {batch, 1, H});
    for (int i = 3; ok && i < 3 + 2 * batch; i++) ok = same_shape(c.in_shape(i), {1, S, kvh, hd});
    for (int i = 1; ok && i < 1 + 2 * batch; i++) ok = same_shape(c.out_shape(i), {1, 1, kvh, hd});
    if (!ok) unsupported(what + c.name + " inputs " + dims_of(c, true) + ", outputs " + dims_of(c, false));
  }
  if (S <= info.max_input_length)
    unsupported("SEQLEN " + std::to_string(S) + " not above MAX_INPUT_LENGTH " + std::to_string(info.max_input_length));
  info.batch_slot_kv = true;
  info.decode_stages = {S};
  cache_stage_index = {0};
  cache_full_stage = 0;
}

// embedding_cache_batch and lm_head_batch, when the build has both: the same computation
// as the batch-1 nets for N rows at once.
void Model::read_batch_heads() {
  const int N = info.batch, H = info.hidden_size;
  if (!embc_batch.present() || !lm_batch.present()) return;
  const bm_shape_t& lo = lm_batch.out_shape(0);
  const bool ok = same_shape(embc_batch.in_shape(0), {N, 1}) && same_shape(embc_batch.out_shape(0), {N, 1, H}) &&
                  embc_batch.out_dtype(0) == hidden_dtype() && same_shape(lm_batch.in_shape(0), {N, H}) &&
                  lo.num_dims == 2 && lo.dims[0] == N && lm_batch.out_dtype(0) == lm.out_dtype(0) &&
                  (info.lm_head_logits ? lo.dims[1] == info.vocab_size : lo.dims[1] == 1);
  if (!ok)
    unsupported("batch-" + std::to_string(N) + " heads embedding_cache_batch " + dims_of(embc_batch, true) + " -> " +
                dims_of(embc_batch, false) + ", lm_head_batch " + dims_of(lm_batch, true) + " -> " +
                dims_of(lm_batch, false));
  info.batch_heads = true;
}

// block_kv_i of a --use_history_kv build: a prefill chunk (states [1,C,H], positions) on
// top of history K/V [1,h,kv_heads,head_dim] (dynamic: the h rows before the chunk, no mask
// needed), giving the chunk's states and K/V.  block_i runs a chunk with no history.
void Model::read_history_blocks(const Device& dev) {
  if (info.batch > 1) unsupported("a batch-" + std::to_string(info.batch) + " --use_history_kv build");
  const Net& b0 = blocks[0];
  if (!info.prefill_dynamic || b0.info->input_num != 2)
    unsupported("a --use_history_kv build whose block_0 is not dynamic with 2 inputs (" +
                std::string(info.prefill_dynamic ? "dynamic" : "static") + ", inputs " + dims_of(b0, true) + ")");
  const int C = info.max_input_length, S = info.seq_len, kvh = info.kv_heads, hd = info.head_dim;
  for (int l = 0; l < info.num_layers; l++) {
    Net k = dev.net("block_kv_" + std::to_string(l), false);
    if (!k.present()) unsupported("a --use_history_kv build without block_kv_" + std::to_string(l));
    if (!k.info->is_dynamic || k.info->input_num != 4 || k.info->output_num != 3 ||
        !same_shape(k.in_shape(0), {1, C, info.hidden_size}) || !same_shape(k.in_shape(2), {1, S, kvh, hd}) ||
        !same_shape(k.in_shape(3), {1, S, kvh, hd}) || !same_shape(k.out_shape(1), {1, C, kvh, hd}) ||
        !same_shape(k.out_shape(2), {1, C, kvh, hd}))
      unsupported(k.name + " inputs " + dims_of(k, true) + ", outputs " + dims_of(k, false) +
                  (k.info->is_dynamic ? "" : " (static)"));
    kv_blocks.push_back(k);
  }
  info.history_kv = true;
}

// Where each block_cache stage reads its inputs.  The vendor runtime allocates I/O memory
// per stage; a stage handed history K/V anywhere else than its own buffers has them
// copied there by the runtime before it runs, so the KV cache must live where the running
// stage reads it (KvCache).
void Model::read_stage_inputs() {
  for (const Net& c : caches)
    for (size_t i = 0; i < cache_stage_index.size(); i++) {
      const int s = cache_stage_index[i];
      StageInputs si;
      si.net = c.name;
      si.stage = s;
      si.kv_len = info.decode_stages[i];
      for (int k = 0; k < c.info->input_num; k++) {
        si.addr.push_back(bm_mem_get_device_addr(c.in_mem(k, s)));
        si.bytes.push_back(c.in_bytes(k, s));
      }
      for (int k : {3, 4})
        if (si.addr[static_cast<size_t>(k)] != bm_mem_get_device_addr(c.in_mem(k, cache_full_stage)))
          info.kv_stages_shared = false;
      info.stage_inputs.push_back(std::move(si));
    }
}

void Model::read_vit() {
  const bm_shape_t& px = vit.in_shape(0);
  info.vit_inputs = vit.info->input_num;
  info.vit_outputs = vit.info->output_num;
  if (px.num_dims != 2 || info.vit_inputs < 4 || info.vit_inputs > 5 || info.vit_outputs < 1)
    unsupported("vit inputs " + dims_of(vit, true) + ", outputs " + dims_of(vit, false));
  const int P = info.vit_patches = px.dims[0];
  info.vit_patch_dim = px.dims[1];
  if (same_shape(vit.in_shape(2), {4, P}) && P != 4)
    unsupported("vit pos_idx " + shape_str(vit.in_shape(2)) + " (the older [4,P] layout; this runtime feeds [P,4])");
  if (!same_shape(vit.in_shape(1), {P, 2}) || !same_shape(vit.in_shape(2), {P, 4}))
    unsupported("vit inputs " + dims_of(vit, true));
  for (int i = 0; i < info.vit_outputs; i++)
    if (!same_shape(vit.out_shape(i), {P / 4, info.hidden_size})) unsupported("vit outputs " + dims_of(vit, false));
  info.vit_dynamic = vit.info->is_dynamic;
}

}  // namespace qwen3vl
