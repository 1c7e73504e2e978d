#include "device.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "half.h"

namespace qwen3vl {

namespace {

void check(bm_status_t st, const char* what) {
  if (st != BM_SUCCESS) throw std::runtime_error(std::string("bmlib: ") + what + " failed (" + std::to_string(st) + ")");
}

// bmrt's BM_RUNTIME_SHARE_MEM shares activation memory beyond one runtime: a second
// bmodel loaded with it while another runtime is open re-lays that memory under the first
// (measured on the simulator: the first's logits came out wrong).  So only a runtime opened
// alone in the process shares; one opened beside another keeps its own (more device
// memory, still correct).  Serving opens one per worker process.
std::mutex open_mu;
int open_runtimes = 0;

}  // namespace

// ---- tensors and dtypes ----------------------------------------------------------------

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

bool same_shape(const bm_shape_t& a, std::initializer_list<int> dims) {
  if (a.num_dims != static_cast<int>(dims.size())) return false;
  int i = 0;
  for (int d : dims)
    if (a.dims[i++] != d) return false;
  return true;
}

bm_device_mem_t sub(bm_device_mem_t m, size_t offset, size_t bytes) {
  return bm_mem_from_device(bm_mem_get_device_addr(m) + offset, static_cast<unsigned int>(bytes));
}

bm_tensor_t tensor(bm_device_mem_t mem, bm_data_type_t dt, bm_shape_t shape) {
  bm_tensor_t t;
  std::memset(&t, 0, sizeof(t));
  bmrt_tensor_with_device(&t, mem, dt, shape);
  return t;
}

size_t Net::in_bytes(int i, int stage) const { return shape_count(in_shape(i, stage)) * dtype_size(in_dtype(i)); }
size_t Net::out_bytes(int i, int stage) const { return shape_count(out_shape(i, stage)) * dtype_size(out_dtype(i)); }

// ---- counts ----------------------------------------------------------------------------

std::map<std::string, NetTiming> DeviceStats::timings() {
  std::lock_guard<std::mutex> g(mu_);
  return timings_;
}

void DeviceStats::reset_timings() {
  std::lock_guard<std::mutex> g(mu_);
  timings_.clear();
}

DeviceCounters DeviceStats::counters() {
  std::lock_guard<std::mutex> g(mu_);
  return counters_;
}

void DeviceStats::reset_counters() {
  std::lock_guard<std::mutex> g(mu_);
  counters_ = DeviceCounters{};
}

// ---- the device ------------------------------------------------------------------------

Device::Device(const std::string& bmodel_path, int devid, DeviceStats& stats) : stats_(stats) {
  try {
    open(bmodel_path, devid);
  } catch (...) {
    close();
    throw;
  }
}

Device::~Device() { close(); }

void Device::open(const std::string& bmodel_path, int devid) {
  check(bm_dev_request(&handle_, devid), "bm_dev_request");
  rt_ = bmrt_create(handle_);
  if (!rt_) throw std::runtime_error("bmrt_create failed");
  {
    std::lock_guard<std::mutex> g(open_mu);
    // as the vendor's demos run: one activation memory shared by all networks (they run one
    // at a time), instead of one per network, unless another runtime is open (see open_mu)
    shares_memory_ = open_runtimes == 0;
    if (shares_memory_) bmrt_set_flags(rt_, BM_RUNTIME_SHARE_MEM);
    open_runtimes++;
    counted_ = true;
  }
  if (!bmrt_load_bmodel(rt_, bmodel_path.c_str())) throw std::runtime_error("cannot load bmodel " + bmodel_path);
  const char** names = nullptr;
  bmrt_get_network_names(rt_, &names);
  int nn = bmrt_get_network_number(rt_);
  for (int i = 0; i < nn; i++) networks_.emplace_back(names[i]);
  std::free(names);
}

void Device::close() {
  if (handle_) {
    for (auto& m : owned_) bm_free_device(handle_, m);
  }
  owned_.clear();
  if (rt_) {
    bmrt_destroy(rt_);
    rt_ = nullptr;
  }
  if (counted_) {
    std::lock_guard<std::mutex> g(open_mu);
    open_runtimes--;
    counted_ = false;
  }
  if (handle_) {
    bm_dev_free(handle_);
    handle_ = nullptr;
  }
}

bool Device::has(const std::string& name) const {
  return std::find(networks_.begin(), networks_.end(), name) != networks_.end();
}

Net Device::net(const std::string& name, bool required) const {
  Net n;
  n.name = name;
  if (!has(name)) {
    if (required) throw std::runtime_error("bmodel has no network '" + name + "'");
    return n;
  }
  n.info = bmrt_get_network_info(rt_, name.c_str());
  if (!n.info) throw std::runtime_error("cannot read network info of '" + name + "'");
  return n;
}

bm_device_mem_t Device::alloc(size_t bytes) {
  bm_device_mem_t m{};
  if (bytes == 0) bytes = 4;
  check(bm_malloc_device_byte(handle_, &m, static_cast<unsigned int>(bytes)), "bm_malloc_device_byte");
  owned_.push_back(m);
  return m;
}

void Device::s2d(bm_device_mem_t dst, const void* src, size_t bytes) {
  check(bm_memcpy_s2d_partial(handle_, dst, const_cast<void*>(src), static_cast<unsigned int>(bytes)), "s2d");
  std::lock_guard<std::mutex> g(stats_.mu_);
  stats_.counters_.s2d_copies++;
  stats_.counters_.s2d_bytes += static_cast<long long>(bytes);
}

void Device::s2d_at(bm_device_mem_t dst, size_t offset, const void* src, size_t bytes) {
  s2d(sub(dst, offset, bytes), src, bytes);
}

void Device::d2s_at(void* dst, bm_device_mem_t src, size_t offset, size_t bytes) {
  check(bm_memcpy_d2s_partial(handle_, dst, sub(src, offset, bytes), static_cast<unsigned int>(bytes)), "d2s");
  std::lock_guard<std::mutex> g(stats_.mu_);
  stats_.counters_.d2s_copies++;
  stats_.counters_.d2s_bytes += static_cast<long long>(bytes);
}

void Device::d2d(bm_device_mem_t dst, size_t dst_offset, bm_device_mem_t src, size_t src_offset, size_t bytes) {
  check(bm_memcpy_d2d_byte(handle_, dst, dst_offset, src, src_offset, bytes), "d2d");
  std::lock_guard<std::mutex> g(stats_.mu_);
  stats_.counters_.d2d_copies++;
  stats_.counters_.d2d_bytes += static_cast<long long>(bytes);
}

void Device::memset16(bm_device_mem_t mem, uint16_t pattern) {
  int value = pattern;  // mode 2: the low two bytes of *value, repeated
  check(bm_memset_device_ext(handle_, &value, 2, mem), "bm_memset_device_ext");
  std::lock_guard<std::mutex> g(stats_.mu_);
  stats_.counters_.memsets++;
}

void Device::sync() {
  const auto t0 = std::chrono::steady_clock::now();
  check(bm_thread_sync(handle_), "bm_thread_sync");
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> g(stats_.mu_);
  stats_.counters_.syncs++;
  stats_.counters_.device_ms += ms;
}

void Device::launch(const Net& n, bm_tensor_t* in, int nin, bm_tensor_t* out, int nout) {
  const auto t0 = std::chrono::steady_clock::now();
  if (!bmrt_launch_tensor_ex(rt_, n.name.c_str(), in, nin, out, nout, true, false))
    throw std::runtime_error("launching network '" + n.name + "' failed");
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> g(stats_.mu_);
  NetTiming& e = stats_.timings_[n.name];
  e.calls++;
  e.ms += ms;
  stats_.counters_.launches++;
  stats_.counters_.device_ms += ms;
}

}  // namespace qwen3vl
