// linear: y = x W^T (+ b) with Eigen's GEMM/GEMV. W is [out, in] (nn.Linear layout), f32 normally;
// bf16/f16 weights are converted block by block into a per-thread f32 buffer.
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
#include "cpu/kernels.h"
#include "rt/sdk/half.h"

namespace rt::cpu {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
using MMap = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
using CVec = Eigen::Map<const Eigen::RowVectorXf>;

constexpr int64_t kConvRows = 256;  // rows of a 16-bit W converted at a time

}  // namespace

void linear_forward(TensorView x, TensorView w, TensorView bias, TensorView y) {
  const char* op = "linear";
  check_cpu(op, "x", x);
  check_cpu(op, "w", w);
  check_cpu(op, "y", y);
  check_dtype(op, "x", x, DType::F32);
  check_float(op, "w", w);
  check_dtype(op, "y", y, DType::F32);
  check_ndim(op, "x", x, 2);
  check_ndim(op, "w", w, 2);
  check_ndim(op, "y", y, 2);
  const int64_t N = x.shape[0], in = x.shape[1], out = w.shape[0];
  check_dim(op, "w", w, 1, in, "in features, x.shape[1]");
  check_dim(op, "y", y, 0, N, "rows, x.shape[0]");
  check_dim(op, "y", y, 1, out, "out features, w.shape[0]");
  const bool has_bias = bias.data != nullptr;
  if (has_bias) {
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

  // Bias as f32 (converted once when stored as bf16/f16 or strided).
  std::vector<float> bias_f;
  const float* b = nullptr;
  if (has_bias) {
    if (bias.dtype == DType::F32 && (bias.stride[0] == 1 || out == 1)) {
      b = bias.ptr<float>();
    } else {
      bias_f.resize(static_cast<size_t>(out));
      const size_t es = dtype_size(bias.dtype);
      for (int64_t i = 0; i < out; ++i)
        convert_to_f32(static_cast<const char*>(bias.data) + i * bias.stride[0] * static_cast<int64_t>(es),
                       bias.dtype, &bias_f[static_cast<size_t>(i)], 1);
      b = bias_f.data();
    }
  }

  const int64_t xs = N > 1 ? x.stride[0] : in, ws = out > 1 ? w.stride[0] : in, ys = N > 1 ? y.stride[0] : out;
  CMap X(x.ptr<float>(), N, in, Eigen::OuterStride<>(std::max<int64_t>(xs, 1)));
  MMap Y(y.ptr<float>(), N, out, Eigen::OuterStride<>(std::max<int64_t>(ys, 1)));
  const bool w_f32 = w.dtype == DType::F32;

  const int max_threads = omp_get_max_threads();
  const double work = static_cast<double>(N) * static_cast<double>(out) * static_cast<double>(std::max<int64_t>(in, 1));
  const int nt = (max_threads > 1 && work >= 1 << 18) ? max_threads : 1;
  // Split the output features unless x is tall and W narrow; 16-bit weights always split by
  // features so that each weight row is converted once.
  const bool split_out = !w_f32 || out >= N || out >= 64 * static_cast<int64_t>(nt);

#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    const int64_t total = split_out ? out : N;
    int64_t per = (total + nth - 1) / nth;
    if (split_out) per = (per + 15) / 16 * 16;  // whole SIMD-friendly slabs of features
    const int64_t lo = std::min<int64_t>(total, tid * per), hi = std::min<int64_t>(total, lo + per);
    if (lo < hi) {
      if (w_f32) {
        CMap W(w.ptr<float>(), out, in, Eigen::OuterStride<>(std::max<int64_t>(ws, 1)));
        if (split_out)
          Y.middleCols(lo, hi - lo).noalias() = X * W.middleRows(lo, hi - lo).transpose();
        else
          Y.middleRows(lo, hi - lo).noalias() = X.middleRows(lo, hi - lo) * W.transpose();
      } else {
        RowMat Wf(std::min<int64_t>(kConvRows, hi - lo), in);
        const size_t es = dtype_size(w.dtype);
        for (int64_t o0 = lo; o0 < hi; o0 += kConvRows) {
          const int64_t n = std::min<int64_t>(kConvRows, hi - o0);
          for (int64_t r = 0; r < n; ++r)
            convert_to_f32(static_cast<const char*>(w.data) + (o0 + r) * ws * static_cast<int64_t>(es), w.dtype,
                           Wf.data() + r * in, static_cast<size_t>(in));
          Y.middleCols(o0, n).noalias() = X * Wf.topRows(n).transpose();
        }
      }
      if (b) {
        if (split_out)
          Y.middleCols(lo, hi - lo).rowwise() += CVec(b + lo, hi - lo);
        else
          Y.middleRows(lo, hi - lo).rowwise() += CVec(b, out);
      }
    }
  }
}

}  // namespace rt::cpu
