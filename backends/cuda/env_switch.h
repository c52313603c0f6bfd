// Experiment switches of the CUDA backend's launchers (the Hopper attention kernels): an
// environment variable that is unset or empty (the default) or one of two values, read once by
// the caller.
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

}  // namespace rt::cuda
