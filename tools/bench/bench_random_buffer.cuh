// A device buffer of bf16 drawn uniform with unit variance from a seed (a hash per element, so the
// same seed gives the same contents on every run and GPU): the attention benches' inputs.
// Include after bench_util.h (ck).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace rt::bench {
namespace {  // one definition per bench executable

__global__ void fill_random_bf16(__nv_bfloat16* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    const float u = (h & 0xffffff) * (1.f / 16777216.f);  // [0, 1)
    x[i] = __float2bfloat16_rn((u - 0.5f) * 3.4641f);     // uniform, unit variance
  }
}

// seed 0: left uninitialized (an output the bench writes before reading).
struct RandomBuffer {
  void* p = nullptr;
  RandomBuffer(size_t bytes, uint32_t seed) {
    ck(cudaMalloc(&p, bytes), "cudaMalloc");
    if (seed != 0) {
      fill_random_bf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(p), static_cast<int64_t>(bytes / 2), seed);
      ck(cudaGetLastError(), "fill");
    }
  }
  ~RandomBuffer() { cudaFree(p); }
  RandomBuffer(const RandomBuffer&) = delete;
  RandomBuffer& operator=(const RandomBuffer&) = delete;
};

}  // namespace
}  // namespace rt::bench
