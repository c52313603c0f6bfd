// Error checks for the CUDA backend. Every CUDA runtime / cuBLASLt call goes through CUDA_CHECK or
// CUBLAS_CHECK, which throw rt::Error naming the call, file:line and the library's error string,
// so a failure is reported to the user instead of aborting or silently corrupting later work.
// The argument checks mirror backends/cpu/check.h (same message style, device cuda).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "common/check_args.h"
#include "rt/sdk/error.h"
#include "rt/sdk/tensor.h"

namespace rt::cuda {

[[noreturn]] inline void fail_cuda(cudaError_t e, const char* call, const char* file, int line) {
  fail("CUDA error in ", call, " at ", file, ":", line, ": ", cudaGetErrorName(e), " (",
       cudaGetErrorString(e), ")");
}
[[noreturn]] inline void fail_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  fail("cuBLASLt error in ", call, " at ", file, ":", line, ": ", cublasLtGetStatusName(s), " (",
       cublasLtGetStatusString(s), ")");
}

// Why a kernel of the current GPU cannot read `data`, an argument labelled cuda, or "" when it
// can: it is host memory (pinned or not), another GPU's, or not a pointer the driver knows.
// (Memory that a stream-ordered or graph allocation has not yet reached has no attributes to
// query: callers skip the check while capturing.)
inline std::string device_pointer_problem(const char* arg, const void* data) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, data);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("argument '") + arg + "': cannot query its pointer (" + cudaGetErrorString(err) +
           "); is it device memory?";
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    return std::string("argument '") + arg + "' is labelled cuda but points to " +
           (attr.type == cudaMemoryTypeHost ? "pinned host memory" : "host (unregistered) memory");
  if (attr.type == cudaMemoryTypeDevice) {
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess) {
      (void)cudaGetLastError();
      return "cudaGetDevice failed";
    }
    if (attr.device != cur)
      return std::string("argument '") + arg + "' lives on GPU " + std::to_string(attr.device) +
             " but the current device is GPU " + std::to_string(cur);
  }
  return {};
}

// Throws "op: <the problem>" for a tensor device_pointer_problem finds fault with.
inline void check_device_pointer(const char* op, const char* arg, const TensorView& v) {
  if (v.numel() == 0) return;
  if (const std::string e = device_pointer_problem(arg, v.data); !e.empty()) fail(op, ": ", e);
}

}  // namespace rt::cuda

#define CUDA_CHECK(call)                                                        \
  do {                                                                          \
    const cudaError_t rt_cuda_err_ = (call);                                    \
    if (rt_cuda_err_ != cudaSuccess) {                                          \
      (void)cudaGetLastError(); /* clear a non-sticky error before throwing */ \
      ::rt::cuda::fail_cuda(rt_cuda_err_, #call, __FILE__, __LINE__);           \
    }                                                                           \
  } while (0)

#define CUBLAS_CHECK(call)                                                 \
  do {                                                                     \
    const cublasStatus_t rt_cublas_st_ = (call);                           \
    if (rt_cublas_st_ != CUBLAS_STATUS_SUCCESS)                            \
      ::rt::cuda::fail_cublas(rt_cublas_st_, #call, __FILE__, __LINE__);   \
  } while (0)

// After a kernel launch: a bad configuration is reported here, asynchronous faults at the next
// synchronizing call.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaPeekAtLastError())

namespace rt::cuda {

// check_dtype, check_ndim, check_dim, same_shape, check_same_shape, check_unit_inner_stride,
// num_rows, row_len: common/check_args.h.
RT_USE_CHECK_ARGS();

inline bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

inline void check_view(const char* op, const char* arg, const TensorView& v) {
  RT_CHECK(v.ndim >= 0 && v.ndim <= TensorView::kMaxDims, op, ": argument '", arg,
           "' has an invalid number of dimensions ", v.ndim);
  for (int i = 0; i < v.ndim; ++i) {
    RT_CHECK(v.shape[i] >= 0, op, ": argument '", arg, "' has a negative dimension, shape ", v.shape_str());
    RT_CHECK(v.stride[i] >= 0, op, ": argument '", arg, "' has a negative stride, shape ", v.shape_str());
  }
  RT_CHECK(v.data != nullptr || v.numel() == 0, op, ": argument '", arg,
           "' has no data (null pointer) for shape ", v.shape_str());
}

inline void check_cuda(const char* op, const char* arg, const TensorView& v) {
  check_view(op, arg, v);
  RT_CHECK(v.device == Device::CUDA, op, ": argument '", arg, "' must be on device cuda, found ",
           device_name(v.device));
}

// f64 exists for the CPU backend's finite-difference gradient checks (make_cpu_ops(DType::F64));
// the CUDA backend computes in f32/bf16 and rejects it by name.
inline void check_not_f64(const char* op, const char* arg, const TensorView& v) {
  RT_CHECK(v.dtype != DType::F64, op, ": argument '", arg,
           "' has dtype f64, which the CUDA backend does not support (f64 is for CPU gradient checks, "
           "make_cpu_ops(DType::F64)); use f32 or bf16");
}

inline void check_float(const char* op, const char* arg, const TensorView& v) {
  check_not_f64(op, arg, v);
  RT_CHECK(is_float_dtype(v.dtype), op, ": argument '", arg,
           "' must have a float dtype (f32, bf16, f16), found ", dtype_name(v.dtype));
}

// An output passed as an empty view (data == nullptr) is not computed (frozen weights' gradients).
inline bool is_empty_output(const TensorView& v) { return v.data == nullptr; }

}  // namespace rt::cuda
