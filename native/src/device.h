// Device: one device handle, the bmodel loaded into one bmrt runtime, and every device
// buffer allocated for it.  The other types of the runtime (model.h, stages.h, layouts.h)
// reach the device only through it, so every transfer and launch is counted.
//
// Rules:
// - Device buffers are allocated through alloc() and freed, all of them, by close() before
//   the runtime and then the handle (the device memory pool asserts otherwise).
// - The counts and timings live in a DeviceStats the owner keeps: they outlive a closed
//   device and are read without waiting for device work.
// - Launches are queued; sync() waits for them.  The caller decides when (before reading a
//   result, or before overwriting an input a queued launch may still read).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "bm_api.h"

namespace qwen3vl {

// ---- tensors and dtypes ----

size_t dtype_size(bm_data_type_t dt);
// float32 values -> bytes of the given floating dtype, and back
std::vector<uint8_t> encode_floats(const float* src, size_t n, bm_data_type_t dt);
void decode_floats(const uint8_t* src, size_t n, bm_data_type_t dt, float* dst);
bm_shape_t make_shape(std::initializer_list<int> dims);
size_t shape_count(const bm_shape_t& s);
std::string shape_str(const bm_shape_t& s);
bool same_shape(const bm_shape_t& a, std::initializer_list<int> dims);
// `bytes` of `m` from byte `offset` on, as a buffer of its own (not owned)
bm_device_mem_t sub(bm_device_mem_t m, size_t offset, size_t bytes);
bm_tensor_t tensor(bm_device_mem_t mem, bm_data_type_t dt, bm_shape_t shape);

// One network of the bmodel, looked up by name (absent when info is null).
struct Net {
  const bm_net_info_t* info = nullptr;
  std::string name;
  bool present() const { return info != nullptr; }
  const bm_shape_t& in_shape(int i, int stage = 0) const { return info->stages[stage].input_shapes[i]; }
  const bm_shape_t& out_shape(int i, int stage = 0) const { return info->stages[stage].output_shapes[i]; }
  bm_device_mem_t in_mem(int i, int stage = 0) const { return info->stages[stage].input_mems[i]; }
  bm_data_type_t in_dtype(int i) const { return info->input_dtypes[i]; }
  bm_data_type_t out_dtype(int i) const { return info->output_dtypes[i]; }
  size_t in_bytes(int i, int stage = 0) const;
  size_t out_bytes(int i, int stage = 0) const;
};

// ---- counts ----

// Per network: launches and the milliseconds they took to return.
struct NetTiming {
  long calls = 0;
  double ms = 0.0;
};

// What the host asked of the device since the last reset (the per-token cost figures).
struct DeviceCounters {
  long launches = 0;
  long d2d_copies = 0;
  long long d2d_bytes = 0;  // bytes host-issued d2d copies moved
  long s2d_copies = 0;
  long d2s_copies = 0;
  long long s2d_bytes = 0;
  long long d2s_bytes = 0;
  long memsets = 0;
  long syncs = 0;
  // Milliseconds the host spent inside launches and waits for the device: the device's
  // time as the host sees it (the simulator runs a net inside its launch; a box queues
  // the launch and the wait takes the time).  Host work = wall time - this.
  double device_ms = 0.0;
};

class DeviceStats {
 public:
  std::map<std::string, NetTiming> timings();
  void reset_timings();
  DeviceCounters counters();
  void reset_counters();

 private:
  friend class Device;
  std::mutex mu_;
  std::map<std::string, NetTiming> timings_;
  DeviceCounters counters_;
};

// ---- the device ----

class Device {
 public:
  // Opens device `devid` and loads the bmodel (networks share one activation memory, as
  // the vendor's demos run them, when no other runtime is open in the process: see
  // device.cpp).  Releases what it took when it throws.
  Device(const std::string& bmodel_path, int devid, DeviceStats& stats);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  // Frees every device buffer, then the runtime, then the handle (idempotent).
  void close();

  const std::vector<std::string>& networks() const { return networks_; }
  bool shares_memory() const { return shares_memory_; }
  bool has(const std::string& name) const;
  // The network's info; an absent Net (or an error when `required`) if there is none.
  Net net(const std::string& name, bool required) const;

  bm_device_mem_t alloc(size_t bytes);
  void s2d(bm_device_mem_t dst, const void* src, size_t bytes);
  void s2d_at(bm_device_mem_t dst, size_t offset, const void* src, size_t bytes);
  void d2s_at(void* dst, bm_device_mem_t src, size_t offset, size_t bytes);
  void d2d(bm_device_mem_t dst, size_t dst_offset, bm_device_mem_t src, size_t src_offset, size_t bytes);
  void memset16(bm_device_mem_t mem, uint16_t pattern);
  void sync();
  void launch(const Net& n, bm_tensor_t* in, int nin, bm_tensor_t* out, int nout);

 private:
  DeviceStats& stats_;
  bm_handle_t handle_ = nullptr;
  bool shares_memory_ = false;  // loaded with BM_RUNTIME_SHARE_MEM
  bool counted_ = false;        // in open_runtimes
  void* rt_ = nullptr;
  std::vector<bm_device_mem_t> owned_;
  std::vector<std::string> networks_;

  void open(const std::string& bmodel_path, int devid);
};

}  // namespace qwen3vl
