// gemv: y (= or +=) x W^T (+ b) for a handful of rows x (a decode step's one token), bf16 W.
//
// Why not cuBLASLt: at M = 1 every projection is a matrix-vector product bound by reading W once,
// a few microseconds on the device, while a cublasLtMatmul call costs ~9 us of host time (measured
// by tools/bench/bench_cuda_ops 1): a decode step's four GEMMs per layer made it host-bound. This
// kernel is one launch (~3 us of host time) that streams W at full bandwidth.
//
// One warp per output column n: its lanes walk W[n, :] in 16-byte vectors (8 bf16), dot each with
// the same columns of the (at most kGemvMaxRows) rows of x, reduce over the warp, and lane 0 writes
// y[m, n] = (accumulate ? y[m, n] : 0) + dot + bias[n] in fp32, stored in y's dtype. x f32 is rounded
// to bf16 first, as linear() converts x to W's dtype.
#include <cuda_bf16.h>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"

namespace rt::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

struct GemvParams {
  const __nv_bfloat16* w;
  int64_t ldw;
  const void* x;
  DType x_dtype;
  int64_t ldx;
  const void* bias;  // or nullptr
  DType bias_dtype;
  int64_t bias_stride;
  void* y;
  DType y_dtype;
  int64_t ldy;
  int rows, n, k;
  bool accumulate;
};

// 8 consecutive values of row m of x, from column c (a multiple of 8), as bf16-rounded floats.
__device__ __forceinline__ void load_x8(const GemvParams& p, int m, int c, float* out) {
  if (p.x_dtype == DType::BF16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p.x) + m * p.ldx + c);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(h[j]);
      out[2 * j] = f.x;
      out[2 * j + 1] = f.y;
    }
  } else {
    const float4* f = reinterpret_cast<const float4*>(static_cast<const float*>(p.x) + m * p.ldx + c);
    const float4 a = f[0], b = f[1];
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = __bfloat162float(__float2bfloat16_rn(v[j]));
  }
}

template <int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) gemv_kernel(const GemvParams p) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= p.n) return;
  const __nv_bfloat16* wr = p.w + n * p.ldw;
  float acc[kRows] = {};
#pragma unroll 4
  for (int c = lane * 8; c < p.k; c += 32 * 8) {
    const uint4 raw = *reinterpret_cast<const uint4*>(wr + c);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
    float wv[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(h[j]);
      wv[2 * j] = f.x;
      wv[2 * j + 1] = f.y;
    }
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      float xv[8];
      load_x8(p, m, c, xv);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[m] = fmaf(wv[j], xv[j], acc[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < kRows; ++m)
    for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
  if (lane != 0) return;
  const float b = p.bias ? load_f(p.bias, n * p.bias_stride, p.bias_dtype) : 0.f;
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    const int64_t o = m * p.ldy + n;
    const float prev = p.accumulate ? load_f(p.y, o, p.y_dtype) : 0.f;
    store_f(p.y, o, p.y_dtype, prev + (acc[m] + b));
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool gemv_applies(const TensorView& x, const TensorView& w, const TensorView& y) {
  const int64_t rows = x.shape[0], k = x.shape[1];
  return x.ndim == 2 && w.ndim == 2 && y.ndim == 2 && rows >= 1 && rows <= kGemvMaxRows && w.dtype == DType::BF16 &&
         (x.dtype == DType::BF16 || x.dtype == DType::F32) && (y.dtype == DType::BF16 || y.dtype == DType::F32) &&
         k % 8 == 0 && k > 0 && w.stride[1] == 1 && x.stride[1] == 1 && y.stride[1] == 1 && w.stride[0] % 8 == 0 &&
         (rows == 1 || x.stride[0] % 8 == 0) && aligned16(w.data) && aligned16(x.data) && w.shape[0] <= INT32_MAX &&
         k <= INT32_MAX;
}

void gemv_forward(TensorView x, TensorView w, TensorView bias, TensorView y, bool accumulate, cudaStream_t stream) {
  RT_CHECK(gemv_applies(x, w, y), "internal: gemv called on a layout it does not take: x ", x.shape_str(), " ",
           dtype_name(x.dtype), ", W ", w.shape_str(), " ", dtype_name(w.dtype));
  GemvParams p{};
  p.w = static_cast<const __nv_bfloat16*>(w.data);
  p.ldw = w.stride[0];
  p.x = x.data;
  p.x_dtype = x.dtype;
  p.ldx = x.stride[0];
  p.bias = bias.data;
  p.bias_dtype = bias.data ? bias.dtype : DType::F32;
  p.bias_stride = bias.data ? bias.stride[0] : 0;
  p.y = y.data;
  p.y_dtype = y.dtype;
  p.ldy = y.stride[0];
  p.rows = static_cast<int>(x.shape[0]);
  p.n = static_cast<int>(w.shape[0]);
  p.k = static_cast<int>(x.shape[1]);
  p.accumulate = accumulate;
  if (p.n == 0) return;
  const unsigned blocks = static_cast<unsigned>((p.n + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const unsigned threads = kWarpsPerBlock * 32;
  switch (p.rows) {
    case 1: gemv_kernel<1><<<blocks, threads, 0, stream>>>(p); break;
    case 2: gemv_kernel<2><<<blocks, threads, 0, stream>>>(p); break;
    case 3: gemv_kernel<3><<<blocks, threads, 0, stream>>>(p); break;
    default: gemv_kernel<4><<<blocks, threads, 0, stream>>>(p); break;
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace rt::cuda
