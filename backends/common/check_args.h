// Argument checks that every compute backend makes the same way (backends/cpu/check.h and
// backends/cuda/check.h pull them into their namespaces; device and dtype rules stay there).
// Every failure names the op, the argument, what was expected and what was found.
#pragma once

#include <cstdint>

#include "rt/sdk/error.h"
#include "rt/sdk/tensor.h"

namespace rt::check_args {

inline void check_dtype(const char* op, const char* arg, const TensorView& v, DType want) {
  RT_CHECK(v.dtype == want, op, ": argument '", arg, "' must have dtype ", dtype_name(want), ", found ",
           dtype_name(v.dtype));
}

inline void check_ndim(const char* op, const char* arg, const TensorView& v, int want) {
  RT_CHECK(v.ndim == want, op, ": argument '", arg, "' must have ", want, " dimensions, found shape ",
           v.shape_str());
}

inline void check_dim(const char* op, const char* arg, const TensorView& v, int dim, int64_t want,
                      const char* what) {
  RT_CHECK(v.shape[dim] == want, op, ": argument '", arg, "' dimension ", dim, " (", what, ") must be ", want,
           ", found shape ", v.shape_str());
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

// The last dimension is contiguous (stride 1): kernels read rows as arrays.
inline void check_unit_inner_stride(const char* op, const char* arg, const TensorView& v) {
  RT_CHECK(v.ndim == 0 || v.shape[v.ndim - 1] <= 1 || v.stride[v.ndim - 1] == 1, op, ": argument '", arg,
           "' must have a contiguous last dimension (stride 1), found stride ", v.stride[v.ndim - 1],
           " for shape ", v.shape_str());
}

// Number of rows of a view seen as [rows, last dim] (1 for a 0-d view).
inline int64_t num_rows(const TensorView& v) {
  int64_t n = 1;
  for (int i = 0; i + 1 < v.ndim; ++i) n *= v.shape[i];
  return n;
}
inline int64_t row_len(const TensorView& v) { return v.ndim == 0 ? 1 : v.shape[v.ndim - 1]; }

}  // namespace rt::check_args

// Brings the shared checks into a backend's namespace: RT_USE_CHECK_ARGS() inside namespace rt::x.
#define RT_USE_CHECK_ARGS()                  \
  using ::rt::check_args::check_dtype;       \
  using ::rt::check_args::check_ndim;        \
  using ::rt::check_args::check_dim;         \
  using ::rt::check_args::same_shape;        \
  using ::rt::check_args::check_same_shape;  \
  using ::rt::check_args::check_unit_inner_stride; \
  using ::rt::check_args::num_rows;          \
  using ::rt::check_args::row_len
