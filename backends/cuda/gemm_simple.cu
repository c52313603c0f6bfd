// A plain tiled GEMM, y = x W^T (+ b), fp32 accumulation, any float dtypes and strides with a
// contiguous last dimension. Slow next to cuBLASLt; it is the fallback for the rare layout the
// heuristic has no algorithm for (odd leading dimensions, unusual alignments), so linear() never
// fails for want of a kernel.
#include <algorithm>
#include <cstdint>

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

// d[i, j] (= or +=) sum_k A(i, k) B(k, j), A(i, k) = a[i * sai + k * sak], B(k, j) = b[k * sbk + j * sbj],
// d row-major with row stride sd. Tiles as above; rows of d past gridDim.y are looped over.
__global__ void gemm_general_kernel(const void* a, DType at, int64_t sai, int64_t sak, const void* b, DType bt,
                                    int64_t sbk, int64_t sbj, void* d, DType dt, int64_t sd, int64_t M, int64_t N,
                                    int64_t K, bool accumulate) {
  __shared__ float ta[kTile][kTile + 1];
  __shared__ float tb[kTile][kTile + 1];
  const int64_t col = blockIdx.x * static_cast<int64_t>(kTile) + threadIdx.x;
  for (int64_t row0 = blockIdx.y * static_cast<int64_t>(kTile); row0 < M;
       row0 += static_cast<int64_t>(gridDim.y) * kTile) {
    const int64_t row = row0 + threadIdx.y;
    float acc = 0.f;
    for (int64_t k0 = 0; k0 < K; k0 += kTile) {
      const int64_t ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
      ta[threadIdx.y][threadIdx.x] = row < M && ka < K ? load_f(a, row * sai + ka * sak, at) : 0.f;
      tb[threadIdx.y][threadIdx.x] = kb < K && col < N ? load_f(b, kb * sbk + col * sbj, bt) : 0.f;
      __syncthreads();
#pragma unroll
      for (int j = 0; j < kTile; ++j) acc += ta[threadIdx.y][j] * tb[j][threadIdx.x];
      __syncthreads();
    }
    if (row < M && col < N) {
      const int64_t i = row * sd + col;
      store_f(d, i, dt, accumulate ? load_f(d, i, dt) + acc : acc);
    }
  }
}

}  // namespace

void check_matmul_operands(const char* op, const TensorView& a, const TensorView& b, const TensorView& d) {
  check_cuda(op, "a", a);
  check_cuda(op, "b", b);
  check_cuda(op, "d", d);
  check_float(op, "a", a);
  check_float(op, "b", b);
  check_float(op, "d", d);
  check_ndim(op, "a", a, 2);
  check_ndim(op, "b", b, 2);
  check_ndim(op, "d", d, 2);
  check_unit_inner_stride(op, "a", a);
  check_unit_inner_stride(op, "b", b);
  check_unit_inner_stride(op, "d", d);
}

void gemm_simple_matmul(TensorView a, bool trans_a, TensorView b, bool trans_b, TensorView d, bool accumulate,
                        cudaStream_t stream) {
  // Shapes are checked by the caller (GemmContext::matmul); these keep direct use safe.
  const char* op = "gemm_simple_matmul";
  check_matmul_operands(op, a, b, d);
  const int64_t M = trans_a ? a.shape[1] : a.shape[0], K = trans_a ? a.shape[0] : a.shape[1];
  const int64_t N = trans_b ? b.shape[0] : b.shape[1];
  RT_CHECK((trans_b ? b.shape[1] : b.shape[0]) == K && d.shape[0] == M && d.shape[1] == N, op,
           ": shapes do not chain: a ", a.shape_str(), trans_a ? "^T" : "", ", b ", b.shape_str(), trans_b ? "^T" : "",
           ", d ", d.shape_str());
  if (M == 0 || N == 0) return;
  const int64_t sa = a.shape[0] > 1 ? a.stride[0] : 0, sb = b.shape[0] > 1 ? b.stride[0] : 0;
  const int64_t sai = trans_a ? 1 : sa, sak = trans_a ? sa : 1;
  const int64_t sbk = trans_b ? 1 : sb, sbj = trans_b ? sb : 1;
  const int64_t sd = d.shape[0] > 1 ? d.stride[0] : 0;
  const int64_t bx = (N + kTile - 1) / kTile, by = std::min<int64_t>((M + kTile - 1) / kTile, 65535);
  RT_CHECK(bx <= INT32_MAX, op, ": ", N, " columns exceed the launch limit");
  const dim3 block(kTile, kTile);
  gemm_general_kernel<<<dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by)), block, 0, stream>>>(
      a.data, a.dtype, sai, sak, b.data, b.dtype, sbk, sbj, d.data, d.dtype, sd, M, N, K, accumulate);
  CUDA_CHECK_LAUNCH();
}

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
