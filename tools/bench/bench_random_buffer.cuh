// A device buffer of bf16 drawn uniform with unit variance from a seed (bench_util.h's
// unit_variance_value, filled on the device), the same contents on every run and GPU: the attention
// benches' inputs. Include after bench_util.h.
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
    x[i] = __float2bfloat16_rn(unit_variance_value(static_cast<uint32_t>(i), seed));
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
