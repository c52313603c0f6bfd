// Argument checks shared by the CPU ops. Every failure names the op, the argument, what was
// expected and what was found.
#pragma once

#include <utility>

#include <cstdint>

#include "common/check_args.h"
#include "rt/sdk/error.h"
#include "rt/sdk/tensor.h"

namespace rt::cpu {

// check_dtype, check_ndim, check_dim, same_shape, check_same_shape, check_unit_inner_stride,
// num_rows, row_len: common/check_args.h.
RT_USE_CHECK_ARGS();

inline void check_cpu(const char* op, const char* arg, const TensorView& v) {
  RT_CHECK(v.device == Device::CPU, op, ": argument '", arg, "' must be on device cpu, found ",
           device_name(v.device));
  RT_CHECK(v.ndim >= 0 && v.ndim <= TensorView::kMaxDims, op, ": argument '", arg,
           "' has an invalid number of dimensions ", v.ndim);
  for (int i = 0; i < v.ndim; ++i)
    RT_CHECK(v.shape[i] >= 0, op, ": argument '", arg, "' has a negative dimension, shape ",
             v.shape_str());
  RT_CHECK(v.data != nullptr || v.numel() == 0, op, ": argument '", arg,
           "' has no data (null pointer) for shape ", v.shape_str());
}

inline bool is_float_dtype(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64;
}
// The dtypes the CPU kernels compute in: f32, or f64 for finite-difference gradient checks.
inline bool is_compute_dtype(DType t) { return t == DType::F32 || t == DType::F64; }

inline void check_float(const char* op, const char* arg, const TensorView& v) {
  RT_CHECK(is_float_dtype(v.dtype), op, ": argument '", arg,
           "' must have a float dtype (f32, bf16, f16, f64), found ", dtype_name(v.dtype));
}

// f32 or f64 (the dtype a kernel computes in).
inline void check_compute(const char* op, const char* arg, const TensorView& v) {
  RT_CHECK(is_compute_dtype(v.dtype), op, ": argument '", arg, "' must have dtype f32 or f64, found ",
           dtype_name(v.dtype));
}

// v has the dtype of another argument (one compute dtype per call).
inline void check_dtype_as(const char* op, const char* arg, const TensorView& v, const char* ref_arg,
                           DType want) {
  RT_CHECK(v.dtype == want, op, ": argument '", arg, "' must have dtype ", dtype_name(want), " (the dtype of '",
           ref_arg, "'), found ", dtype_name(v.dtype));
}

// An optional output: an empty view (data == nullptr) means "not computed".
inline bool given(const TensorView& v) { return v.data != nullptr; }

// The checks every binary elementwise op makes: all on the CPU, one compute dtype (f32 or f64,
// that of a), one shape, rows with unit inner stride.
inline void check_elementwise(const char* op, const char* a_name, const TensorView& a, const char* b_name,
                              const TensorView& b, const char* out_name, const TensorView& out) {
  const std::pair<const char*, const TensorView*> args[] = {{a_name, &a}, {b_name, &b}, {out_name, &out}};
  for (const auto& [name, v] : args) check_cpu(op, name, *v);
  check_compute(op, a_name, a);
  for (const auto& [name, v] : args) check_dtype_as(op, name, *v, a_name, a.dtype);
  check_same_shape(op, a_name, a, b_name, b);
  check_same_shape(op, a_name, a, out_name, out);
  for (const auto& [name, v] : args) check_unit_inner_stride(op, name, *v);
}
inline void check_elementwise(const char* op, const char* a_name, const TensorView& a, const char* b_name,
                              const TensorView& b, const TensorView& out) {
  check_elementwise(op, a_name, a, b_name, b, "out", out);
}

// Element offset of row r (rows in row-major order over all dimensions but the last).
inline int64_t row_offset(const TensorView& v, int64_t r) {
  int64_t off = 0;
  for (int i = v.ndim - 2; i >= 0; --i) {
    const int64_t n = v.shape[i];
    off += (r % n) * v.stride[i];
    r /= n;
  }
  return off;
}

inline char* elem_ptr(const TensorView& v, int64_t elem_offset) {
  return static_cast<char*>(v.data) + elem_offset * static_cast<int64_t>(dtype_size(v.dtype));
}

}  // namespace rt::cpu
