// What the CPU attention forward and backward share: which keys each query row sees under an
// AttentionSpec, and the argument check for [T, heads, head_dim] f32 views.
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

inline void check_attention_view(const char* op, const char* arg, const TensorView& v) {
  check_cpu(op, arg, v);
  check_dtype(op, arg, v, DType::F32);
  check_ndim(op, arg, v, 3);
  check_unit_inner_stride(op, arg, v);
}

}  // namespace rt::cpu
