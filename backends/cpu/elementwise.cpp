// copy (with f32/bf16/f16 conversion and strided views), fill, add, swiglu.
#include <cmath>
#include <cstring>

#include <Eigen/Core>

#include "cpu/check.h"
#include "cpu/kernels.h"
#include "rt/sdk/half.h"

namespace rt::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;  // elements below which threads cost more than they give

inline float load_f(const char* p, DType t) {
  switch (t) {
    case DType::BF16: { uint16_t h; std::memcpy(&h, p, 2); return bf16_to_f32(h); }
    case DType::F16: { uint16_t h; std::memcpy(&h, p, 2); return f16_to_f32(h); }
    default: { float f; std::memcpy(&f, p, 4); return f; }
  }
}
inline void store_f(char* p, DType t, float f) {
  switch (t) {
    case DType::BF16: { uint16_t h = f32_to_bf16(f); std::memcpy(p, &h, 2); break; }
    case DType::F16: { uint16_t h = f32_to_f16(f); std::memcpy(p, &h, 2); break; }
    default: std::memcpy(p, &f, 4); break;
  }
}

using RowF = Eigen::Map<Eigen::ArrayXf>;
using CRowF = Eigen::Map<const Eigen::ArrayXf>;

}  // namespace

void copy_forward(TensorView src, TensorView dst) {
  check_cpu("copy", "src", src);
  check_cpu("copy", "dst", dst);
  check_same_shape("copy", "src", src, "dst", dst);
  const bool same = src.dtype == dst.dtype;
  if (!same) {
    RT_CHECK(is_float_dtype(src.dtype) && is_float_dtype(dst.dtype), "copy: cannot convert ",
             dtype_name(src.dtype), " to ", dtype_name(dst.dtype),
             " (conversions are between f32, bf16 and f16 only)");
  }
  const int64_t rows = num_rows(src), n = row_len(src);
  if (rows * n == 0) return;
  const int64_t ss = src.ndim ? src.stride[src.ndim - 1] : 1;
  const int64_t ds = dst.ndim ? dst.stride[dst.ndim - 1] : 1;
  const bool unit = (ss == 1 || n == 1) && (ds == 1 || n == 1);
  const size_t es = dtype_size(src.dtype), ed = dtype_size(dst.dtype);
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const char* s = elem_ptr(src, row_offset(src, r));
    char* d = elem_ptr(dst, row_offset(dst, r));
    if (unit) {
      if (same) {
        std::memmove(d, s, static_cast<size_t>(n) * es);
      } else if (src.dtype == DType::F32) {
        convert_from_f32(reinterpret_cast<const float*>(s), dst.dtype, d, static_cast<size_t>(n));
      } else if (dst.dtype == DType::F32) {
        convert_to_f32(s, src.dtype, reinterpret_cast<float*>(d), static_cast<size_t>(n));
      } else {  // bf16 <-> f16 through f32
        for (int64_t i = 0; i < n; ++i) store_f(d + i * ed, dst.dtype, load_f(s + i * es, src.dtype));
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const char* si = s + i * ss * static_cast<int64_t>(es);
        char* di = d + i * ds * static_cast<int64_t>(ed);
        if (same)
          std::memcpy(di, si, es);
        else
          store_f(di, dst.dtype, load_f(si, src.dtype));
      }
    }
  }
}

void fill_forward(TensorView dst, float value) {
  check_cpu("fill", "dst", dst);
  RT_CHECK(is_float_dtype(dst.dtype) || dst.dtype == DType::I32, "fill: argument 'dst' must have dtype ",
           "f32, bf16, f16 or i32, found ", dtype_name(dst.dtype));
  int32_t ival = 0;
  if (dst.dtype == DType::I32) {
    RT_CHECK(std::isfinite(value) && value == std::nearbyint(value) && std::fabs(value) <= 2147483520.f,
             "fill: value ", value, " is not an integer representable as i32 (dst dtype i32)");
    ival = static_cast<int32_t>(value);
  }
  const int64_t rows = num_rows(dst), n = row_len(dst);
  if (rows * n == 0) return;
  const int64_t st = dst.ndim ? dst.stride[dst.ndim - 1] : 1;
  const size_t es = dtype_size(dst.dtype);
  // The element's bytes, converted once.
  char pattern[4];
  if (dst.dtype == DType::I32)
    std::memcpy(pattern, &ival, 4);
  else
    store_f(pattern, dst.dtype, value);
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    char* d = elem_ptr(dst, row_offset(dst, r));
    if (dst.dtype == DType::F32 && (st == 1 || n == 1)) {
      RowF(reinterpret_cast<float*>(d), n).setConstant(value);
    } else {
      for (int64_t i = 0; i < n; ++i) std::memcpy(d + i * st * static_cast<int64_t>(es), pattern, es);
    }
  }
}

void add_forward(TensorView a, TensorView b, TensorView out) {
  check_elementwise_f32("add", "a", a, "b", b, out);
  const int64_t rows = num_rows(a), n = row_len(a);
  if (rows * n == 0) return;
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* pa = a.ptr<float>() + row_offset(a, r);
    const float* pb = b.ptr<float>() + row_offset(b, r);
    float* po = out.ptr<float>() + row_offset(out, r);
    for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];  // exact aliasing with a or b is fine
  }
}

void swiglu_forward(TensorView gate, TensorView up, TensorView out) {
  check_elementwise_f32("swiglu", "gate", gate, "up", up, out);
  const int64_t rows = num_rows(gate), n = row_len(gate);
  if (rows * n == 0) return;
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin / 4 && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    CRowF g(gate.ptr<float>() + row_offset(gate, r), n);
    CRowF u(up.ptr<float>() + row_offset(up, r), n);
    RowF o(out.ptr<float>() + row_offset(out, r), n);
    // silu(g) = g / (1 + exp(-g)); evaluated element by element, so out may alias gate or up.
    o = g / (1.f + (-g).exp()) * u;
  }
}

}  // namespace rt::cpu
