// Declarations of the few bmlib / bmruntime C functions and structs this module uses.
//
// Box builds with libsophon installed compile with QWEN3VL_USE_SDK_HEADERS and take the
// SDK's own headers instead.  Otherwise (the simulator build, or a box without headers)
// these hand-written declarations are used: they follow the documented C ABI (field order
// and types) of libbmlib / libbmrt, and declare only what is needed here.
#pragma once

#include <cstddef>

#ifdef QWEN3VL_USE_SDK_HEADERS
#include "bmlib_runtime.h"
#include "bmruntime_interface.h"
#else

extern "C" {

// ---- bmlib ----------------------------------------------------------------------------
typedef struct bm_context* bm_handle_t;
typedef int bm_status_t;  // 0 = success
#define BM_SUCCESS 0

struct bm_mem_desc {
  union {
    struct {
      unsigned long device_addr;
      unsigned int reserved;
      int dmabuf_fd;
    } device;
    struct {
      void* system_addr;
      unsigned int reserved0;
      int reserved1;
    } system;
  } u;
  unsigned int flags;
  unsigned int size;
};
typedef struct bm_mem_desc bm_device_mem_t;

bm_status_t bm_dev_request(bm_handle_t* handle, int devid);
void bm_dev_free(bm_handle_t handle);
bm_status_t bm_malloc_device_byte(bm_handle_t handle, bm_device_mem_t* pmem, unsigned int size);
void bm_free_device(bm_handle_t handle, bm_device_mem_t mem);
bm_status_t bm_memcpy_s2d(bm_handle_t handle, bm_device_mem_t dst, void* src);
bm_status_t bm_memcpy_d2s(bm_handle_t handle, void* dst, bm_device_mem_t src);
bm_status_t bm_memcpy_s2d_partial(bm_handle_t handle, bm_device_mem_t dst, void* src,
                                  unsigned int size);
bm_status_t bm_memcpy_d2s_partial(bm_handle_t handle, void* dst, bm_device_mem_t src,
                                  unsigned int size);
bm_status_t bm_memcpy_d2d_byte(bm_handle_t handle, bm_device_mem_t dst, size_t dst_offset,
                               bm_device_mem_t src, size_t src_offset, size_t size);
bm_status_t bm_memset_device_ext(bm_handle_t handle, void* value, int mode, bm_device_mem_t mem);
bm_status_t bm_thread_sync(bm_handle_t handle);
unsigned int bm_mem_get_device_size(bm_device_mem_t mem);
unsigned long long bm_mem_get_device_addr(bm_device_mem_t mem);
bm_device_mem_t bm_mem_from_device(unsigned long long device_addr, unsigned int len);

// heap statistics in bytes (memory_info.cpp)
typedef struct bm_heap_stat_byte {
  unsigned int heap_id;
  unsigned long long mem_total;
  unsigned long long mem_avail;
  unsigned long long mem_used;
  unsigned long long mem_start_addr;
} bm_heap_stat_byte_t;
bm_status_t bm_get_gmem_total_heap_num(bm_handle_t handle, unsigned int* heap_num);
bm_status_t bm_get_gmem_heap_stat_byte_by_id(bm_handle_t handle, bm_heap_stat_byte_t* pheap_byte,
                                             unsigned int heap_id);

// ---- bmruntime ------------------------------------------------------------------------
typedef enum bm_data_type_e {
  BM_FLOAT32 = 0,
  BM_FLOAT16 = 1,
  BM_INT8 = 2,
  BM_UINT8 = 3,
  BM_INT16 = 4,
  BM_UINT16 = 5,
  BM_INT32 = 6,
  BM_UINT32 = 7,
  BM_BFLOAT16 = 8,
} bm_data_type_t;

typedef enum bm_store_mode_e {
  BM_STORE_1N = 0,
  BM_STORE_2N = 1,
  BM_STORE_4N = 2,
} bm_store_mode_t;

#define BM_MAX_DIMS_NUM 8
typedef struct bm_shape_s {
  int num_dims;
  int dims[BM_MAX_DIMS_NUM];
} bm_shape_t;

typedef struct bm_tensor_s {
  bm_data_type_t dtype;
  bm_shape_t shape;
  bm_device_mem_t device_mem;
  bm_store_mode_t st_mode;
} bm_tensor_t;

typedef struct bm_stage_info_s {
  bm_shape_t* input_shapes;
  bm_shape_t* output_shapes;
  bm_device_mem_t* input_mems;
  bm_device_mem_t* output_mems;
} bm_stage_info_t;

// Only the leading fields are declared; newer runtimes append more, which is harmless
// because the runtime owns the struct and we only read through a pointer.
typedef struct bm_net_info_s {
  const char* name;
  bool is_dynamic;
  int input_num;
  char const** input_names;
  bm_data_type_t* input_dtypes;
  float* input_scales;
  int output_num;
  char const** output_names;
  bm_data_type_t* output_dtypes;
  float* output_scales;
  int stage_num;
  bm_stage_info_t* stages;
  size_t* max_input_bytes;
  size_t* max_output_bytes;
  int* input_zero_point;
  int* output_zero_point;
} bm_net_info_t;

// Runtime flags (bmrt_set_flags).  SHARE_MEM: the networks of one bmodel share one
// activation ("neuron") memory region instead of one each.
typedef enum bm_runtime_flag_e {
  BM_RUNTIME_AUTO = 0,
  BM_RUNTIME_SHARE_MEM = 1 << 0,
  BM_RUNTIME_CHECK_MEM = 1 << 1,
} bm_runtime_flag_t;

void* bmrt_create(bm_handle_t bm_handle);
void bmrt_set_flags(void* p_bmrt, unsigned int flags);
void bmrt_destroy(void* p_bmrt);
bool bmrt_load_bmodel(void* p_bmrt, const char* bmodel_path);
int bmrt_get_network_number(void* p_bmrt);
void bmrt_get_network_names(void* p_bmrt, const char*** network_names);
const bm_net_info_t* bmrt_get_network_info(void* p_bmrt, const char* net_name);
void bmrt_tensor_with_device(bm_tensor_t* tensor, bm_device_mem_t device_mem,
                             bm_data_type_t dtype, bm_shape_t shape);
size_t bmrt_tensor_bytesize(const bm_tensor_t* tensor);
bool bmrt_launch_tensor_ex(void* p_bmrt, const char* net_name, const bm_tensor_t input_tensors[],
                           int input_num, bm_tensor_t output_tensors[], int output_num,
                           bool user_mem, bool user_stmode);

}  // extern "C"
#endif
