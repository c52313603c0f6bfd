// What the CPU attention forward and backward share: which keys each query row sees under an
// AttentionSpec (the shared definition in common/attention_rows.h, also used by the CUDA kernels),
// the routed-query arguments (q_index, q_count), and the argument checks for [T, heads, head_dim]
// views (f32 or f64) and lse.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>

#include "common/attention_rows.h"
#include "cpu/check.h"
#include "rt/sdk/ops.h"

namespace rt::cpu {

// The visible keys of query row i are [lo(i), hi(i)), possibly empty; row i sits at position
// q_pos0 + i, or q_pos0 + index[i] for routed queries (index non-null, ascending).
inline attn::KeyRange key_range(const AttentionSpec& spec, int64_t Tk, const int32_t* index = nullptr) {
  attn::KeyRange r;
  r.causal = spec.causal;
  r.m.q_pos0 = spec.q_pos0;
  r.m.k_pos0 = spec.k_pos0;
  r.m.window = spec.window;
  r.m.Tk = static_cast<int>(Tk);  // checked <= INT_MAX by check_key_rows
  r.index = index;
  return r;
}

// The shared masks index keys with int.
inline void check_key_rows(const char* op, const TensorView& k) {
  RT_CHECK(k.shape[0] <= INT_MAX, op, ": argument 'k' has ", k.shape[0], " rows; at most ", INT_MAX,
           " keys are supported, shape ", k.shape_str());
}

// The query rows of a call: `active` of them (the first ones) are computed; index is null for dense
// queries (every row active) or points at spec.q_index's entries (routed queries).
struct QueryRows {
  const int32_t* index = nullptr;
  int64_t active = 0;
};

// Checks spec.q_index / q_count of a call with Tq query rows and reads the count (clamped to
// [0, Tq]); the active entries must be >= 0 and strictly ascending.
inline QueryRows query_rows(const char* op, const AttentionSpec& spec, int64_t Tq) {
  if (!spec.routed()) return {nullptr, Tq};
  const TensorView& index = spec.q_index;
  const TensorView& count = spec.q_count;
  check_cpu(op, "q_index", index);
  check_dtype(op, "q_index", index, DType::I32);
  RT_CHECK(index.ndim == 1, op, ": argument 'q_index' must be 1-D [>= Tq], found shape ", index.shape_str());
  RT_CHECK(index.shape[0] >= Tq, op, ": argument 'q_index' has ", index.shape[0], " entries, fewer than the ", Tq,
           " query rows of 'q'");
  check_unit_inner_stride(op, "q_index", index);
  RT_CHECK(count.data != nullptr, op, ": argument 'q_count' (I32 [1]) must be given with 'q_index'");
  check_cpu(op, "q_count", count);
  check_dtype(op, "q_count", count, DType::I32);
  RT_CHECK(count.numel() == 1, op, ": argument 'q_count' must hold one element (I32 [1]), found shape ",
           count.shape_str());
  const int32_t n = *static_cast<const int32_t*>(count.data);
  const int64_t active = std::clamp<int64_t>(n, 0, Tq);
  const int32_t* idx = static_cast<const int32_t*>(index.data);
  for (int64_t i = 0; i < active; ++i) {
    RT_CHECK(idx[i] >= 0, op, ": argument 'q_index' entry ", i, " is ", idx[i],
             "; routed query rows must sit at q_pos0 + index with index >= 0");
    RT_CHECK(i == 0 || idx[i] > idx[i - 1], op, ": argument 'q_index' must be strictly ascending over its ", active,
             " active entries, found entry ", i - 1, " = ", idx[i - 1], " then entry ", i, " = ", idx[i]);
    RT_CHECK(!spec.q_indexed || idx[i] < Tq, op, ": argument 'q_index' entry ", i, " is ", idx[i],
             "; with q_indexed it names a row of 'q', which has ", Tq, " rows");
  }
  return {idx, active};
}

// The row of q that routed (or dense) query row i reads: q_indexed names it through the index.
inline int64_t q_source_row(const AttentionSpec& spec, const QueryRows& rows, int64_t i) {
  return spec.q_indexed ? rows.index[i] : i;
}

// Outputs must not overlap the routed-query arguments.
inline void check_not_overlapping_rows(const char* op, const char* arg, const TensorView& out,
                                       const AttentionSpec& spec) {
  if (!spec.routed()) return;
  RT_CHECK(!views_overlap(out, spec.q_index) && !views_overlap(out, spec.q_count), op, ": output '", arg,
           "' overlaps 'q_index' or 'q_count'");
}

// A [T, heads, head_dim] view of the compute dtype of the call (that of q: f32 or f64).
inline void check_attention_view(const char* op, const char* arg, const TensorView& v, DType want) {
  check_cpu(op, arg, v);
  if (v.dtype != want || !is_compute_dtype(v.dtype)) {
    check_compute(op, arg, v);
    check_dtype_as(op, arg, v, "q", want);
  }
  check_ndim(op, arg, v, 3);
  check_unit_inner_stride(op, arg, v);
}

// lse [Hq, Tq] of the compute dtype, unit inner stride.
inline void check_lse_view(const char* op, const TensorView& lse, int64_t Hq, int64_t Tq, DType want) {
  check_cpu(op, "lse", lse);
  check_dtype_as(op, "lse", lse, "q", want);
  RT_CHECK(lse.ndim == 2 && lse.shape[0] == Hq && lse.shape[1] == Tq, op, ": argument 'lse' must have shape [",
           Hq, ", ", Tq, "] (query heads, query rows), found ", lse.shape_str());
  check_unit_inner_stride(op, "lse", lse);
}

}  // namespace rt::cpu
