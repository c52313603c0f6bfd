// A tensor's values on the host, from any backend and any float dtype: doubles (losses, norms,
// statistics, tests) or floats (checkpoints, exports). The CPU backend converts straight to f64
// (exact for its f64 gradient-check mode); device backends convert to f32 on the way out.
#pragma once

#include <algorithm>
#include <vector>

#include "rt/sdk/ops.h"

namespace rt {

inline std::vector<float> host_floats(Ops& ops, TensorView v) {
  std::vector<float> out(static_cast<size_t>(v.numel()));
  ops.copy(v.reshaped({v.numel()}), TensorView::contiguous(out.data(), DType::F32, Device::CPU, {v.numel()}));
  return out;
}

inline std::vector<double> host_doubles(Ops& ops, TensorView v) {
  if (v.device != Device::CPU) {
    const std::vector<float> f = host_floats(ops, v);
    return std::vector<double>(f.begin(), f.end());
  }
  std::vector<double> out(static_cast<size_t>(v.numel()));
  ops.copy(v.reshaped({v.numel()}), TensorView::contiguous(out.data(), DType::F64, Device::CPU, {v.numel()}));
  return out;
}

}  // namespace rt
