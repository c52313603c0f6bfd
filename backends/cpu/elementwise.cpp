// copy (with f64/f32/bf16/f16 conversion and strided views), fill, add, swiglu (+ backward),
// sigmoid (+ backward), step, axpby. Elementwise ops compute in the dtype of their inputs (f32 or
// f64) and read rows as arrays (unit inner stride).
#include <cmath>
#include <cstring>

#include <Eigen/Core>

#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"
#include "rt/sdk/half.h"

namespace rt::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;  // elements below which threads cost more than they give

template <typename T>
using Row = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <typename T>
using CRow = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// n contiguous elements converted between float dtypes (not both equal).
void convert_row(const char* s, DType st, char* d, DType dt, int64_t n) {
  const size_t cnt = static_cast<size_t>(n);
  if (st == DType::F32) {
    if (dt == DType::F64)
      to_compute<double>(s, st, reinterpret_cast<double*>(d), cnt);
    else
      convert_from_f32(reinterpret_cast<const float*>(s), dt, d, cnt);
  } else if (dt == DType::F32) {
    to_compute<float>(s, st, reinterpret_cast<float*>(d), cnt);
  } else if (dt == DType::F64) {
    to_compute<double>(s, st, reinterpret_cast<double*>(d), cnt);
  } else {  // f64 -> 16-bit, bf16 <-> f16: through double (16-bit via f32)
    const size_t es = dtype_size(st), ed = dtype_size(dt);
    for (size_t i = 0; i < cnt; ++i) store_d(d + i * ed, dt, load_d(s + i * es, st));
  }
}

// Rows of one or more same-shaped views with unit inner stride: f(r, n) for every row r.
template <typename F>
void for_each_row(int64_t rows, int64_t n, int64_t par_min, F&& f) {
  if (rows * n == 0) return;
#pragma omp parallel for schedule(static) if (rows * n >= par_min && rows > 1)
  for (int64_t r = 0; r < rows; ++r) f(r, n);
}

template <typename T>
T* row_ptr(const TensorView& v, int64_t r) {
  return v.ptr<T>() + row_offset(v, r);
}

}  // namespace

void copy_forward(TensorView src, TensorView dst) {
  check_cpu("copy", "src", src);
  check_cpu("copy", "dst", dst);
  check_same_shape("copy", "src", src, "dst", dst);
  const bool same = src.dtype == dst.dtype;
  if (!same) {
    RT_CHECK(is_float_dtype(src.dtype) && is_float_dtype(dst.dtype), "copy: cannot convert ",
             dtype_name(src.dtype), " to ", dtype_name(dst.dtype),
             " (conversions are between f64, f32, bf16 and f16 only)");
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
      if (same)
        std::memmove(d, s, static_cast<size_t>(n) * es);
      else
        convert_row(s, src.dtype, d, dst.dtype, n);
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const char* si = s + i * ss * static_cast<int64_t>(es);
        char* di = d + i * ds * static_cast<int64_t>(ed);
        if (same)
          std::memcpy(di, si, es);
        else
          convert_row(si, src.dtype, di, dst.dtype, 1);
      }
    }
  }
}

void fill_forward(TensorView dst, float value) {
  check_cpu("fill", "dst", dst);
  RT_CHECK(is_float_dtype(dst.dtype) || dst.dtype == DType::I32, "fill: argument 'dst' must have dtype ",
           "f32, f64, bf16, f16 or i32, found ", dtype_name(dst.dtype));
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
  char pattern[8];
  if (dst.dtype == DType::I32)
    std::memcpy(pattern, &ival, 4);
  else
    store_d(pattern, dst.dtype, static_cast<double>(value));
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    char* d = elem_ptr(dst, row_offset(dst, r));
    if (dst.dtype == DType::F32 && (st == 1 || n == 1)) {
      Row<float>(reinterpret_cast<float*>(d), n).setConstant(value);
    } else if (dst.dtype == DType::F64 && (st == 1 || n == 1)) {
      Row<double>(reinterpret_cast<double*>(d), n).setConstant(static_cast<double>(value));
    } else {
      for (int64_t i = 0; i < n; ++i) std::memcpy(d + i * st * static_cast<int64_t>(es), pattern, es);
    }
  }
}

void add_forward(TensorView a, TensorView b, TensorView out) {
  check_elementwise("add", "a", a, "b", b, out);
  dispatch_compute(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    for_each_row(num_rows(a), row_len(a), kParallelMin, [&](int64_t r, int64_t n) {
      const T* pa = row_ptr<T>(a, r);
      const T* pb = row_ptr<T>(b, r);
      T* po = row_ptr<T>(out, r);
      for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];  // exact aliasing with a or b is fine
    });
  });
}

