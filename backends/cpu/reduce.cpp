// Row-wise ops the routers and L2A need (row_scale, row_dot) and reduce_sum. x/a/b compute in
// their dtype (f32 or f64); the per-row scales s, the row_dot output and the reduce_sum output
// may be f32 or f64 independently (routing gates and statistics have the accum dtype, which on a
// CPU backend equals the activation dtype anyway).
#include <algorithm>
#include <vector>

#include <Eigen/Core>

#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"

namespace rt::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;

template <typename T>
using CRow = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

void check_vector(const char* op, const char* arg, const TensorView& v, int64_t n, const char* what) {
  check_cpu(op, arg, v);
  check_compute(op, arg, v);
  RT_CHECK(v.ndim == 1 && v.shape[0] == n, op, ": argument '", arg, "' must have shape [", n, "] (", what,
           "), found ", v.shape_str());
}

void check_matrix(const char* op, const char* arg, const TensorView& v) {
  check_cpu(op, arg, v);
  check_ndim(op, arg, v, 2);
  check_unit_inner_stride(op, arg, v);
}

}  // namespace

void row_scale_forward(TensorView x, TensorView s, TensorView out) {
  const char* op = "row_scale";
  check_matrix(op, "x", x);
  check_matrix(op, "out", out);
  check_compute(op, "x", x);
  check_dtype_as(op, "out", out, "x", x.dtype);
  check_same_shape(op, "x", x, "out", out);
  check_vector(op, "s", s, x.shape[0], "rows of x");
  const int64_t R = x.shape[0], C = x.shape[1];
  if (R * C == 0) return;
  RT_CHECK(!views_overlap(out, s), "row_scale: output 'out' overlaps 's'");
  dispatch_compute(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const std::vector<T> sv = load_vector<T>(s);
#pragma omp parallel for schedule(static) if (R * C >= kParallelMin && R > 1)
    for (int64_t r = 0; r < R; ++r) {
      const T* px = x.ptr<T>() + r * x.stride[0];
      T* po = out.ptr<T>() + r * out.stride[0];
      const T f = sv[static_cast<size_t>(r)];
      for (int64_t c = 0; c < C; ++c) po[c] = f * px[c];  // out may alias x
    }
  });
}

void row_dot_forward(TensorView a, TensorView b, TensorView out, bool accumulate) {
  const char* op = "row_dot";
  check_matrix(op, "a", a);
  check_matrix(op, "b", b);
  check_compute(op, "a", a);
  check_dtype_as(op, "b", b, "a", a.dtype);
  check_same_shape(op, "a", a, "b", b);
  check_vector(op, "out", out, a.shape[0], "rows of a");
  RT_CHECK(!views_overlap(out, a) && !views_overlap(out, b), "row_dot: output 'out' overlaps 'a' or 'b'");
  const int64_t R = a.shape[0], C = a.shape[1];
  const size_t eo = dtype_size(out.dtype);
  dispatch_compute(a.dtype, [&](auto tag) {
    using T = decltype(tag);
#pragma omp parallel for schedule(static) if (R * C >= kParallelMin && R > 1)
    for (int64_t r = 0; r < R; ++r) {
      const T dot = C == 0 ? T(0)
                           : (CRow<T>(a.ptr<T>() + r * a.stride[0], C) * CRow<T>(b.ptr<T>() + r * b.stride[0], C)).sum();
      char* po = static_cast<char*>(out.data) + r * out.stride[0] * static_cast<int64_t>(eo);
      store_d(po, out.dtype, (accumulate ? load_d(po, out.dtype) : 0.0) + static_cast<double>(dot));
    }
  });
}

// Deterministic: partial sums over fixed blocks of rows (independent of the thread count),
// added in order, in double.
void reduce_sum_forward(TensorView x, int power, TensorView out) {
  const char* op = "reduce_sum";
  check_cpu(op, "x", x);
  check_compute(op, "x", x);
  check_unit_inner_stride(op, "x", x);
  check_vector(op, "out", out, 1, "one element");
  RT_CHECK(power == 1 || power == 2, "reduce_sum: power must be 1 or 2, found ", power);
  RT_CHECK(!views_overlap(out, x), "reduce_sum: output 'out' overlaps 'x'");
  const int64_t rows = num_rows(x), n = row_len(x);
  double total = 0.0;
  if (rows * n > 0) {
    constexpr int64_t kBlockElems = 1 << 14;
    const int64_t rows_per_block = std::max<int64_t>(1, kBlockElems / std::max<int64_t>(n, 1));
    const int64_t nblocks = (rows + rows_per_block - 1) / rows_per_block;
    std::vector<double> partial(static_cast<size_t>(nblocks), 0.0);
    dispatch_compute(x.dtype, [&](auto tag) {
      using T = decltype(tag);
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin && nblocks > 1)
      for (int64_t blk = 0; blk < nblocks; ++blk) {
        double acc = 0.0;
        for (int64_t r = blk * rows_per_block; r < std::min(rows, (blk + 1) * rows_per_block); ++r) {
          const auto row = CRow<T>(x.ptr<T>() + row_offset(x, r), n).template cast<double>();
          acc += power == 1 ? row.sum() : row.square().sum();
        }
        partial[static_cast<size_t>(blk)] = acc;
      }
    });
    for (double p : partial) total += p;
  }
  store_d(out.data, out.dtype, load_d(out.data, out.dtype) + total);
}

}  // namespace rt::cpu
