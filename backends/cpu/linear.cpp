// linear: y = x W^T (+ b) with Eigen's GEMM/GEMV, and its backward. W is [out, in] (nn.Linear
// layout), of x's dtype (f32, or f64) normally; weights of another float dtype (bf16/f16/f32/f64)
// are converted block by block into a per-thread buffer.
//
// Threads: the output features (or, for a tall x and few features, the rows of x) are split
// into one contiguous slab per OpenMP thread, and each thread runs a single-threaded Eigen
// product on its slab (Eigen does not nest threads inside an OpenMP region). For decode (N = 1)
// this is a GEMV split across cores, which is what the memory-bound lm_head needs.
#include <omp.h>

#include <algorithm>
#include <vector>

#include <Eigen/Core>

#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"
#include "rt/sdk/half.h"

namespace rt::cpu {
namespace {

template <typename T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using CMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using MMap = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using CVec = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;

constexpr int64_t kConvRows = 256;  // rows of a non-native W converted at a time

// Outer stride of a 2-d view usable by Eigen (any value >= 1 when there is a single row).
int64_t outer(const TensorView& v, int64_t cols) {
  return std::max<int64_t>(v.shape[0] > 1 ? v.stride[0] : cols, 1);
}

// Threads for a product of N x out x in multiply-adds.
int threads_for(double work) {
  const int max_threads = omp_get_max_threads();
  return (max_threads > 1 && work >= 1 << 18) ? max_threads : 1;
}

// [lo, hi) of total for thread tid of nth, rounded to multiples of align.
std::pair<int64_t, int64_t> slab(int64_t total, int tid, int nth, int64_t align) {
  int64_t per = (total + nth - 1) / nth;
  per = (per + align - 1) / align * align;
  const int64_t lo = std::min<int64_t>(total, tid * per), hi = std::min<int64_t>(total, lo + per);
  return {lo, hi};
}

template <typename T>
void linear_forward_impl(TensorView x, TensorView w, TensorView bias, TensorView y) {
  const int64_t N = x.shape[0], in = x.shape[1], out = w.shape[0];
  // Bias as T (converted once when stored in another dtype or strided).
  std::vector<T> bias_t;
  const T* b = nullptr;
  if (given(bias)) {
    if (bias.dtype == dtype_of<T>() && (bias.stride[0] == 1 || out == 1)) {
      b = bias.ptr<T>();
    } else {
      bias_t = load_vector<T>(bias);
      b = bias_t.data();
    }
  }

  CMap<T> X(x.ptr<T>(), N, in, Eigen::OuterStride<>(outer(x, in)));
  MMap<T> Y(y.ptr<T>(), N, out, Eigen::OuterStride<>(outer(y, out)));
  const int64_t ws = outer(w, in);
  const bool w_native = w.dtype == dtype_of<T>();

  const int nt = threads_for(static_cast<double>(N) * static_cast<double>(out) *
                             static_cast<double>(std::max<int64_t>(in, 1)));
  // Split the output features unless x is tall and W narrow; converted weights always split by
  // features so that each weight row is converted once.
  const bool split_out = !w_native || out >= N || out >= 64 * static_cast<int64_t>(nt);

#pragma omp parallel num_threads(nt)
  {
    const auto [lo, hi] = slab(split_out ? out : N, omp_get_thread_num(), omp_get_num_threads(), split_out ? 16 : 1);
    if (lo < hi) {
      if (w_native) {
        CMap<T> W(w.ptr<T>(), out, in, Eigen::OuterStride<>(ws));
        if (split_out)
          Y.middleCols(lo, hi - lo).noalias() = X * W.middleRows(lo, hi - lo).transpose();
        else
          Y.middleRows(lo, hi - lo).noalias() = X.middleRows(lo, hi - lo) * W.transpose();
      } else {
        RowMat<T> Wc(std::min<int64_t>(kConvRows, hi - lo), in);
        const size_t es = dtype_size(w.dtype);
        for (int64_t o0 = lo; o0 < hi; o0 += kConvRows) {
          const int64_t n = std::min<int64_t>(kConvRows, hi - o0);
          for (int64_t r = 0; r < n; ++r)
            to_compute<T>(static_cast<const char*>(w.data) + (o0 + r) * ws * static_cast<int64_t>(es), w.dtype,
                          Wc.data() + r * in, static_cast<size_t>(in));
          Y.middleCols(o0, n).noalias() = X * Wc.topRows(n).transpose();
        }
      }
      if (b) {
        if (split_out)
          Y.middleCols(lo, hi - lo).rowwise() += CVec<T>(b + lo, hi - lo);
        else
          Y.middleRows(lo, hi - lo).rowwise() += CVec<T>(b, out);
      }
    }
  }
}

// dx (= or +=) dy W: threads split the rows of dy (or, for few rows, the columns of dx).
// dw += dy^T x and db += column sums of dy: threads split the output features.
template <typename T>
void linear_backward_impl(TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw, TensorView db,
                          bool accumulate_dx) {
  const int64_t N = x.shape[0], in = x.shape[1], out = w.shape[0];
  const bool want_dx = given(dx), want_dw = given(dw), want_db = given(db);
  CMap<T> X(x.ptr<T>(), N, in, Eigen::OuterStride<>(outer(x, in)));
  CMap<T> dY(dy.ptr<T>(), N, out, Eigen::OuterStride<>(outer(dy, out)));

  // W as T: mapped when native, else converted once (in parallel) for the dx product.
  RowMat<T> Wc;
  const T* wp = nullptr;
  int64_t ws = outer(w, in);
  if (want_dx) {
    if (w.dtype == dtype_of<T>()) {
      wp = w.ptr<T>();
    } else {
      Wc.resize(out, in);
      const size_t es = dtype_size(w.dtype);
#pragma omp parallel for schedule(static) if (out * in >= (1 << 16))
      for (int64_t r = 0; r < out; ++r)
        to_compute<T>(static_cast<const char*>(w.data) + r * ws * static_cast<int64_t>(es), w.dtype,
                      Wc.data() + r * in, static_cast<size_t>(in));
      wp = Wc.data();
      ws = std::max<int64_t>(in, 1);
    }
  }

  const int nt = threads_for(static_cast<double>(N) * static_cast<double>(out) *
                             static_cast<double>(std::max<int64_t>(in, 1)));
  const bool dx_split_rows = N >= 4 * static_cast<int64_t>(nt);
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    if (want_dx) {
      CMap<T> W(wp, out, in, Eigen::OuterStride<>(ws));
      MMap<T> dX(dx.ptr<T>(), N, in, Eigen::OuterStride<>(outer(dx, in)));
      if (dx_split_rows) {
        const auto [lo, hi] = slab(N, tid, nth, 1);
        if (lo < hi) {
          if (accumulate_dx)
            dX.middleRows(lo, hi - lo).noalias() += dY.middleRows(lo, hi - lo) * W;
          else
            dX.middleRows(lo, hi - lo).noalias() = dY.middleRows(lo, hi - lo) * W;
        }
      } else {
        const auto [lo, hi] = slab(in, tid, nth, 16);
        if (lo < hi) {
          if (accumulate_dx)
            dX.middleCols(lo, hi - lo).noalias() += dY * W.middleCols(lo, hi - lo);
          else
            dX.middleCols(lo, hi - lo).noalias() = dY * W.middleCols(lo, hi - lo);
        }
      }
    }
    if (want_dw || want_db) {
      const auto [lo, hi] = slab(out, tid, nth, 16);
      if (lo < hi) {
        if (want_dw) {
          MMap<T> dW(dw.ptr<T>(), out, in, Eigen::OuterStride<>(outer(dw, in)));
          dW.middleRows(lo, hi - lo).noalias() += dY.middleCols(lo, hi - lo).transpose() * X;
        }
        if (want_db) {
          T* bp = db.ptr<T>();
          const int64_t bs = db.stride[0];
          const Eigen::Matrix<T, 1, Eigen::Dynamic> sums = dY.middleCols(lo, hi - lo).colwise().sum();
          for (int64_t o = lo; o < hi; ++o) bp[o * bs] += sums(o - lo);
        }
      }
    }
  }
}

}  // namespace

