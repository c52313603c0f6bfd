// Scalar-type plumbing shared by the CPU kernels: the kernels are templates on their compute type
// T (float, or double for finite-difference gradient checks), dispatched on the dtype of their
// main argument; operands of other float dtypes (bf16/f16/f64 weights, ...) are converted to T.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/check.h"
#include "rt/sdk/half.h"

namespace rt::cpu {

template <typename T>
constexpr DType dtype_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  return std::is_same_v<T, float> ? DType::F32 : DType::F64;
}

// f(float{}) or f(double{}) for dtype f32 / f64 (the caller has checked it is one of them).
template <typename F>
decltype(auto) dispatch_compute(DType t, F&& f) {
  if (t == DType::F64) return f(double{});
  return f(float{});
}

// One element of any float dtype as double / stored from double (bf16/f16 through f32).
inline double load_d(const void* p, DType t) {
  switch (t) {
    case DType::F64: { double d; std::memcpy(&d, p, 8); return d; }
    case DType::F32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::BF16: { uint16_t h; std::memcpy(&h, p, 2); return bf16_to_f32(h); }
    case DType::F16: { uint16_t h; std::memcpy(&h, p, 2); return f16_to_f32(h); }
    default: return 0.0;
  }
}
inline void store_d(void* p, DType t, double v) {
  switch (t) {
    case DType::F64: std::memcpy(p, &v, 8); break;
    case DType::F32: { const float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
    case DType::BF16: { const uint16_t h = f32_to_bf16(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
    case DType::F16: { const uint16_t h = f32_to_f16(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
    default: break;
  }
}

// dst[i] = src[i] (n contiguous elements of float dtype t) as T.
template <typename T>
void to_compute(const void* src, DType t, T* dst, size_t n) {
  if (t == dtype_of<T>()) {
    if (n) std::memmove(dst, src, n * sizeof(T));
  } else if constexpr (std::is_same_v<T, float>) {
    if (t == DType::F64) {
      const double* s = static_cast<const double*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
    } else {
      convert_to_f32(src, t, dst, n);
    }
  } else {
    if (t == DType::F32) {
      const float* s = static_cast<const float*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = s[i];
    } else {
      const char* s = static_cast<const char*>(src);
      const size_t es = dtype_size(t);
      for (size_t i = 0; i < n; ++i) dst[i] = load_d(s + i * es, t);
    }
  }
}

// dst (n contiguous elements of float dtype t) = src, rounded to nearest even.
template <typename T>
void from_compute(const T* src, DType t, void* dst, size_t n) {
  if (t == dtype_of<T>()) {
    if (n) std::memmove(dst, src, n * sizeof(T));
  } else if constexpr (std::is_same_v<T, float>) {
    if (t == DType::F64) {
      double* d = static_cast<double*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = src[i];
    } else {
      convert_from_f32(src, t, dst, n);
    }
  } else {
    char* d = static_cast<char*>(dst);
    const size_t es = dtype_size(t);
    for (size_t i = 0; i < n; ++i) store_d(d + i * es, t, src[i]);
  }
}

// A 1-d view of any float dtype (any stride) as a contiguous std::vector<T>.
template <typename T>
std::vector<T> load_vector(const TensorView& v) {
  const int64_t n = v.ndim == 0 ? 1 : v.shape[0];
  std::vector<T> out(static_cast<size_t>(n));
  if (n == 0) return out;
  const int64_t st = v.ndim == 0 ? 1 : v.stride[0];
  if (st == 1 || n == 1) {
    to_compute<T>(v.data, v.dtype, out.data(), static_cast<size_t>(n));
  } else {
    const size_t es = dtype_size(v.dtype);
    for (int64_t i = 0; i < n; ++i)
      to_compute<T>(static_cast<const char*>(v.data) + i * st * static_cast<int64_t>(es), v.dtype,
                    &out[static_cast<size_t>(i)], 1);
  }
  return out;
}

}  // namespace rt::cpu
