// Greedy sampling on the device: argmax over the last row of the logits (and, for scoring, whether
// each row's target is its row's argmax). One block of 1024
// threads (a 151936-entry vocabulary is ~600 KB, a few microseconds); each thread scans a strided
// slice, then a warp-shuffle and shared-memory reduction. The order matches std::max_element:
// the first index of the maximum wins.
#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/kernels.h"
#include "cuda/memory.h"

namespace rt::cuda {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ void better(float& bv, int32_t& bi, float v, int32_t i) {
  // NaN never wins (v > bv is false); a tie goes to the lower index.
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// The first index of the largest of row[0..n) (NaN never wins), over a block of kThreads; all
// -inf/NaN gives the first -inf if any, else 0. Thread 0 of the block gets the answer.
__device__ int32_t block_argmax(const float* row, int64_t n) {
  float bv = -INFINITY;
  int32_t bi = INT32_MAX;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) better(bv, bi, row[i], static_cast<int32_t>(i));
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, bv, o);
    const int32_t i = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, v, i);
  }
  __shared__ float sv[32];
  __shared__ int32_t si[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (warp == 0) {
    bv = sv[lane];
    bi = si[lane];
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, bv, o);
      const int32_t i = __shfl_xor_sync(0xffffffffu, bi, o);
      better(bv, bi, v, i);
    }
  }
  return bi == INT32_MAX ? 0 : bi;
}

__global__ void argmax_kernel(const float* row, int64_t n, int32_t* out) {
  const int32_t best = block_argmax(row, n);
  if (threadIdx.x == 0) *out = best;
}

// One block per row: out[r] = 1 where targets[r] is the row's argmax (0 for an ignored row, -100).
__global__ void greedy_rows_kernel(const float* logits, int64_t V, const int32_t* targets, int64_t t_stride,
                                   int32_t* out, int64_t o_stride) {
  const int64_t r = blockIdx.x;
  const int32_t best = block_argmax(logits + r * V, V);
  if (threadIdx.x == 0) out[r * o_stride] = targets[r * t_stride] == best ? 1 : 0;
}

}  // namespace

void argmax_last_row_async(const TensorView& logits, int32_t* out_dev, cudaStream_t stream) {
  check_cuda("argmax", "logits", logits);
  check_dtype("argmax", "logits", logits, DType::F32);
  RT_CHECK(logits.ndim == 1 || logits.ndim == 2, "argmax: argument 'logits' must be [V] or [rows, V], found shape ",
           logits.shape_str());
  check_unit_inner_stride("argmax", "logits", logits);
  const int64_t V = logits.shape[logits.ndim - 1];
  const int64_t rows = logits.ndim == 2 ? logits.shape[0] : 1;
  RT_CHECK(V > 0 && rows > 0, "argmax: argument 'logits' is empty, shape ", logits.shape_str());
  RT_CHECK(V <= INT32_MAX, "argmax: vocabulary of ", V, " entries exceeds the i32 range");
  const float* row = logits.ptr<float>() + (logits.ndim == 2 ? (rows - 1) * logits.stride[0] : 0);
  argmax_kernel<<<1, kThreads, 0, stream>>>(row, V, out_dev);
  CUDA_CHECK_LAUNCH();
}

void greedy_rows_async(const float* logits, int64_t rows, int64_t V, const int32_t* targets, int64_t t_stride,
                       int32_t* out, int64_t o_stride, cudaStream_t stream) {
  if (rows == 0) return;
  greedy_rows_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, V, targets, t_stride, out, o_stride);
  CUDA_CHECK_LAUNCH();
}

int32_t argmax_last_row(const TensorView& logits_f32, cudaStream_t stream) {
  Scratch out(sizeof(int32_t), stream, "argmax result");
  argmax_last_row_async(logits_f32, static_cast<int32_t*>(out.get()), stream);
  int32_t idx = 0;
  CUDA_CHECK(cudaMemcpyAsync(&idx, out.get(), sizeof idx, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return idx;
}

}  // namespace rt::cuda
