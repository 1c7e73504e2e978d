// The plain values the runtime's calls take and give: what the bmodel's shapes say
// (ModelInfo), a prefill's inputs, a step's result.  No device code here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qwen3vl {

// One block_cache stage's input buffers as the vendor runtime allocated them at load
// (inputs: states, positions, mask, history K, history V).
struct StageInputs {
  std::string net;
  int stage = 0;   // the stage's number in the net
  int kv_len = 0;  // its history length
  std::vector<unsigned long long> addr;  // per input: device address
  std::vector<size_t> bytes;             // per input: bytes that stage reads
};

// What the bmodel's networks say, read once at load (model.cpp); never changes after.
struct ModelInfo {
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
  bool has_add = false;          // deepstack added on the device by the `add` net
  bool has_greedy_head = false;  // device-side heads over the last logits (--do_sample builds)
  bool has_sample_head = false;
  int sample_candidates = 0;  // sample_head's top-k width
  bool prefill_dynamic = false;
  // The layout (layouts.h): batch-N (llm_convert -b N: block_cache_i runs N slots, prefill
  // fills one), history-KV (block_kv_i present: chunked prefill that can keep cached rows),
  // or neither: single-sequence.
  int batch = 1;
  // Batch-N builds of our converter wrapper (scripts/llm_convert_patched.py, kv layout
  // "slots"): block_cache_i takes each slot's history as its own inputs and returns each
  // slot's new K/V rows, written in place; a slot holds up to SEQLEN tokens.  Otherwise the
  // new rows sit at each slot's row SEQLEN-1 (SEQLEN-1 tokens) and are moved by the host.
  bool batch_slot_kv = false;
  bool batch_heads = false;  // embedding_cache_batch [N,1] and lm_head_batch [N,H]: one launch per step
  int max_context = 0;       // tokens a sequence (a slot) can hold
  bool history_kv = false;
  std::vector<int> decode_stages;  // KV lengths of block_cache's stages, ascending
  std::vector<std::string> networks;
  // block_cache's stage inputs, per layer then stage (ascending KV length), and whether
  // every stage reads its history K/V at the full stage's addresses: then one buffer is
  // the cache; else each stage's own buffers hold the rows while that stage runs
  std::vector<StageInputs> stage_inputs;
  bool kv_stages_shared = true;
  bool shares_memory = false;  // networks share one activation memory (BM_RUNTIME_SHARE_MEM)
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
  bool capture = false;  // keep this call's output rows (Runtime::last_vit_rows)
};

// The inputs of one prefill.
struct PrefillInputs {
  View<int32_t> ids;
  View<int32_t> pos3;     // [3, L]
  View<int32_t> vis_pos;  // prompt rows of the vision tokens, in vit output order
  std::vector<VitCall> vit_calls;
};

// One slot's part of a batch decode step.
struct SlotStep {
  int slot = 0;
  int32_t token = 0;
  int32_t position = 0;
};

// Tokens a device head chose among (greedy_head: one; sample_head: its top-k, most likely
// first): probabilities and ids.  The host draws one.
struct Candidates {
  std::vector<float> probs;
  std::vector<int32_t> ids;
  bool empty() const { return ids.empty(); }
};

// What a step gave for one sequence: the token id lm_head chose (builds without logits),
// float32 logits [vocab], or a device head's candidates (HeadPlan).
struct StepResult {
  std::optional<int32_t> token;
  std::vector<float> logits;
  Candidates candidates;
};

// How a single-sequence step's result leaves the device (Heads): the logits (the host
// samples), or the --do_sample heads run over them on the device first -- greedy_head's
// token, or sample_head's candidates after repetition penalty, temperature and top-k (the
// host applies top-p and draws).
struct HeadPlan {
  enum class Kind { kLogits, kGreedy, kSample };
  Kind kind = Kind::kLogits;
  float penalty = 1.0f;      // kSample: repetition penalty over the sequence's ids
  float temperature = 1.0f;  // kSample
  int32_t top_k = 1;         // kSample: candidates wanted, 1..sample_candidates
};

}  // namespace qwen3vl
