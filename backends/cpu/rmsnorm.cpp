// rmsnorm: y = w * (x / sqrt(mean(x^2) + eps)), row-wise over the last dimension, in x's dtype
// (f32, or f64). Same order of operations as Hugging Face Qwen2RMSNorm: normalize, then scale by w.
//
// Backward, per row with r = 1 / sqrt(mean(x^2) + eps) and g = w * dy:
//   dx += r g - x r^3 (g . x) / d,     dw += dy * x * r  (summed over rows)
#include <algorithm>
#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"
#include "rt/sdk/half.h"

namespace rt::cpu {
namespace {

template <typename T>
using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
template <typename T>
using CRow = Eigen::Map<const Arr<T>>;
template <typename T>
using Row = Eigen::Map<Arr<T>>;

void check_weight(const char* op, const TensorView& w, int64_t d) {
  check_cpu(op, "w", w);
  check_float(op, "w", w);
  RT_CHECK(w.ndim == 1 && w.shape[0] == d, op, ": argument 'w' must have shape [", d,
           "] (the last dimension of x), found ", w.shape_str());
}

template <typename T>
void rmsnorm_forward_impl(TensorView x, TensorView w, float eps, TensorView y) {
  const int64_t d = row_len(x), rows = num_rows(x);
  const std::vector<T> wv = load_vector<T>(w);
  const Eigen::Map<const Arr<T>> W(wv.data(), d);
  const T e = static_cast<T>(eps);
#pragma omp parallel for schedule(static) if (rows * d >= (1 << 15) && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    CRow<T> X(x.ptr<T>() + row_offset(x, r), d);
    Row<T> Y(y.ptr<T>() + row_offset(y, r), d);
    const T ms = X.square().sum() / static_cast<T>(d);
    const T inv = T(1) / std::sqrt(ms + e);
    Y = (X * inv) * W;  // reads X[i] before writing Y[i]: y may alias x
  }
}

// Rows in fixed blocks: each block's dw partial is summed in block order (deterministic whatever
// the thread count).
template <typename T>
void rmsnorm_backward_impl(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx, TensorView dw) {
  const int64_t d = row_len(x), rows = num_rows(x);
  const bool want_dx = given(dx), want_dw = given(dw);
  const std::vector<T> wv = load_vector<T>(w);
  const Eigen::Map<const Arr<T>> W(wv.data(), d);
  const T e = static_cast<T>(eps);
  constexpr int64_t kBlockRows = 32;
  const int64_t nblocks = (rows + kBlockRows - 1) / kBlockRows;
  std::vector<T> partial(want_dw ? static_cast<size_t>(nblocks * d) : 0, T(0));
#pragma omp parallel if (rows * d >= (1 << 14) && nblocks > 1)
  {
    Arr<T> g(d), t(d);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      for (int64_t r = blk * kBlockRows; r < std::min(rows, (blk + 1) * kBlockRows); ++r) {
        CRow<T> X(x.ptr<T>() + row_offset(x, r), d);
        CRow<T> dY(dy.ptr<T>() + row_offset(dy, r), d);
        const T ms = X.square().sum() / static_cast<T>(d);
        const T inv = T(1) / std::sqrt(ms + e);
        if (want_dw) Row<T>(partial.data() + blk * d, d) += dY * X * inv;
        if (want_dx) {
          g = W * dY;
          const T c = (g * X).sum() * inv * inv * inv / static_cast<T>(d);
          t = g * inv - X * c;  // complete before dx is written (dx may alias dy)
          Row<T>(dx.ptr<T>() + row_offset(dx, r), d) += t;
        }
      }
    }
  }
  if (want_dw) {
    T* dwp = dw.ptr<T>();
    const int64_t ds = dw.stride[0];
    for (int64_t blk = 0; blk < nblocks; ++blk)
      for (int64_t i = 0; i < d; ++i) dwp[i * ds] += partial[static_cast<size_t>(blk * d + i)];
  }
}

}  // namespace

void rmsnorm_forward(TensorView x, TensorView w, float eps, TensorView y) {
  const char* op = "rmsnorm";
  check_cpu(op, "x", x);
  check_cpu(op, "y", y);
  check_compute(op, "x", x);
  check_dtype_as(op, "y", y, "x", x.dtype);
  RT_CHECK(x.ndim >= 1, "rmsnorm: argument 'x' must have at least 1 dimension, found shape ", x.shape_str());
  check_same_shape(op, "x", x, "y", y);
  const int64_t d = row_len(x), rows = num_rows(x);
  check_weight(op, w, d);
  RT_CHECK(std::isfinite(eps) && eps >= 0.f, "rmsnorm: eps must be finite and >= 0, found ", eps);
  check_unit_inner_stride(op, "x", x);
  check_unit_inner_stride(op, "y", y);
  if (rows == 0 || d == 0) return;
  dispatch_compute(x.dtype, [&](auto tag) { rmsnorm_forward_impl<decltype(tag)>(x, w, eps, y); });
}

void rmsnorm_backward(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx, TensorView dw) {
  const char* op = "rmsnorm_backward";
  check_cpu(op, "x", x);
  check_cpu(op, "dy", dy);
  check_compute(op, "x", x);
  check_dtype_as(op, "dy", dy, "x", x.dtype);
  RT_CHECK(x.ndim >= 1, "rmsnorm_backward: argument 'x' must have at least 1 dimension, found shape ",
           x.shape_str());
  check_same_shape(op, "x", x, "dy", dy);
  const int64_t d = row_len(x), rows = num_rows(x);
  check_weight(op, w, d);
  RT_CHECK(std::isfinite(eps) && eps >= 0.f, "rmsnorm_backward: eps must be finite and >= 0, found ", eps);
  check_unit_inner_stride(op, "x", x);
  check_unit_inner_stride(op, "dy", dy);
  if (given(dx)) {
    check_cpu(op, "dx", dx);
    check_dtype_as(op, "dx", dx, "x", x.dtype);
    check_same_shape(op, "x", x, "dx", dx);
    check_unit_inner_stride(op, "dx", dx);
    RT_CHECK(!views_overlap(dx, x) && !views_overlap(dx, w), "rmsnorm_backward: output 'dx' overlaps 'x' or 'w'");
  }
  if (given(dw)) {
    check_cpu(op, "dw", dw);
    check_dtype_as(op, "dw", dw, "x", x.dtype);
    RT_CHECK(dw.ndim == 1 && dw.shape[0] == d, "rmsnorm_backward: argument 'dw' must have shape [", d,
             "] (the last dimension of x), found ", dw.shape_str());
    const std::pair<const char*, const TensorView*> ins[] = {{"x", &x}, {"dy", &dy}, {"dx", &dx}};
    for (const auto& [name, v] : ins)
      RT_CHECK(!given(*v) || !views_overlap(dw, *v), "rmsnorm_backward: output 'dw' overlaps '", name, "'");
  }
  if (rows == 0 || d == 0 || (!given(dx) && !given(dw))) return;
  dispatch_compute(x.dtype, [&](auto tag) { rmsnorm_backward_impl<decltype(tag)>(x, w, eps, dy, dx, dw); });
}

}  // namespace rt::cpu
