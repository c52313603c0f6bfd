// A plain tiled GEMM, y = x W^T (+ b), fp32 accumulation, any float dtypes and strides with a
// contiguous last dimension. Slow next to cuBLASLt; it is the fallback for the rare layout the
// heuristic has no algorithm for (odd leading dimensions, unusual alignments), so linear() never
// fails for want of a kernel.
#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"

namespace rt::cuda {
namespace {

constexpr int kTile = 16;

__global__ void gemm_simple_kernel(const void* x, DType xt, int64_t xs, const void* w, DType wt, int64_t ws,
                                   const void* bias, DType bt, int64_t bs, void* y, DType yt, int64_t ys, int64_t N,
                                   int64_t in, int64_t out) {
  __shared__ float tx[kTile][kTile + 1];  // +1: no bank conflicts on the transposed reads
  __shared__ float tw[kTile][kTile + 1];
  const int64_t row = blockIdx.y * static_cast<int64_t>(kTile) + threadIdx.y;  // row of x / y
  const int64_t col = blockIdx.x * static_cast<int64_t>(kTile) + threadIdx.x;  // row of W / col of y
  const int64_t wrow = blockIdx.x * static_cast<int64_t>(kTile) + threadIdx.y;
  float acc = 0.f;
  for (int64_t k0 = 0; k0 < in; k0 += kTile) {
    const int64_t k = k0 + threadIdx.x;
    tx[threadIdx.y][threadIdx.x] = row < N && k < in ? load_f(x, row * xs + k, xt) : 0.f;
    tw[threadIdx.y][threadIdx.x] = wrow < out && k < in ? load_f(w, wrow * ws + k, wt) : 0.f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kTile; ++j) acc += tx[threadIdx.y][j] * tw[threadIdx.x][j];
    __syncthreads();
  }
  if (row < N && col < out) {
    if (bias) acc += load_f(bias, col * bs, bt);
    store_f(y, row * ys + col, yt, acc);
  }
}

}  // namespace

void gemm_simple_forward(TensorView x, TensorView w, TensorView bias, TensorView y, cudaStream_t stream) {
  // Arguments are checked by the caller (GemmContext::linear) or here, minimally, for direct use.
  const char* op = "gemm_simple";
  check_cuda(op, "x", x);
  check_cuda(op, "w", w);
  check_cuda(op, "y", y);
  check_ndim(op, "x", x, 2);
  check_ndim(op, "w", w, 2);
  check_ndim(op, "y", y, 2);
  check_float(op, "x", x);
  check_float(op, "w", w);
  check_float(op, "y", y);
  const int64_t N = x.shape[0], in = x.shape[1], out = w.shape[0];
  check_dim(op, "w", w, 1, in, "in features");
  check_dim(op, "y", y, 0, N, "rows");
  check_dim(op, "y", y, 1, out, "out features");
  check_unit_inner_stride(op, "x", x);
  check_unit_inner_stride(op, "w", w);
  check_unit_inner_stride(op, "y", y);
  if (bias.data) {
    check_cuda(op, "bias", bias);
    check_float(op, "bias", bias);
    RT_CHECK(bias.ndim == 1 && bias.shape[0] == out, op, ": argument 'bias' must have shape [", out, "], found ",
             bias.shape_str());
  }
  if (N == 0 || out == 0) return;
  RT_CHECK((N + kTile - 1) / kTile <= 65535, op, ": ", N, " rows exceed the launch limit");
  const dim3 block(kTile, kTile);
  const dim3 grid(static_cast<unsigned>((out + kTile - 1) / kTile), static_cast<unsigned>((N + kTile - 1) / kTile));
  gemm_simple_kernel<<<grid, block, 0, stream>>>(x.data, x.dtype, x.stride[0], w.data, w.dtype, w.stride[0], bias.data,
                                                 bias.dtype, bias.data ? bias.stride[0] : 0, y.data, y.dtype,
                                                 y.stride[0], N, in, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace rt::cuda
