// What the CPU attention forward and backward share: which keys each query row sees under an
// AttentionSpec, and the argument checks for [T, heads, head_dim] views (f32 or f64) and lse.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/check.h"
#include "rt/sdk/ops.h"

namespace rt::cpu {

struct KeyRange {
  bool causal;
  int64_t window, q_pos0, k_pos0, Tk;

  static KeyRange of(const AttentionSpec& spec, int64_t Tk) {
    return {spec.causal, spec.window, spec.q_pos0, spec.k_pos0, Tk};
  }
  // Visible keys of query row i: [lo(i), hi(i)), possibly empty.
  int64_t lo(int64_t i) const {
    if (window <= 0) return 0;
    return std::clamp<int64_t>(q_pos0 + i - window + 1 - k_pos0, 0, Tk);
  }
  int64_t hi(int64_t i) const {
    if (!causal) return Tk;
    return std::clamp<int64_t>(q_pos0 + i - k_pos0 + 1, 0, Tk);
  }
};

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
