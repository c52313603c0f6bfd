#include "model/random_weights.h"

#include <algorithm>
#include <cmath>

namespace rt {

namespace {
// splitmix64: a counter-based generator, so element i's value does not depend on how the loop
// is split across threads.
inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
inline double unit(uint64_t bits) { return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53; }
// FNV-1a: unlike std::hash, the same on every standard library, so a seed means the same weights.
uint64_t name_hash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

void random_parameter(const std::string& name, int64_t n, uint64_t seed, float* out, float stddev) {
  if (ends_with(name, "norm.weight")) {
    std::fill(out, out + n, 1.f);
    return;
  }
  if (ends_with(name, ".bias")) {
    std::fill(out, out + n, 0.f);
    return;
  }
  const uint64_t key = mix(seed ^ name_hash(name));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    // Box-Muller on two counter-derived uniforms.
    const double u1 = unit(mix(key + 2 * static_cast<uint64_t>(i)));
    const double u2 = unit(mix(key + 2 * static_cast<uint64_t>(i) + 1));
    out[i] = static_cast<float>(stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
}

}  // namespace rt
