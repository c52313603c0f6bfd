// Random parameters with the initialization transformers uses for Qwen2 (normal(0, 0.02)
// matrices and embeddings, unit RMSNorm weights, zero biases), for profiling without weights.
#pragma once

#include <cstdint>
#include <string>

namespace rt {

// Fills out[0, n) for the parameter `name`. Deterministic in (name, seed), independent of the
// thread count.
void random_parameter(const std::string& name, int64_t n, uint64_t seed, float* out, float stddev = 0.02f);

}  // namespace rt
