// Verifier: the speculative-decoding verify step of a single-sequence bmodel built with
// `--speculative K` (scripts/llm_convert_patched.py; docs/speculative.md).
//
// One step feeds R = K + 1 tokens (the next token and up to K draft tokens; shorter feeds
// are padded and their extra rows ignored) at consecutive positions after the cached
// ones: `embedding_verify`, then every layer's `block_verify_<i>` over the whole history,
// then `lm_head_verify` -- L + 2 launches for up to R tokens, where a decode step costs
// L + 2 for one.  It returns the logits after every fed token.
//
// Rules:
// - The step writes the fed tokens' K/V rows straight into the cache after the cached
//   rows (into a pending buffer when they would not fit there) but does not count them:
//   commit(keep) makes the first `keep` of them cached tokens (the rest stay masked out of
//   every later step and are overwritten), so a rejected draft costs no copy.
// - The block's history input is its own buffer (the compiled net lays its new rows
//   right after it): each layer's SEQLEN cached rows are copied into it before it runs.
// - A commit must follow its verify step before any other call changes the cache; a
//   commit without one is refused.
#pragma once

#include <vector>

#include "layouts.h"

namespace qwen3vl {

class Verifier {
 public:
  Verifier(const Parts& parts, SingleLayout& layout);

  // True when the bmodel carries the verify nets in a shape this runtime runs.
  static bool available(const Device& dev);
  int rows() const { return rows_; }  // R = K + 1: tokens one step can take

  // Feed `tokens` (1..R) at positions position, position + 1, ...; logits after each.
  std::vector<StepResult> verify(const std::vector<int32_t>& tokens, int32_t position);
  // Keep the first `keep` (1..fed) tokens of the last verify step as cached tokens.
  void commit(int keep);

 private:
  Parts p_;
  SingleLayout& layout_;
  const ModelInfo& info_;
  Net emb_, lm_;
  std::vector<Net> blocks_;
  int rows_ = 0;
  bm_device_mem_t ids_{}, pos_{}, mask_{}, hid_[2]{}, logits_{};
  std::vector<bm_device_mem_t> pend_k_, pend_v_;  // per layer: rows that would not fit in the cache
  int base_ = -1;     // token_length the last verify step ran on (-1: nothing to commit)
  int fed_ = 0;       // tokens it was fed
  bool pending_ = false;  // its rows went to pend_k_/pend_v_ (else into the cache)
};

}  // namespace qwen3vl
