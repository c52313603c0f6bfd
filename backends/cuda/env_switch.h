// Experiment switches of the CUDA backend's launchers (the Hopper attention kernels, the row
// kernels' second versions): an environment variable that is unset or empty (the default) or one
// of two values, read once by the caller.
#pragma once

#include <cstdlib>
#include <string>

#include "rt/sdk/error.h"

namespace rt::cuda {

// Whether `var` is `on`; unset, empty or `off` is false, any other value is refused.
inline bool env_switch(const char* var, const char* off, const char* on) {
  const char* v = std::getenv(var);
  if (v == nullptr || !*v) return false;
  const std::string s = v;
  RT_CHECK(s == off || s == on, var, "='", s, "': expected ", off, " or ", on);
  return s == on;
}

// The second versions of row kernels that the training trace showed far from their memory floor
// (cross-entropy in two passes, the RMSNorm backward statistics in 16-byte loads, narrow routed
// rows a thread per element): the default since measured (H100, 32K training step: full_causal
// 775.9 -> 749.7 ms, l2a_fused 452.1 -> 422.2 ms). RT_CUDA_ROWS_V2=0 runs the first versions.
inline bool rows_v2() {
  static const bool off = env_switch("RT_CUDA_ROWS_V2", "1", "0");
  return !off;
}

}  // namespace rt::cuda
