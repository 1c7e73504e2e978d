// Python bindings of qwen3vl_native: numpy arrays in and out, the GIL released around
// every device call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "half.h"
#include "memory_info.h"
#include "runtime.h"
#include "testing.h"

namespace py = pybind11;
using qwen3vl::ModelInfo;
using qwen3vl::Runtime;

namespace {

template <typename T>
std::vector<T> to_vec(const py::handle& obj, const char* what) {
  if (obj.is_none()) return {};
  auto arr = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(obj);
  if (!arr) throw std::invalid_argument(std::string(what) + ": expected an array");
  return std::vector<T>(arr.data(), arr.data() + arr.size());
}

// Keeps the numpy arrays behind the views alive (and unconverted ones converted) while the
// GIL is released and the runtime reads them.
class Pinned {
 public:
  template <typename T>
  qwen3vl::View<T> view(const py::handle& obj, const char* what) {
    if (obj.is_none()) return {};
    auto arr = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(obj);
    if (!arr) throw std::invalid_argument(std::string(what) + ": expected an array");
    keep_.push_back(arr);
    return {arr.data(), static_cast<size_t>(arr.size())};
  }

 private:
  std::vector<py::object> keep_;
};

template <typename T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

// A step's result: the token id lm_head chose, a device head's (probabilities, ids), or the logits.
py::object step_result(const qwen3vl::StepResult& r) {
  if (r.token) return py::int_(*r.token);
  if (!r.candidates.empty()) return py::make_tuple(to_array(r.candidates.probs), to_array(r.candidates.ids));
  return to_array(r.logits);
}

// A ModelInfo field as a read-only property.
template <auto Field>
auto info_field() {
  return [](const Runtime& r) { return r.info().*Field; };
}

// Element-wise conversion over a numpy array (for the exhaustive conversion tests).
template <typename In, typename Out, Out (*F)(In)>
py::array_t<Out> convert(py::array_t<In, py::array::c_style | py::array::forcecast> a) {
  py::array_t<Out> r(a.size());
  const In* src = a.data();
  Out* dst = r.mutable_data();
  for (py::ssize_t i = 0; i < a.size(); i++) dst[i] = F(src[i]);
  return r;
}

// prefill's arguments -> PrefillInputs (the arrays pinned by `pin`)
qwen3vl::PrefillInputs prefill_inputs(Pinned& pin, py::handle input_ids, py::handle position_ids,
                                      py::handle visual_positions, py::sequence vit_calls) {
  qwen3vl::PrefillInputs in;
  in.ids = pin.view<int32_t>(input_ids, "input_ids");
  in.pos3 = pin.view<int32_t>(position_ids, "position_ids");
  in.vis_pos = pin.view<int32_t>(visual_positions, "visual_positions");
  for (auto c : vit_calls) {
    qwen3vl::VitCall call;
    call.tokens = c.attr("tokens").cast<int>();
    if (py::hasattr(c, "cached")) {  // a vision-cache hit: its output rows, no vit launch
      call.cached = pin.view<uint16_t>(c.attr("cached"), "cached");
      in.vit_calls.push_back(std::move(call));
      continue;
    }
    call.pixels = pin.view<float>(c.attr("pixel_values"), "pixel_values");
    call.pos_ids = pin.view<int32_t>(c.attr("position_ids"), "position_ids");
    call.pos_idx = pin.view<int32_t>(c.attr("pos_idx"), "pos_idx");
    call.pos_weight = pin.view<float>(c.attr("pos_weight"), "pos_weight");
    call.mask = pin.view<float>(c.attr("attention_mask"), "attention_mask");
    call.mask_key = py::str(c.attr("mask_key"));
    call.capture = c.attr("capture").cast<bool>();
    in.vit_calls.push_back(std::move(call));
  }
  return in;
}

// One prefill-like call with the GIL released, the prompt arrays pinned meanwhile.
template <typename Call>
py::object run_prefill(py::handle input_ids, py::handle position_ids, py::handle visual_positions,
                       py::sequence vit_calls, Call call) {
  Pinned pin;
  const qwen3vl::PrefillInputs in = prefill_inputs(pin, input_ids, position_ids, visual_positions, vit_calls);
  qwen3vl::StepResult r;
  {
    py::gil_scoped_release nogil;
    r = call(in);
  }
  return step_result(r);
}

}  // namespace

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

  // The half-precision conversions the runtime uses, element-wise (tests).
  m.def("f32_to_bf16", &convert<float, uint16_t, qwen3vl::f32_to_bf16>);
  m.def("bf16_to_f32", &convert<uint16_t, float, qwen3vl::bf16_to_f32>);
  m.def("f32_to_f16", &convert<float, uint16_t, qwen3vl::f32_to_f16>);
  m.def("f16_to_f32", &convert<uint16_t, float, qwen3vl::f16_to_f32>);

  py::class_<Runtime>(m, "Runtime")
      .def(py::init([](const std::string& path, int devid) {
             py::gil_scoped_release nogil;
             return new Runtime(path, devid);
           }),
           py::arg("bmodel_path"), py::arg("devid") = 0)
      .def("close",
           [](Runtime& r) {
             py::gil_scoped_release nogil;
             r.close();
           })
      .def_property_readonly("closed", &Runtime::closed)
      .def_property_readonly("path", &Runtime::path)
      .def_property_readonly("devid", &Runtime::devid)
      .def_property_readonly("seq_len", info_field<&ModelInfo::seq_len>())
      .def_property_readonly("max_input_length", info_field<&ModelInfo::max_input_length>())
      .def_property_readonly("hidden_size", info_field<&ModelInfo::hidden_size>())
      .def_property_readonly("num_layers", info_field<&ModelInfo::num_layers>())
      .def_property_readonly("kv_heads", info_field<&ModelInfo::kv_heads>())
      .def_property_readonly("head_dim", info_field<&ModelInfo::head_dim>())
      .def_property_readonly("vocab_size", info_field<&ModelInfo::vocab_size>())
      .def_property_readonly("lm_head_logits", info_field<&ModelInfo::lm_head_logits>())
      .def_property_readonly("vit_patches", info_field<&ModelInfo::vit_patches>())
      .def_property_readonly("vit_outputs", info_field<&ModelInfo::vit_outputs>())
      .def_property_readonly("vit_patch_dim", info_field<&ModelInfo::vit_patch_dim>())
      .def_property_readonly("vit_inputs", info_field<&ModelInfo::vit_inputs>())
      .def_property_readonly("vit_dynamic", info_field<&ModelInfo::vit_dynamic>())
      .def_property_readonly("prefill_dynamic", info_field<&ModelInfo::prefill_dynamic>())
      .def_property_readonly("history_kv", info_field<&ModelInfo::history_kv>())
      .def_property_readonly("max_context", info_field<&ModelInfo::max_context>())
      .def_property_readonly("batch_slot_kv", info_field<&ModelInfo::batch_slot_kv>())
      .def_property_readonly("batch_heads", info_field<&ModelInfo::batch_heads>())
      .def_property_readonly("token_length", &Runtime::token_length)
      .def_property_readonly("networks", info_field<&ModelInfo::networks>())
      .def_property_readonly("shares_memory", info_field<&ModelInfo::shares_memory>())
      .def_property_readonly("has_greedy_head", info_field<&ModelInfo::has_greedy_head>())
      .def_property_readonly("has_sample_head", info_field<&ModelInfo::has_sample_head>())
      .def_property_readonly("sample_candidates", info_field<&ModelInfo::sample_candidates>())
      .def_property_readonly("has_add", info_field<&ModelInfo::has_add>())
      .def_property_readonly("decode_stages", info_field<&ModelInfo::decode_stages>())
      .def_property_readonly("last_decode_kv_length", &Runtime::last_decode_kv_length)
      .def_property_readonly(
          "stage_inputs",
          [](const Runtime& r) {
            py::list out;
            for (const auto& si : r.info().stage_inputs) {
              py::dict d;
              d["net"] = si.net;
              d["stage"] = si.stage;
              d["kv_len"] = si.kv_len;
              d["addr"] = si.addr;
              d["bytes"] = si.bytes;
              out.append(d);
            }
            return out;
          },
          "block_cache's stage inputs as allocated at load, per layer then stage (ascending KV length): dicts "
          "with net, stage, kv_len, addr and bytes (per input: states, positions, mask, history K, history V).")
      .def_property_readonly("kv_stages_shared", info_field<&ModelInfo::kv_stages_shared>(),
                             "Every stage reads its history K/V at the full stage's addresses (one cache buffer).")
      .def(
          "prefill",
          [](Runtime& r, py::handle input_ids, py::handle position_ids, py::handle visual_positions,
             py::sequence vit_calls, int keep) {
            return run_prefill(input_ids, position_ids, visual_positions, vit_calls,
                               [&](const qwen3vl::PrefillInputs& in) { return r.prefill(in, keep); });
          },
          py::arg("input_ids"), py::arg("position_ids"), py::arg("visual_positions") = py::none(),
          py::arg("vit_calls") = py::tuple(), py::arg("keep") = 0,
          "Run the prompt; the vision encoder runs first, one call per item of vit_calls (objects with "
          "pixel_values, position_ids, pos_idx, pos_weight, attention_mask, mask_key, tokens), its rows going "
          "to visual_positions on the device.  Returns float32 logits [vocab] or the device-chosen token id.  "
          "History-KV bmodels: `keep` leading cached rows stay and the arrays are the prompt after them "
          "(positions absolute, visual_positions relative to input_ids).")
      .def(
          "decode",
          [](Runtime& r, int token, int position) {
            qwen3vl::StepResult out;
            {
              py::gil_scoped_release nogil;
              out = r.decode(token, position);
            }
            return step_result(out);
          },
          py::arg("token_id"), py::arg("position"))
      .def_property_readonly("batch", info_field<&ModelInfo::batch>())
      .def_property_readonly(
          "last_vit_rows",
          [](Runtime& r) {
            py::list out;
            for (const auto& rows : r.last_vit_rows()) out.append(rows.empty() ? py::object(py::none()) : to_array(rows));
            return out;
          },
          "Per vit call of the last prefill: its output rows (uint16 [outputs*tokens*hidden]) when it was made "
          "with capture=True, else None.")
      .def_property_readonly("slot_lengths", &Runtime::slot_lengths)
      .def(
          "prefill_slot",
          [](Runtime& r, int slot, py::handle input_ids, py::handle position_ids, py::handle visual_positions,
             py::sequence vit_calls) {
            return run_prefill(input_ids, position_ids, visual_positions, vit_calls,
                               [&](const qwen3vl::PrefillInputs& in) { return r.prefill_slot(slot, in); });
          },
          py::arg("slot"), py::arg("input_ids"), py::arg("position_ids"), py::arg("visual_positions") = py::none(),
          py::arg("vit_calls") = py::tuple(),
          "Batch-N bmodels: prefill (as `prefill`) into one slot's KV region.")
      .def(
          "decode_batch",
          [](Runtime& r, const std::vector<int>& slots, const std::vector<int32_t>& tokens,
             const std::vector<int32_t>& positions) {
            if (slots.size() != tokens.size() || slots.size() != positions.size())
              throw std::invalid_argument("decode_batch needs one token and one position per slot");
            std::vector<qwen3vl::SlotStep> steps;
            for (size_t i = 0; i < slots.size(); i++) steps.push_back({slots[i], tokens[i], positions[i]});
            std::vector<qwen3vl::StepResult> results;
            {
              py::gil_scoped_release nogil;
              results = r.decode_batch(steps);
            }
            py::list out;
            for (const auto& res : results) out.append(step_result(res));
            return out;
          },
          py::arg("slots"), py::arg("token_ids"), py::arg("positions"),
          "Batch-N bmodels: one decode step for `slots` (token and position per slot); a list of results in "
          "slot order as `decode` returns them.")
      .def_property_readonly("verify_rows", &Runtime::verify_rows,
                             "Tokens one verify step takes (K + 1; 0 without the verify nets).")
      .def(
          "verify",
          [](Runtime& r, const std::vector<int32_t>& tokens, int position) {
            std::vector<qwen3vl::StepResult> results;
            {
              py::gil_scoped_release nogil;
              results = r.verify(tokens, position);
            }
            py::list out;
            for (const auto& res : results) out.append(step_result(res));
            return out;
          },
          py::arg("token_ids"), py::arg("position"),
          "Verify-net bmodels (--speculative K): feed 1..verify_rows tokens at position, position+1, ...; "
          "a list of float32 logits, the distribution after each.  Then commit_verify.")
      .def(
          "commit_verify",
          [](Runtime& r, int keep) {
            py::gil_scoped_release nogil;
            r.commit_verify(keep);
          },
          py::arg("keep"), "Keep the first `keep` tokens of the last verify step as cached tokens.")
      .def(
          "reset",
          [](Runtime& r) {
            py::gil_scoped_release nogil;
            r.reset();
          },
          "Empty the KV cache (zeros on the device).")
      .def(
          "set_head",
          [](Runtime& r, const std::string& kind, py::handle history, float penalty, float temperature, int top_k) {
            qwen3vl::HeadPlan plan;
            if (kind == "logits")
              plan.kind = qwen3vl::HeadPlan::Kind::kLogits;
            else if (kind == "greedy")
              plan.kind = qwen3vl::HeadPlan::Kind::kGreedy;
            else if (kind == "sample")
              plan.kind = qwen3vl::HeadPlan::Kind::kSample;
            else
              throw std::invalid_argument("head must be 'logits', 'greedy' or 'sample', not '" + kind + "'");
            plan.penalty = penalty;
            plan.temperature = temperature;
            plan.top_k = top_k;
            const auto hist = to_vec<int32_t>(history, "history");
            py::gil_scoped_release nogil;
            r.set_head(plan, hist);
          },
          py::arg("kind"), py::arg("history") = py::none(), py::arg("penalty") = 1.0f, py::arg("temperature") = 1.0f,
          py::arg("top_k") = 1,
          "How the next steps end (single-sequence builds): 'logits' (returned to the host; the default), "
          "'greedy' (greedy_head on the device) or 'sample' (sample_head: repetition `penalty` over `history` "
          "and the ids decode feeds, `temperature`, `top_k`).  With a head, prefill/decode return "
          "(probabilities float32 [k], token ids int32 [k]), most likely first.  Box builds only in practice: "
          "each head call takes minutes on the simulator.")
      .def(
          "last_logits",
          [](Runtime& r) {
            qwen3vl::StepResult out;
            {
              py::gil_scoped_release nogil;
              out = r.last_logits();
            }
            return step_result(out);
          },
          "The last step's logits, read from the device again (no launch).")
      .def(
          "timings",
          [](Runtime& r) {
            py::dict d;
            for (const auto& [name, t] : r.timings()) d[py::str(name)] = py::make_tuple(t.calls, t.ms);
            return d;
          },
          "network name -> (calls, total milliseconds)")
      .def("reset_timings", &Runtime::reset_timings)
      .def(
          "counters",
          [](Runtime& r) {
            const qwen3vl::DeviceCounters c = r.counters();
            py::dict d;
            d["launches"] = c.launches;
            d["d2d_copies"] = c.d2d_copies;
            d["d2d_bytes"] = c.d2d_bytes;
            d["s2d_copies"] = c.s2d_copies;
            d["d2s_copies"] = c.d2s_copies;
            d["s2d_bytes"] = c.s2d_bytes;
            d["d2s_bytes"] = c.d2s_bytes;
            d["memsets"] = c.memsets;
            d["syncs"] = c.syncs;
            d["device_ms"] = c.device_ms;
            return d;
          },
          "What the host asked of the device since load / reset_counters(): launches, copies, bytes, syncs, "
          "and device_ms, the milliseconds spent inside launches and waits (wall time minus it is host work).")
      .def("reset_counters", &Runtime::reset_counters);

  m.def(
      "device_heaps",
      [](int devid) {
        std::vector<qwen3vl::HeapStat> heaps;
        {
          py::gil_scoped_release nogil;
          heaps = qwen3vl::device_heaps(devid);
        }
        py::list out;
        for (const auto& h : heaps) {
          py::dict d;
          d["id"] = h.id;
          d["total"] = h.total;
          d["avail"] = h.avail;
          d["used"] = h.used;
          out.append(d);
        }
        return out;
      },
      py::arg("devid") = 0,
      "The device's memory heaps (id, total, avail, used bytes), read without loading a model.");

  // Test hooks (testing.h), outside the Runtime class.
  py::module_ testing = m.def_submodule("testing", "Test hooks: make the simulator's device memory look like a box's.");
  testing.def(
      "fill_kv_cache",
      [](Runtime& r, int pattern) {
        py::gil_scoped_release nogil;
        qwen3vl::testing::fill_kv_cache(r, static_cast<uint16_t>(pattern));
      },
      py::arg("runtime"), py::arg("pattern"),
      "Fill every KV cache buffer with a 16-bit pattern (e.g. bf16 NaN 0x7FC0), as unzeroed device memory on a "
      "real box may hold.");
  testing.def(
      "read_kv_cache",
      [](Runtime& r, int layer, int which) {
        std::vector<uint16_t> bits;
        {
          py::gil_scoped_release nogil;
          bits = qwen3vl::testing::read_kv_cache(r, layer, which);
        }
        return to_array(bits);
      },
      py::arg("runtime"), py::arg("layer"), py::arg("which"), "Raw uint16 contents of a layer's K (0) or V (1) cache.");
}
