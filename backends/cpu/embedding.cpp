// embedding: out[t, :] = table[ids[t], :], converting the table's dtype to out's (f32 or f64, or
// the table's own dtype). Backward: dtable[ids[t], :] += dout[t, :].
#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"
#include "rt/sdk/half.h"

namespace rt::cpu {
namespace {

// ids [T] (or [1, T]) i32, every id in [0, V). Returns T; *stride the element stride.
int64_t check_ids(const char* op, const TensorView& ids, int64_t V, int64_t* stride) {
  check_cpu(op, "ids", ids);
  check_dtype(op, "ids", ids, DType::I32);
  RT_CHECK(ids.ndim == 1 || (ids.ndim == 2 && ids.shape[0] == 1), op, ": argument 'ids' must be ",
           "[T] (or [1, T]), found shape ", ids.shape_str());
  const int64_t T = ids.shape[ids.ndim - 1];
  *stride = ids.stride[ids.ndim - 1];
  const int32_t* id = ids.ptr<int32_t>();
  // Validate every id before writing anything.
  for (int64_t t = 0; t < T; ++t) {
    const int64_t v = id[t * *stride];
    RT_CHECK(v >= 0 && v < V, op, ": argument 'ids': token id ", v, " at position ", t, " is out of range for a vocabulary of size ",
             V, " (valid ids are 0..", V - 1, ")");
  }
  return T;
}

}  // namespace

void embedding_forward(TensorView table, TensorView ids, TensorView out) {
  check_cpu("embedding", "table", table);
  check_cpu("embedding", "ids", ids);
  check_cpu("embedding", "out", out);
  check_float("embedding", "table", table);
  check_dtype("embedding", "ids", ids, DType::I32);
  RT_CHECK(is_compute_dtype(out.dtype) || out.dtype == table.dtype,
           "embedding: argument 'out' must have dtype f32 or f64 (or the table's dtype ", dtype_name(table.dtype),
           "), found ", dtype_name(out.dtype));
  check_ndim("embedding", "table", table, 2);
  check_ndim("embedding", "out", out, 2);
  const int64_t V = table.shape[0], d = table.shape[1];
  int64_t ids_stride = 1;
  const int64_t T = check_ids("embedding", ids, V, &ids_stride);
  check_dim("embedding", "out", out, 0, T, "number of ids");
  check_dim("embedding", "out", out, 1, d, "embedding width, table.shape[1]");
  check_unit_inner_stride("embedding", "table", table);
  check_unit_inner_stride("embedding", "out", out);
  const int32_t* id = ids.ptr<int32_t>();
  const size_t es = dtype_size(table.dtype);
#pragma omp parallel for schedule(static) if (T * d >= (1 << 15) && T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const char* src = static_cast<const char*>(table.data) + id[t * ids_stride] * table.stride[0] * static_cast<int64_t>(es);
    char* dst = static_cast<char*>(out.data) + t * out.stride[0] * static_cast<int64_t>(dtype_size(out.dtype));
    if (out.dtype == table.dtype)
      std::memcpy(dst, src, static_cast<size_t>(d) * es);
    else if (out.dtype == DType::F32)
      to_compute<float>(src, table.dtype, reinterpret_cast<float*>(dst), static_cast<size_t>(d));
    else
      to_compute<double>(src, table.dtype, reinterpret_cast<double*>(dst), static_cast<size_t>(d));
  }
}

// Threads split the columns, so every element of dtable is summed by one thread in the order of
// t (deterministic; repeated ids need no atomics).
void embedding_backward(TensorView ids, TensorView dout, TensorView dtable) {
  const char* op = "embedding_backward";
  check_cpu(op, "dout", dout);
  check_compute(op, "dout", dout);
  check_ndim(op, "dout", dout, 2);
  check_unit_inner_stride(op, "dout", dout);
  if (!given(dtable)) {
    int64_t st = 1;
    check_ids(op, ids, std::numeric_limits<int32_t>::max(), &st);
    return;
  }
  check_cpu(op, "dtable", dtable);
  check_dtype_as(op, "dtable", dtable, "dout", dout.dtype);
  check_ndim(op, "dtable", dtable, 2);
  check_unit_inner_stride(op, "dtable", dtable);
  const int64_t V = dtable.shape[0], d = dtable.shape[1];
  int64_t ids_stride = 1;
  const int64_t T = check_ids(op, ids, V, &ids_stride);
  check_dim(op, "dout", dout, 0, T, "number of ids");
  check_dim(op, "dout", dout, 1, d, "embedding width, dtable.shape[1]");
  RT_CHECK(!views_overlap(dtable, dout), "embedding_backward: output 'dtable' overlaps 'dout'");
  if (T * d == 0) return;
  const int32_t* id = ids.ptr<int32_t>();
  dispatch_compute(dout.dtype, [&](auto tag) {
    using T_ = decltype(tag);
    constexpr int64_t kCols = 64;
    const int64_t nslabs = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (T * d >= (1 << 16) && nslabs > 1)
    for (int64_t sl = 0; sl < nslabs; ++sl) {
      const int64_t c0 = sl * kCols, c1 = std::min(d, c0 + kCols);
      for (int64_t t = 0; t < T; ++t) {
        const T_* src = dout.ptr<T_>() + t * dout.stride[0];
        T_* dst = dtable.ptr<T_>() + id[t * ids_stride] * dtable.stride[0];
        for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
      }
    }
  });
}

}  // namespace rt::cpu
