// A uniform draw per (key, position), the same bits on the host and on the device: what a router
// that routes a random fraction of tokens (fixed_rate) decides with, both in its forward (host
// positions) and in a replayed decode step (Ops::position_draw_at, the position on the device).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define RT_SDK_HD __host__ __device__ __forceinline__
#else
#define RT_SDK_HD inline
#endif

namespace rt {

// splitmix64's finalizer: a bijective mix of 64 bits.
RT_SDK_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// True with probability `below` over keys and positions: u(key, t) < below, u uniform on [0, 1)
// from the top 53 bits.
RT_SDK_HD bool position_draw(uint64_t key, int64_t t, double below) {
  const uint64_t h = splitmix64(key ^ splitmix64(static_cast<uint64_t>(t)));
  return static_cast<double>(h >> 11) * 0x1.0p-53 < below;
}

}  // namespace rt