void linear_forward(TensorView x, TensorView w, TensorView bias, TensorView y) {
  const char* op = "linear";
  check_cpu(op, "x", x);
  check_cpu(op, "w", w);
  check_cpu(op, "y", y);
  check_compute(op, "x", x);
  check_float(op, "w", w);
  check_dtype_as(op, "y", y, "x", x.dtype);
  check_ndim(op, "x", x, 2);
  check_ndim(op, "w", w, 2);
  check_ndim(op, "y", y, 2);
  const int64_t N = x.shape[0], in = x.shape[1], out = w.shape[0];
  check_dim(op, "w", w, 1, in, "in features, x.shape[1]");
  check_dim(op, "y", y, 0, N, "rows, x.shape[0]");
  check_dim(op, "y", y, 1, out, "out features, w.shape[0]");
  if (given(bias)) {
    check_cpu(op, "bias", bias);
    check_float(op, "bias", bias);
    RT_CHECK(bias.ndim == 1 && bias.shape[0] == out, "linear: argument 'bias' must have shape [", out,
             "] (out features, w.shape[0]), found ", bias.shape_str());
  }
  check_unit_inner_stride(op, "x", x);
  check_unit_inner_stride(op, "w", w);
  check_unit_inner_stride(op, "y", y);
  RT_CHECK(!views_overlap(y, x), "linear: output 'y' overlaps input 'x' (in-place linear is not supported)");
  RT_CHECK(!views_overlap(y, w), "linear: output 'y' overlaps weight 'w'");
  if (N == 0 || out == 0) return;
  dispatch_compute(x.dtype, [&](auto tag) { linear_forward_impl<decltype(tag)>(x, w, bias, y); });
}

