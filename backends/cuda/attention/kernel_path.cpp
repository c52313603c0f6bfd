#include "cuda/attention/kernel_path.h"

#include <cstdlib>
#include <string>

#include "rt/sdk/error.h"

namespace rt::cuda::attn_launch {

KernelPath kernel_path_from_env(const char* var) {
  const char* v = std::getenv(var);
  const std::string s = v != nullptr ? v : "";
  if (s.empty() || s == "auto") return KernelPath::Auto;
  if (s == "wgmma") return KernelPath::Wgmma;
  if (s == "mma") return KernelPath::Mma;
  fail(var, "='", s, "': expected auto, wgmma (the Hopper kernels) or mma (the mma.sync kernels)");
}

}  // namespace rt::cuda::attn_launch
