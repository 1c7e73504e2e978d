#include "runtime.h"

#include <algorithm>
#include <stdexcept>

#include "layouts.h"
#include "verify.h"

namespace qwen3vl {

namespace {

std::mutex g_live_mu;
std::vector<Runtime*> g_live;  // open runtimes, closed at interpreter exit

std::string batch_of(const ModelInfo& info) { return "a batch-" + std::to_string(info.batch) + " bmodel"; }

}  // namespace

// The device, the shapes, the parts, then the layout the shapes call for; the cache starts
// zeroed (device memory is not zeroed by the allocator on a real box).
Loaded::Loaded(const std::string& bmodel_path, int devid, DeviceStats& stats)
    : dev(bmodel_path, devid, stats),
      model(dev, bmodel_path),
      kv(dev, model),
      vision(dev, model),
      heads(dev, model),
      prefill(dev, model, kv, vision) {
  const Parts parts{dev, model, kv, vision, prefill, heads};
  if (model.info.batch > 1)
    batch = std::make_unique<BatchLayout>(parts);
  else if (model.info.history_kv)
    single = std::make_unique<HistoryLayout>(parts);
  else
    single = std::make_unique<SingleLayout>(parts);
  if (single && Verifier::available(dev)) verifier = std::make_unique<Verifier>(parts, *single);
  dev.sync();
}

// ---- lifecycle -------------------------------------------------------------------------

Runtime::Runtime(const std::string& bmodel_path, int devid) : path_(bmodel_path), devid_(devid) {
  loaded_ = std::make_unique<Loaded>(bmodel_path, devid, stats_);
  info_ = loaded_->model.info;
  verify_rows_ = loaded_->verifier ? loaded_->verifier->rows() : 0;
  closed_ = false;
  std::lock_guard<std::mutex> g(g_live_mu);
  g_live.push_back(this);
}

Runtime::~Runtime() {
  {
    std::lock_guard<std::mutex> g(g_live_mu);
    g_live.erase(std::remove(g_live.begin(), g_live.end(), this), g_live.end());
  }
  close();
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
  loaded_.reset();
  closed_ = true;
  token_length_ = 0;
}

Loaded& Runtime::open_model() {
  if (!loaded_) throw std::logic_error("runtime is closed");
  return *loaded_;
}

void Runtime::publish() {
  if (!loaded_) return;
  if (loaded_->single) {
    token_length_ = loaded_->single->token_length();
    last_decode_kv_length_ = loaded_->single->last_decode_kv_length();
  } else {
    last_decode_kv_length_ = loaded_->batch->last_decode_kv_length();
  }
}

namespace {

// Publishes the layout's lengths when a call ends, by return or by throw.
template <typename F>
struct OnExit {
  F f;
  ~OnExit() { f(); }
};
template <typename F>
OnExit(F) -> OnExit<F>;

}  // namespace

// ---- calls -----------------------------------------------------------------------------

std::vector<int> Runtime::slot_lengths() {
  std::lock_guard<std::mutex> g(mu_);
  return loaded_ && loaded_->batch ? loaded_->batch->slot_lengths() : std::vector<int>{};
}

std::vector<std::vector<uint16_t>> Runtime::last_vit_rows() {
  std::lock_guard<std::mutex> g(mu_);
  return loaded_ ? loaded_->vision.last_rows() : std::vector<std::vector<uint16_t>>{};
}

StepResult Runtime::prefill(const PrefillInputs& in, int keep) {
  std::lock_guard<std::mutex> g(mu_);
  Loaded& m = open_model();
  if (!m.single) throw std::logic_error(batch_of(info_) + " prefills per slot (prefill_slot)");
  OnExit done{[this] { publish(); }};
  return m.single->prefill(in, keep);
}

StepResult Runtime::decode(int32_t token, int32_t position) {
  std::lock_guard<std::mutex> g(mu_);
  Loaded& m = open_model();
  if (!m.single) throw std::logic_error(batch_of(info_) + " decodes per step (decode_batch)");
  OnExit done{[this] { publish(); }};
  return m.single->decode(token, position);
}

StepResult Runtime::prefill_slot(int slot, const PrefillInputs& in) {
  std::lock_guard<std::mutex> g(mu_);
  Loaded& m = open_model();
  if (!m.batch) throw std::logic_error("prefill_slot needs a batch-N bmodel; this one is batch 1 (use prefill)");
  return m.batch->prefill_slot(slot, in);
}

std::vector<StepResult> Runtime::decode_batch(const std::vector<SlotStep>& steps) {
  std::lock_guard<std::mutex> g(mu_);
  Loaded& m = open_model();
  if (!m.batch) throw std::logic_error("decode_batch needs a batch-N bmodel; this one is batch 1 (use decode)");
  OnExit done{[this] { publish(); }};
  return m.batch->decode_batch(steps);
}

void Runtime::reset() {
  std::lock_guard<std::mutex> g(mu_);
  Loaded& m = open_model();
  OnExit done{[this] { publish(); }};
  if (m.single)
    m.single->reset();
  else
    m.batch->reset();
  m.dev.sync();
}

std::vector<StepResult> Runtime::verify(const std::vector<int32_t>& tokens, int32_t position) {
  std::lock_guard<std::mutex> g(mu_);
  Loaded& m = open_model();
  if (!m.verifier) throw std::logic_error("this bmodel has no verify nets (build it with --speculative K)");
  OnExit done{[this] { publish(); }};
  return m.verifier->verify(tokens, position);
}

void Runtime::commit_verify(int keep) {
  std::lock_guard<std::mutex> g(mu_);
  Loaded& m = open_model();
  if (!m.verifier) throw std::logic_error("this bmodel has no verify nets (build it with --speculative K)");
  OnExit done{[this] { publish(); }};
  m.verifier->commit(keep);
}

void Runtime::set_head(const HeadPlan& plan, const std::vector<int32_t>& history) {
  std::lock_guard<std::mutex> g(mu_);
  Loaded& m = open_model();
  if (m.batch && plan.kind != HeadPlan::Kind::kLogits)
    throw std::logic_error(batch_of(info_) + " runs lm_head once per slot: its logits go to the host");
  m.heads.set_plan(plan, history);
}

StepResult Runtime::last_logits() {
  std::lock_guard<std::mutex> g(mu_);
  return open_model().heads.logits();
}

}  // namespace qwen3vl