void linear_backward(TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw, TensorView db,
                     bool accumulate_dx) {
  const char* op = "linear_backward";
  check_cpu(op, "x", x);
  check_cpu(op, "w", w);
  check_cpu(op, "dy", dy);
  check_compute(op, "x", x);
  check_float(op, "w", w);
  check_dtype_as(op, "dy", dy, "x", x.dtype);
  check_ndim(op, "x", x, 2);
  check_ndim(op, "w", w, 2);
  check_ndim(op, "dy", dy, 2);
  const int64_t N = x.shape[0], in = x.shape[1], out = w.shape[0];
  check_dim(op, "w", w, 1, in, "in features, x.shape[1]");
  check_dim(op, "dy", dy, 0, N, "rows, x.shape[0]");
  check_dim(op, "dy", dy, 1, out, "out features, w.shape[0]");
  check_unit_inner_stride(op, "x", x);
  check_unit_inner_stride(op, "w", w);
  check_unit_inner_stride(op, "dy", dy);
  const std::pair<const char*, const TensorView*> outs[] = {{"dx", &dx}, {"dw", &dw}, {"db", &db}};
  const std::pair<const char*, const TensorView*> ins[] = {{"x", &x}, {"w", &w}, {"dy", &dy}};
  for (const auto& [name, v] : outs) {
    if (!given(*v)) continue;
    check_cpu(op, name, *v);
    check_dtype_as(op, name, *v, "x", x.dtype);
    check_unit_inner_stride(op, name, *v);
    for (const auto& [iname, iv] : ins)
      RT_CHECK(!views_overlap(*v, *iv), "linear_backward: output '", name, "' overlaps input '", iname, "'");
    for (const auto& [name2, v2] : outs)
      RT_CHECK(v == v2 || !given(*v2) || !views_overlap(*v, *v2), "linear_backward: outputs '", name, "' and '",
               name2, "' overlap");
  }
  if (given(dx)) {
    check_ndim(op, "dx", dx, 2);
    check_same_shape(op, "x", x, "dx", dx);
  }
  if (given(dw)) {
    check_ndim(op, "dw", dw, 2);
    check_same_shape(op, "w", w, "dw", dw);
  }
  if (given(db))
    RT_CHECK(db.ndim == 1 && db.shape[0] == out, "linear_backward: argument 'db' must have shape [", out,
             "] (out features, w.shape[0]), found ", db.shape_str());
  if (N == 0 || out == 0) {  // nothing to add; dy W over zero features is zeros
    if (given(dx) && !accumulate_dx) fill_forward(dx, 0.f);
    return;
  }
  dispatch_compute(x.dtype, [&](auto tag) { linear_backward_impl<decltype(tag)>(x, w, dy, dx, dw, db, accumulate_dx); });
}

}  // namespace rt::cpu