void swiglu_forward(TensorView gate, TensorView up, TensorView out) {
  check_elementwise("swiglu", "gate", gate, "up", up, out);
  dispatch_compute(gate.dtype, [&](auto tag) {
    using T = decltype(tag);
    for_each_row(num_rows(gate), row_len(gate), kParallelMin / 4, [&](int64_t r, int64_t n) {
      CRow<T> g(row_ptr<T>(gate, r), n);
      CRow<T> u(row_ptr<T>(up, r), n);
      Row<T> o(row_ptr<T>(out, r), n);
      // silu(g) = g / (1 + exp(-g)); evaluated element by element, so out may alias gate or up.
      o = g / (T(1) + (-g).exp()) * u;
    });
  });
}

// s = sigmoid(g), silu(g) = g s, silu'(g) = s (1 + g (1 - s)):
//   dgate = dout * up * silu'(gate),  dup = dout * silu(gate).
// Both are evaluated into per-row temporaries before either is written, so dgate may alias gate
// and dup may alias up (and each may alias dout).
void swiglu_backward(TensorView gate, TensorView up, TensorView dout, TensorView dgate, TensorView dup) {
  const char* op = "swiglu_backward";
  check_elementwise(op, "gate", gate, "up", up, "dout", dout);
  const bool want_dg = given(dgate), want_du = given(dup);
  if (want_dg) check_elementwise(op, "gate", gate, "dout", dout, "dgate", dgate);
  if (want_du) check_elementwise(op, "gate", gate, "dout", dout, "dup", dup);
  if (!want_dg && !want_du) return;
  if (want_dg && want_du)
    RT_CHECK(!views_overlap(dgate, dup), "swiglu_backward: outputs 'dgate' and 'dup' overlap");
  dispatch_compute(gate.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
    const int64_t rows = num_rows(gate), n = row_len(gate);
    if (rows * n == 0) return;
#pragma omp parallel if (rows * n >= kParallelMin / 4 && rows > 1)
    {
      Arr s(n), dg(n), du(n);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        CRow<T> g(row_ptr<T>(gate, r), n);
        CRow<T> u(row_ptr<T>(up, r), n);
        CRow<T> d(row_ptr<T>(dout, r), n);
        s = T(1) / (T(1) + (-g).exp());
        if (want_dg) dg = d * u * s * (T(1) + g * (T(1) - s));
        if (want_du) du = d * g * s;
        if (want_dg) Row<T>(row_ptr<T>(dgate, r), n) = dg;
        if (want_du) Row<T>(row_ptr<T>(dup, r), n) = du;
      }
    }
  });
}

void sigmoid_forward(TensorView x, float scale, TensorView y) {
  check_elementwise("sigmoid", "x", x, "y", y, "y", y);
  RT_CHECK(std::isfinite(scale), "sigmoid: scale must be finite, found ", scale);
  dispatch_compute(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T sc = static_cast<T>(scale);
    for_each_row(num_rows(x), row_len(x), kParallelMin / 4, [&](int64_t r, int64_t n) {
      Row<T>(row_ptr<T>(y, r), n) = T(1) / (T(1) + (-sc * CRow<T>(row_ptr<T>(x, r), n)).exp());
    });
  });
}

void sigmoid_backward(TensorView y, TensorView dy, float scale, TensorView dx) {
  check_elementwise("sigmoid_backward", "y", y, "dy", dy, "dx", dx);
  RT_CHECK(std::isfinite(scale), "sigmoid_backward: scale must be finite, found ", scale);
  dispatch_compute(y.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T sc = static_cast<T>(scale);
    for_each_row(num_rows(y), row_len(y), kParallelMin, [&](int64_t r, int64_t n) {
      CRow<T> yy(row_ptr<T>(y, r), n);
      Row<T>(row_ptr<T>(dx, r), n) = CRow<T>(row_ptr<T>(dy, r), n) * sc * yy * (T(1) - yy);
    });
  });
}

void step_forward(TensorView x, float threshold, TensorView y) {
  check_elementwise("step", "x", x, "y", y, "y", y);
  dispatch_compute(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T th = static_cast<T>(threshold);
    for_each_row(num_rows(x), row_len(x), kParallelMin, [&](int64_t r, int64_t n) {
      const T* px = row_ptr<T>(x, r);
      T* py = row_ptr<T>(y, r);
      for (int64_t i = 0; i < n; ++i) py[i] = px[i] >= th ? T(1) : T(0);
    });
  });
}

void axpby_forward(float alpha, TensorView x, float beta, TensorView y, TensorView out) {
  check_elementwise("axpby", "x", x, "y", y, out);
  dispatch_compute(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T a = static_cast<T>(alpha), b = static_cast<T>(beta);
    for_each_row(num_rows(x), row_len(x), kParallelMin, [&](int64_t r, int64_t n) {
      const T* px = row_ptr<T>(x, r);
      const T* py = row_ptr<T>(y, r);
      T* po = row_ptr<T>(out, r);
      for (int64_t i = 0; i < n; ++i) po[i] = a * px[i] + b * py[i];  // out may alias x or y
    });
  });
}

}  // namespace rt::cpu
