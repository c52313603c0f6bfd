// Argument checks shared by the CPU ops. Every failure names the op, the argument, what was
// expected and what was found.
#pragma once

#include <utility>

#include <cstdint>

#include "rt/sdk/error.h"
#include "rt/sdk/tensor.h"

namespace rt::cpu {

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

inline void check_dtype(const char* op, const char* arg, const TensorView& v, DType want) {
  RT_CHECK(v.dtype == want, op, ": argument '", arg, "' must have dtype ", dtype_name(want),
           ", found ", dtype_name(v.dtype));
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

inline void check_ndim(const char* op, const char* arg, const TensorView& v, int want) {
  RT_CHECK(v.ndim == want, op, ": argument '", arg, "' must have ", want, " dimensions, found shape ",
           v.shape_str());
}

inline void check_dim(const char* op, const char* arg, const TensorView& v, int dim, int64_t want,
                      const char* what) {
  RT_CHECK(v.shape[dim] == want, op, ": argument '", arg, "' dimension ", dim, " (", what,
           ") must be ", want, ", found shape ", v.shape_str());
}

inline bool same_shape(const TensorView& a, const TensorView& b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}

inline void check_same_shape(const char* op, const char* arg_a, const TensorView& a, const char* arg_b,
                             const TensorView& b) {
  RT_CHECK(same_shape(a, b), op, ": argument '", arg_b, "' must have the shape of '", arg_a, "' ",
           a.shape_str(), ", found ", b.shape_str());
}

// The last dimension is contiguous (stride 1), as every kernel here reads rows as arrays.
inline void check_unit_inner_stride(const char* op, const char* arg, const TensorView& v) {
  RT_CHECK(v.ndim == 0 || v.shape[v.ndim - 1] <= 1 || v.stride[v.ndim - 1] == 1, op, ": argument '",
           arg, "' must have a contiguous last dimension (stride 1), found stride ",
           v.stride[v.ndim - 1], " for shape ", v.shape_str());
}

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

// Number of rows of a view seen as [rows, last dim] (1 for a 0-d view).
inline int64_t num_rows(const TensorView& v) {
  int64_t n = 1;
  for (int i = 0; i + 1 < v.ndim; ++i) n *= v.shape[i];
  return v.ndim == 0 ? 1 : n;
}
inline int64_t row_len(const TensorView& v) { return v.ndim == 0 ? 1 : v.shape[v.ndim - 1]; }

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
