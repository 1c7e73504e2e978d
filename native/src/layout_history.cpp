#include <algorithm>
#include <stdexcept>

#include "layouts.h"

namespace qwen3vl {

HistoryLayout::HistoryLayout(const Parts& parts) : SingleLayout(parts) {
  // + one chunk: the static embedding writes whole chunks
  const size_t prompt_buffer = static_cast<size_t>(info_.seq_len + info_.max_input_length) * p_.model.hidden_row_bytes();
  prompt_hid_ = p_.dev.alloc(prompt_buffer);
  for (size_t i = 0; i < p_.prefill.deepstack().size(); i++) prompt_ds_.push_back(p_.dev.alloc(prompt_buffer));
  spare_.k = p_.dev.alloc(p_.model.blocks[0].out_bytes(1));
  spare_.v = p_.dev.alloc(p_.model.blocks[0].out_bytes(1));
}

void HistoryLayout::check_length(int keep, int L) const {
  if (keep + L > info_.seq_len)
    throw std::invalid_argument("prompt of " + std::to_string(keep + L) + " tokens exceeds SEQLEN " +
                                std::to_string(info_.seq_len));
}

// The prompt after the `keep` cached rows, in chunks of MAX_INPUT_LENGTH.  Embeddings and
// vision rows of the whole prompt are laid out first (a vision block may straddle two
// chunks); then each chunk's rows, deepstack rows and positions are copied to where the
// blocks read them and run on top of every row before them.
StepResult HistoryLayout::run_prompt(const PrefillInputs& in, int keep) {
  Prefill& prefill = p_.prefill;
  const int L = static_cast<int>(in.ids.size), C = info_.max_input_length;
  p_.vision.start(in.vit_calls.size());
  const size_t row_bytes = p_.model.hidden_row_bytes();
  for (int c0 = 0; c0 < L; c0 += C)
    prefill.embed({in.ids.data + c0, static_cast<size_t>(std::min(C, L - c0))},
                  sub(prompt_hid_, static_cast<size_t>(c0) * row_bytes, static_cast<size_t>(C) * row_bytes));
  const std::vector<VisualRun> runs = visual_runs(in.vis_pos);
  if (!runs.empty()) p_.vision.encode(in, runs, prompt_hid_, prompt_ds_);
  int cur = 0, rows = 0;
  for (int c0 = 0; c0 < L; c0 += C) {
    rows = std::min(C, L - c0);
    const size_t at = static_cast<size_t>(c0) * row_bytes, bytes = static_cast<size_t>(rows) * row_bytes;
    p_.dev.d2d(prefill.hidden(0), 0, prompt_hid_, at, bytes);
    std::vector<VisualRun> chunk_runs;  // rows relative to the chunk
    for (const VisualRun& r : runs) {
      const int lo = std::max(r.row, c0), hi = std::min(r.row + r.count, c0 + rows);
      if (lo < hi) chunk_runs.push_back({r.first + static_cast<size_t>(lo - r.row), lo - c0, hi - lo});
    }
    if (!chunk_runs.empty())
      for (size_t i = 0; i < prompt_ds_.size(); i++) p_.dev.d2d(prefill.deepstack()[i], 0, prompt_ds_[i], at, bytes);
    std::vector<int32_t> pos(static_cast<size_t>(3 * rows));
    for (int r = 0; r < 3; r++)
      std::copy_n(in.pos3.data + static_cast<size_t>(r) * L + c0, rows, pos.begin() + static_cast<std::ptrdiff_t>(r) * rows);
    prefill.upload_positions_and_mask({pos.data(), pos.size()}, rows, rows);
    cur = prefill.run_layers(rows, 0, chunk_runs, keep + c0, &spare_);
  }
  return p_.heads.lm_head(sub(prefill.hidden(cur), static_cast<size_t>(rows - 1) * row_bytes, row_bytes));
}

}  // namespace qwen3vl
