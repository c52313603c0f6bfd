// Random parameters with the initialization transformers uses for Qwen2 (normal(0, 0.02)
// matrices and embeddings, unit RMSNorm weights, zero biases), for profiling without weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rt {

// Deterministic in (name, seed) and independent of thread count.
std::vector<float> random_parameter(const std::string& name, const std::vector<int64_t>& shape, uint64_t seed,
                                    float stddev = 0.02f);

}  // namespace rt
