// rmsnorm: y = w * (x / sqrt(mean(x^2) + eps)) per row, fp32 math, the CPU/HF order of operations
// (normalize, then scale by w). One block per row; the second pass re-reads the row from L1/L2.
// (The residual add before it needs no kernel: the projections accumulate into the f32 residual
// in their GEMM epilogue, Ops::linear_accumulate.)
#include <cmath>
#include <type_traits>
#include <utility>

#include <cuda_bf16.h>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"
#include "cuda/memory.h"

namespace rt::cuda {
namespace {

// 1 / rms of one row, summed by the whole block (the CPU/HF order: mean of squares, + eps, sqrt).
__device__ __forceinline__ float row_inv_rms(const RowsDesc& x, int64_t xo, int64_t d, float eps) {
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = load_f(x.data, xo + i, x.dtype);
    ss += v * v;
  }
  ss = block_sum(ss);
  // 1/sqrt (IEEE) rather than rsqrtf: keeps the f32 path within rounding of the CPU's.
  return 1.f / sqrtf(ss / static_cast<float>(d) + eps);
}

__global__ void rmsnorm_kernel(RowsDesc x, const void* w, DType wdt, int64_t w_stride, float eps, RowsDesc y,
                               int64_t d) {
  const int64_t r = blockIdx.x;
  const int64_t xo = x.row_offset(r), yo = y.row_offset(r);
  const float inv = row_inv_rms(x, xo, d, eps);
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = load_f(x.data, xo + i, x.dtype);
    store_f(y.data, yo + i, y.dtype, __fmul_rn(v * inv, load_f(w, i * w_stride, wdt)));
  }
}

// Ops::rmsnorm_route_at: rmsnorm_kernel's row (same block size, so the same bits of y), then the
// router's dot product over y as stored and the decision, in one block.
__global__ void rmsnorm_route_kernel(RowsDesc x, const void* g, DType gdt, int64_t g_stride, float eps,
                                     const void* w, DType wdt, int64_t w_stride, float z_min, const int32_t* pos,
                                     int64_t first, RowsDesc y, int64_t d, float* dec, float* steps) {
  const int64_t xo = x.row_offset(0), yo = y.row_offset(0);
  const float inv = row_inv_rms(x, xo, d, eps);
  float dot = 0.f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = load_f(x.data, xo + i, x.dtype);
    store_f(y.data, yo + i, y.dtype, __fmul_rn(v * inv, load_f(g, i * g_stride, gdt)));
    dot += load_f(y.data, yo + i, y.dtype) * load_f(w, i * w_stride, wdt);
  }
  dot = block_sum(dot);
  if (threadIdx.x == 0) {
    const float v = dot >= z_min && static_cast<int64_t>(*pos) >= first ? 1.f : 0.f;
    *dec = v;
    if (steps != nullptr) *steps += v;
  }
}

void check_norm_args(const char* op, const TensorView& x, const TensorView& w, float eps, const TensorView& y) {
  check_cuda(op, "x", x);
  check_cuda(op, "w", w);
  check_cuda(op, "y", y);
  check_float(op, "x", x);
  check_float(op, "w", w);
  check_float(op, "y", y);
  RT_CHECK(x.ndim >= 1, op, ": argument 'x' must have at least 1 dimension, found shape ", x.shape_str());
  check_same_shape(op, "x", x, "y", y);
  const int64_t d = row_len(x);
  RT_CHECK(w.ndim == 1 && w.shape[0] == d, op, ": argument 'w' must have shape [", d,
           "] (the last dimension of x), found ", w.shape_str());
  RT_CHECK(std::isfinite(eps) && eps >= 0.f, op, ": eps must be finite and >= 0, found ", eps);
  check_unit_inner_stride(op, "x", x);
  check_unit_inner_stride(op, "y", y);
}

// Fast path: contiguous f32 x, bf16 w and y (the model's layout). One warp per row, row kept in
// registers between the two passes, templated dtypes (no runtime switch). x_copy (when not null)
// receives the row as read (rmsnorm_keep_input).
template <int kMaxPerLane>
__global__ void rmsnorm_warp_kernel(const float* __restrict__ x, const __nv_bfloat16* __restrict__ w, float eps,
                                    __nv_bfloat16* __restrict__ y, int64_t rows, int d, float* __restrict__ x_copy) {
  const int lane = threadIdx.x & 31;
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= rows) return;
  const float* xr = x + r * d;
  float v[kMaxPerLane];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int i = lane + 32 * j;
    v[j] = i < d ? xr[i] : 0.f;
    ss += v[j] * v[j];
  }
  if (x_copy != nullptr) {
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j)
      if (lane + 32 * j < d) x_copy[r * d + lane + 32 * j] = v[j];
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const float inv = 1.f / sqrtf(ss / static_cast<float>(d) + eps);
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int i = lane + 32 * j;
    if (i < d) y[r * d + i] = __float2bfloat16_rn(__fmul_rn(v[j] * inv, __bfloat162float(w[i])));
  }
}

// Below this many rows (a decode step's one token) a whole block per row is faster than one warp:
// the row's loads spread over more threads, so the latency of a lone row is shorter.
constexpr int64_t kMinWarpRows = 64;

// True when the fast path took the call.
bool rmsnorm_fast(const TensorView& x, const TensorView& w, float eps, const TensorView& y, int64_t rows, int64_t d,
                  cudaStream_t stream, float* x_copy = nullptr) {
  if (x.dtype != DType::F32 || w.dtype != DType::BF16 || y.dtype != DType::BF16 || !x.is_contiguous() ||
      !y.is_contiguous() || !w.is_contiguous() || d > 32 * 64 || rows < kMinWarpRows)
    return false;
  const int warps = 8;
  const unsigned blocks = static_cast<unsigned>((rows + warps - 1) / warps);
  auto* xp = static_cast<const float*>(x.data);
  auto* wp = static_cast<const __nv_bfloat16*>(w.data);
  auto* yp = static_cast<__nv_bfloat16*>(y.data);
  const int di = static_cast<int>(d);
  if (d <= 32 * 16) rmsnorm_warp_kernel<16><<<blocks, warps * 32, 0, stream>>>(xp, wp, eps, yp, rows, di, x_copy);
  else if (d <= 32 * 32) rmsnorm_warp_kernel<32><<<blocks, warps * 32, 0, stream>>>(xp, wp, eps, yp, rows, di, x_copy);
  else rmsnorm_warp_kernel<64><<<blocks, warps * 32, 0, stream>>>(xp, wp, eps, yp, rows, di, x_copy);
  CUDA_CHECK_LAUNCH();
  return true;
}

int threads_for(int64_t d) { return d >= 2048 ? 512 : (d >= 512 ? 256 : (d >= 128 ? 128 : 32)); }

// Backward pass 1, one warp per row (8 rows per block; a block per row spent most of a 32K-row
// training step's norm time in its two block-wide reductions): rstd[r] = 1 / sqrt(mean(x^2) + eps)
// (as the forward computes it) and coef[r] = rstd^3 * sum_i(dy_i w_i x_i) / d.
// kDx: also does pass 3 for this row (the warp reads its row again from cache), when dx aliases
// neither x nor dy or dw does not need them afterwards.
constexpr int kStatsRowsPerBlock = 8;

// A row's statistics from the lanes' partial sums of x^2 and dy w x (a fixed butterfly order:
// deterministic), written by lane 0.
__device__ __forceinline__ void finish_row_stats(float ss, float dot, int64_t d, float eps, int lane, int64_t r,
                                                 float* rstd, float* coef, float& inv, float& cf) {
  for (int o = 16; o > 0; o >>= 1) {
    ss += __shfl_xor_sync(0xffffffffu, ss, o);
    dot += __shfl_xor_sync(0xffffffffu, dot, o);
  }
  inv = 1.f / sqrtf(ss / static_cast<float>(d) + eps);
  cf = inv * inv * inv * dot / static_cast<float>(d);
  if (lane == 0) {
    rstd[r] = inv;
    coef[r] = cf;
  }
}
template <bool kDx>
__global__ void __launch_bounds__(32 * kStatsRowsPerBlock)
    rmsnorm_backward_stats_kernel(RowsDesc x, RowsDesc dy, const void* w, DType wdt, int64_t w_stride, float eps,
                                  int64_t d, int64_t rows, float* rstd, float* coef, RowsDesc dx) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kStatsRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t xo = x.row_offset(r), dyo = dy.row_offset(r);
  float ss = 0.f, dot = 0.f;
  for (int64_t i = lane; i < d; i += 32) {
    const float v = load_f(x.data, xo + i * x.col_stride, x.dtype);
    const float g = load_f(dy.data, dyo + i * dy.col_stride, dy.dtype) * load_f(w, i * w_stride, wdt);
    ss += v * v;
    dot += g * v;
  }
  float inv, cf;
  finish_row_stats(ss, dot, d, eps, lane, r, rstd, coef, inv, cf);
  if constexpr (kDx) {
    const int64_t dxo = dx.row_offset(r);
    for (int64_t i = lane; i < d; i += 32) {
      const float v = load_f(x.data, xo + i * x.col_stride, x.dtype);
      const float g = load_f(dy.data, dyo + i * dy.col_stride, dy.dtype) * load_f(w, i * w_stride, wdt);
      const int64_t o = dxo + i * dx.col_stride;
      store_f(dx.data, o, dx.dtype, load_f(dx.data, o, dx.dtype) + (inv * g - cf * v));
    }
  }
}

// Pass 1 (and 3) in 16-byte loads, 8 elements a lane at a time, where every row is unit-stride and
// 16-byte aligned and d % 8 == 0 (the scalar kernel above takes the rest). Such views have one row
// stride, so a row starts at r * stride[0]: RowsDesc::row_offset's loop over the outer dimensions
// indexes the descriptor at run time, which copies it to local memory (a 216-byte stack frame). The scalar kernel spent
// 25 ms of a 32K training step on these rows, this one 20 ms. Sums differ from the scalar kernel's
// by fp32 rounding only (another order). (load8 / store8: device_utils.cuh.)
template <bool kDx>
__global__ void __launch_bounds__(32 * kStatsRowsPerBlock)
    rmsnorm_backward_stats_vec_kernel(RowsDesc x, RowsDesc dy, const void* w, DType wdt, float eps, int64_t d,
                                      int64_t rows, float* rstd, float* coef, RowsDesc dx) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kStatsRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t xo = r * x.stride[0], dyo = r * dy.stride[0];
  float ss = 0.f, dot = 0.f;
  for (int64_t i = 8 * lane; i < d; i += 256) {
    float v[8], g[8], wv[8];
    load8(x.data, xo + i, x.dtype, v);
    load8(dy.data, dyo + i, dy.dtype, g);
    load8(w, i, wdt, wv);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      ss += v[k] * v[k];
      dot += g[k] * wv[k] * v[k];
    }
  }
  float inv, cf;
  finish_row_stats(ss, dot, d, eps, lane, r, rstd, coef, inv, cf);
  if constexpr (kDx) {
    const int64_t dxo = r * dx.stride[0];
    for (int64_t i = 8 * lane; i < d; i += 256) {
      float v[8], g[8], wv[8], o[8];
      load8(x.data, xo + i, x.dtype, v);
      load8(dy.data, dyo + i, dy.dtype, g);
      load8(w, i, wdt, wv);
      load8(dx.data, dxo + i, dx.dtype, o);
#pragma unroll
      for (int k = 0; k < 8; ++k) o[k] += inv * (g[k] * wv[k]) - cf * v[k];
      store8(dx.data, dxo + i, dx.dtype, o);
    }
  }
}

// Row r's x and dy as a lane's chunks (8 elements at 8 lane + 256 c, c < kChunks), every load
// issued before the first sum, and the lane's partial sums of x^2 and dy w x. kScaleDy: g ends as
// dy w (a dx pass then needs no w); else g stays dy (the dw sums need it). Either way the same sums.
template <int kChunks, bool kScaleDy>
__device__ __forceinline__ void load_row_sums(const RowsDesc& x, const RowsDesc& dy, const void* w, DType wdt,
                                              int64_t r, int64_t d, int lane, float (&v)[kChunks][8],
                                              float (&g)[kChunks][8], float& ss, float& dot) {
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int64_t i = 8 * lane + 256 * c;
    if (i < d) {
      load8(x.data, r * x.stride[0] + i, x.dtype, v[c]);
      load8(dy.data, r * dy.stride[0] + i, dy.dtype, g[c]);
    }
  }
  ss = 0.f;
  dot = 0.f;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int64_t i = 8 * lane + 256 * c;
    if (i < d) {
      float wv[8];
      load8(w, i, wdt, wv);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        ss += v[c][k] * v[c][k];
        if constexpr (kScaleDy) {
          g[c][k] *= wv[k];
          dot += g[c][k] * v[c][k];
        } else {
          dot += g[c][k] * wv[k] * v[c][k];
        }
      }
    }
  }
}

// The vector kernel with dx fused, for rows of d <= 256 kChunks: the row's x and dy w stay in
// registers from the statistics to dx, and every load of a pass is issued before the first sum
// (the loop above re-reads x and dy, its loads one 8-element step at a time: 0.28 ms a call for
// [32K, 896] f32 rows on an H100, twice the bytes' floor). The same sums in the same order, so the
// same bits as the loop.
template <int kChunks>
__global__ void __launch_bounds__(32 * kStatsRowsPerBlock)
    rmsnorm_backward_rows_in_regs_kernel(RowsDesc x, RowsDesc dy, const void* w, DType wdt, float eps, int64_t d,
                                         int64_t rows, float* rstd, float* coef, RowsDesc dx) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kStatsRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t dxo = r * dx.stride[0];
  float v[kChunks][8], g[kChunks][8], ss, dot;
  load_row_sums<kChunks, true>(x, dy, w, wdt, r, d, lane, v, g, ss, dot);
  float inv, cf;
  finish_row_stats(ss, dot, d, eps, lane, r, rstd, coef, inv, cf);
  float o[kChunks][8];
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
    if (8 * lane + 256 * c < d) load8(dx.data, dxo + 8 * lane + 256 * c, dx.dtype, o[c]);
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int64_t i = 8 * lane + 256 * c;
    if (i < d) {
#pragma unroll
      for (int k = 0; k < 8; ++k) o[c][k] += inv * g[c][k] - cf * v[c][k];
      store8(dx.data, dxo + i, dx.dtype, o[c]);
    }
  }
}
constexpr int64_t kMaxRegChunks = 8;  // rows of up to 2048 elements

// The kernel above with dw fused, for rows of d <= 256 kDwChunks: a warp takes rows_per_warp
// consecutive rows and keeps, per lane, the sums of dy_i x_i rstd over them for its columns; the
// block adds its 8 warps' sums in warp order into partial[block] (column_partials_finish adds the
// blocks in order: deterministic, the grid depending on the row count only). This spares dw its
// own pass over x and dy (column_sum_accumulate: 85 us a call for [32K, 896] f32 rows on an H100,
// 6 ms of a 0.5B training step at 32K). At most kDwBlocks blocks of two per SM: one wave on a
// 132-SM Hopper, so no tail of idle SMs.
constexpr int kDwChunks = 4;        // rows of up to 1024 elements (0.5B's 896)
constexpr int64_t kDwBlocks = 256;  // at most: the partials' rows
template <int kChunks>
__global__ void __launch_bounds__(32 * kStatsRowsPerBlock, 2)
    rmsnorm_backward_rows_dw_kernel(RowsDesc x, RowsDesc dy, const void* w, DType wdt, float eps, int64_t d,
                                    int64_t rows, int64_t rows_per_warp, float* rstd, float* coef, RowsDesc dx,
                                    float* partial) {
  // Lane l's sums for its columns 256 c + 8 l + k sit in its warp's row of shared memory (in
  // registers too they would push the kernel far past 128, the most for two blocks an SM); no other
  // lane touches them until the block adds the rows up.
  __shared__ float4 sums[kStatsRowsPerBlock][64 * kChunks];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float4* mine = sums[warp];
#pragma unroll
  for (int c = 0; c < kChunks; ++c) mine[64 * c + 2 * lane] = mine[64 * c + 2 * lane + 1] = make_float4(0.f, 0.f, 0.f, 0.f);
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kStatsRowsPerBlock + warp) * rows_per_warp;
  const int64_t r1 = r0 + rows_per_warp < rows ? r0 + rows_per_warp : rows;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t dxo = r * dx.stride[0];
    float v[kChunks][8], g[kChunks][8], ss, dot;
    load_row_sums<kChunks, false>(x, dy, w, wdt, r, d, lane, v, g, ss, dot);
    float inv, cf;
    finish_row_stats(ss, dot, d, eps, lane, r, rstd, coef, inv, cf);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int64_t i = 8 * lane + 256 * c;
      if (i < d) {
        float wv[8], o[8];
        load8(w, i, wdt, wv);
        load8(dx.data, dxo + i, dx.dtype, o);
        float4& a = mine[64 * c + 2 * lane];
        float4& b = mine[64 * c + 2 * lane + 1];
        a.x += __fmul_rn(g[c][0], v[c][0]) * inv, a.y += __fmul_rn(g[c][1], v[c][1]) * inv;
        a.z += __fmul_rn(g[c][2], v[c][2]) * inv, a.w += __fmul_rn(g[c][3], v[c][3]) * inv;
        b.x += __fmul_rn(g[c][4], v[c][4]) * inv, b.y += __fmul_rn(g[c][5], v[c][5]) * inv;
        b.z += __fmul_rn(g[c][6], v[c][6]) * inv, b.w += __fmul_rn(g[c][7], v[c][7]) * inv;
#pragma unroll
        for (int k = 0; k < 8; ++k) o[k] += inv * (g[c][k] * wv[k]) - cf * v[c][k];
        store8(dx.data, dxo + i, dx.dtype, o);
      }
    }
  }
  __syncthreads();
  const float* flat = reinterpret_cast<const float*>(sums);
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kStatsRowsPerBlock; ++j) s += flat[j * 256 * kChunks + i];
    partial[blockIdx.x * d + i] = s;
  }
}

// Whether pass 1 may take the vector kernel: every view a single row stride, unit columns, rows
// and the weight 16-byte aligned, d a multiple of 8.
bool vector_stats_rows(const TensorView& x, const TensorView& dy, const TensorView& w, const TensorView* dx,
                       int64_t d) {
  auto ok = [&](const TensorView& v) { return v.dtype != DType::F64 && rows_16b_aligned(rows_desc(v)); };
  return d % 8 == 0 && ok(x) && ok(dy) && (dx == nullptr || ok(*dx)) && w.stride[0] == 1 && w.dtype != DType::F64 &&
         reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
}

// Backward pass 3: dx[r, i] += rstd[r] dy_i w_i - coef[r] x_i. Each element is read and written by
// one thread, so dx may be x or dy itself.
__global__ void rmsnorm_backward_dx_kernel(RowsDesc x, RowsDesc dy, const void* w, DType wdt, int64_t w_stride,
                                           const float* rstd, const float* coef, RowsDesc dx, int64_t rows,
                                           int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const float wc = load_f(w, c * w_stride, wdt);
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float v = load_f(x.data, x.row_offset(r) + c * x.col_stride, x.dtype);
    const float g = load_f(dy.data, dy.row_offset(r) + c * dy.col_stride, dy.dtype) * wc;
    const int64_t o = dx.row_offset(r) + c * dx.col_stride;
    store_f(dx.data, o, dx.dtype, load_f(dx.data, o, dx.dtype) + (rstd[r] * g - coef[r] * v));
  }
}

bool same_view(const TensorView& a, const TensorView& b) {
  return a.data == b.data && a.dtype == b.dtype && same_shape(a, b) && a.stride == b.stride;
}

}  // namespace

void rmsnorm_forward(TensorView x, TensorView w, float eps, TensorView y, cudaStream_t stream) {
  check_norm_args("rmsnorm", x, w, eps, y);
  const int64_t rows = num_rows(x), d = row_len(x);
  if (rows == 0 || d == 0) return;
  RT_CHECK(rows <= INT32_MAX, "rmsnorm: ", rows, " rows exceed the launch limit");
  if (rmsnorm_fast(x, w, eps, y, rows, d, stream)) return;
  rmsnorm_kernel<<<static_cast<unsigned>(rows), threads_for(d), 0, stream>>>(rows_desc(x), w.data, w.dtype,
                                                                             w.stride[0], eps, rows_desc(y), d);
  CUDA_CHECK_LAUNCH();
}

void rmsnorm_keep_input_forward(TensorView x, TensorView w, float eps, TensorView y, TensorView x_copy,
                                cudaStream_t stream) {
  const char* op = "rmsnorm_keep_input";
  check_norm_args(op, x, w, eps, y);
  check_cuda(op, "x_copy", x_copy);
  RT_CHECK(x_copy.dtype == x.dtype && same_shape(x_copy, x), op, ": argument 'x_copy' must match x (",
           dtype_name(x.dtype), " ", x.shape_str(), "), found ", dtype_name(x_copy.dtype), " ", x_copy.shape_str());
  RT_CHECK(!views_overlap(x_copy, x) && !views_overlap(x_copy, y) && !views_overlap(x_copy, w), op,
           ": output 'x_copy' overlaps an argument");
  const int64_t rows = num_rows(x), d = row_len(x);
  if (rows == 0 || d == 0) return;
  RT_CHECK(rows <= INT32_MAX, op, ": ", rows, " rows exceed the launch limit");
  if (x_copy.is_contiguous() && rmsnorm_fast(x, w, eps, y, rows, d, stream, static_cast<float*>(x_copy.data))) return;
  copy_forward(x, x_copy, stream);  // any other layout: the copy, then the norm
  rmsnorm_forward(x, w, eps, y, stream);
}

void rmsnorm_route_at_forward(TensorView x, TensorView g, float eps, TensorView w, float z_min, TensorView pos,
                              int64_t first, TensorView y, TensorView d, TensorView steps, cudaStream_t stream) {
  const char* op = "rmsnorm_route_at";
  check_norm_args(op, x, g, eps, y);
  check_cuda(op, "w", w);
  check_float(op, "w", w);
  check_cuda(op, "pos", pos);
  check_cuda(op, "d", d);
  const int64_t hidden = row_len(x);
  RT_CHECK(x.ndim == 2 && x.shape[0] == 1, op, ": argument 'x' must be one row [1, hidden], found ", x.shape_str());
  RT_CHECK(w.ndim == 2 && w.shape[0] == 1 && w.shape[1] == hidden && w.stride[1] == 1, op,
           ": argument 'w' must be [1, ", hidden, "] with unit column stride, found ", w.shape_str());
  RT_CHECK(pos.dtype == DType::I32 && pos.numel() == 1, op, ": argument 'pos' must be I32 [1], found ",
           dtype_name(pos.dtype), " ", pos.shape_str());
  RT_CHECK(d.dtype == DType::F32 && d.numel() == 1, op, ": argument 'd' must be f32 [1], found ", dtype_name(d.dtype),
           " ", d.shape_str());
  if (steps.data) {
    check_cuda(op, "steps", steps);
    RT_CHECK(steps.dtype == DType::F32 && steps.numel() == 1, op, ": argument 'steps' must be f32 [1], found ",
             dtype_name(steps.dtype), " ", steps.shape_str());
  }
  RT_CHECK(hidden > 0, op, ": hidden size 0");
  rmsnorm_route_kernel<<<1, threads_for(hidden), 0, stream>>>(
      rows_desc(x), g.data, g.dtype, g.stride[0], eps, w.data, w.dtype, w.stride[1], z_min,
      static_cast<const int32_t*>(pos.data), first, rows_desc(y), hidden, static_cast<float*>(d.data),
      steps.data ? static_cast<float*>(steps.data) : nullptr);
  CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx, TensorView dw,
                      cudaStream_t stream) {
  const char* op = "rmsnorm_backward";
  check_cuda(op, "x", x);
  check_cuda(op, "w", w);
  check_cuda(op, "dy", dy);
  check_float(op, "x", x);
  check_float(op, "w", w);
  check_float(op, "dy", dy);
  RT_CHECK(x.ndim >= 1, op, ": argument 'x' must have at least 1 dimension, found shape ", x.shape_str());
  check_same_shape(op, "x", x, "dy", dy);
  const int64_t rows = num_rows(x), d = row_len(x);
  RT_CHECK(w.ndim == 1 && w.shape[0] == d, op, ": argument 'w' must have shape [", d,
           "] (the last dimension of x), found ", w.shape_str());
  RT_CHECK(std::isfinite(eps) && eps >= 0.f, op, ": eps must be finite and >= 0, found ", eps);
  const bool want_dx = !is_empty_output(dx), want_dw = !is_empty_output(dw);
  if (want_dx) {
    check_cuda(op, "dx", dx);
    check_float(op, "dx", dx);
    check_same_shape(op, "x", x, "dx", dx);
    RT_CHECK(!views_overlap(dx, w), op, ": output 'dx' overlaps the weight 'w'");
    RT_CHECK(same_view(dx, x) || !views_overlap(dx, x), op, ": output 'dx' partially overlaps 'x'");
    RT_CHECK(same_view(dx, dy) || !views_overlap(dx, dy), op, ": output 'dx' partially overlaps 'dy'");
  }
  if (want_dw) {
    check_cuda(op, "dw", dw);
    check_not_f64(op, "dw", dw);
    check_dtype(op, "dw", dw, DType::F32);
    RT_CHECK(dw.ndim == 1 && dw.shape[0] == d, op, ": argument 'dw' must have shape [", d,
             "] (the last dimension of x), found ", dw.shape_str());
    for (const auto& [name, t] : {std::pair{"x", &x}, std::pair{"w", &w}, std::pair{"dy", &dy}, std::pair{"dx", &dx}})
      RT_CHECK(!views_overlap(dw, *t), op, ": output 'dw' overlaps '", name, "'");
  }
  if (rows == 0 || d == 0 || (!want_dx && !want_dw)) return;
  RT_CHECK(rows <= INT32_MAX, op, ": ", rows, " rows exceed the launch limit");
  Scratch stats(static_cast<size_t>(2 * rows) * sizeof(float), stream, "rmsnorm_backward row statistics");
  float* rstd = static_cast<float*>(stats.get());
  float* coef = rstd + rows;
  // dx in the same pass unless it aliases an input that dw still needs to read.
  const bool fused_dx = want_dx && !(want_dw && (views_overlap(dx, x) || views_overlap(dx, dy)));
  const unsigned stat_blocks = static_cast<unsigned>((rows + kStatsRowsPerBlock - 1) / kStatsRowsPerBlock);
  const bool vector_rows = vector_stats_rows(x, dy, w, fused_dx ? &dx : nullptr, d);
  if (vector_rows && fused_dx && want_dw && d <= 256 * kDwChunks) {
    const int64_t warps = std::min(kDwBlocks * kStatsRowsPerBlock, rows);
    const int64_t rows_per_warp = (rows + warps - 1) / warps;
    const int64_t blocks = (rows + kStatsRowsPerBlock * rows_per_warp - 1) / (kStatsRowsPerBlock * rows_per_warp);
    Scratch partial(static_cast<size_t>(blocks * d) * sizeof(float), stream, "rmsnorm_backward dw partials");
    auto launch = [&](auto chunks) {
      rmsnorm_backward_rows_dw_kernel<decltype(chunks)::value>
          <<<static_cast<unsigned>(blocks), 32 * kStatsRowsPerBlock, 0, stream>>>(
              rows_desc(x), rows_desc(dy), w.data, w.dtype, eps, d, rows, rows_per_warp, rstd, coef, rows_desc(dx),
              static_cast<float*>(partial.get()));
    };
    switch ((d + 255) / 256) {
      case 1: launch(std::integral_constant<int, 1>{}); break;
      case 2: launch(std::integral_constant<int, 2>{}); break;
      case 3: launch(std::integral_constant<int, 3>{}); break;
      default: launch(std::integral_constant<int, 4>{}); break;
    }
    CUDA_CHECK_LAUNCH();
    column_partials_finish(static_cast<float*>(partial.get()), blocks, d, dw, stream);
    return;
  }
  if (vector_rows && fused_dx && d <= 256 * kMaxRegChunks) {
    auto launch = [&](auto chunks) {
      rmsnorm_backward_rows_in_regs_kernel<decltype(chunks)::value><<<stat_blocks, 32 * kStatsRowsPerBlock, 0, stream>>>(
          rows_desc(x), rows_desc(dy), w.data, w.dtype, eps, d, rows, rstd, coef, rows_desc(dx));
    };
    switch ((d + 255) / 256) {
      case 1: launch(std::integral_constant<int, 1>{}); break;
      case 2: launch(std::integral_constant<int, 2>{}); break;
      case 3: launch(std::integral_constant<int, 3>{}); break;
      case 4: launch(std::integral_constant<int, 4>{}); break;
      case 5: launch(std::integral_constant<int, 5>{}); break;
      case 6: launch(std::integral_constant<int, 6>{}); break;
      case 7: launch(std::integral_constant<int, 7>{}); break;
      default: launch(std::integral_constant<int, 8>{}); break;
    }
  } else if (vector_rows) {
    if (fused_dx)
      rmsnorm_backward_stats_vec_kernel<true><<<stat_blocks, 32 * kStatsRowsPerBlock, 0, stream>>>(
          rows_desc(x), rows_desc(dy), w.data, w.dtype, eps, d, rows, rstd, coef, rows_desc(dx));
    else
      rmsnorm_backward_stats_vec_kernel<false><<<stat_blocks, 32 * kStatsRowsPerBlock, 0, stream>>>(
          rows_desc(x), rows_desc(dy), w.data, w.dtype, eps, d, rows, rstd, coef, RowsDesc{});
  } else if (fused_dx)
    rmsnorm_backward_stats_kernel<true><<<stat_blocks, 32 * kStatsRowsPerBlock, 0, stream>>>(
        rows_desc(x), rows_desc(dy), w.data, w.dtype, w.stride[0], eps, d, rows, rstd, coef, rows_desc(dx));
  else
    rmsnorm_backward_stats_kernel<false><<<stat_blocks, 32 * kStatsRowsPerBlock, 0, stream>>>(
        rows_desc(x), rows_desc(dy), w.data, w.dtype, w.stride[0], eps, d, rows, rstd, coef, RowsDesc{});
  CUDA_CHECK_LAUNCH();
  // dw before dx: dx may be x or dy itself.
  if (want_dw) column_sum_accumulate(dy, x, rstd, dw, stream);
  if (want_dx && !fused_dx) {
    const Grid2D g = grid_2d(rows, d);
    rmsnorm_backward_dx_kernel<<<g.grid, g.block, 0, stream>>>(rows_desc(x), rows_desc(dy), w.data, w.dtype,
                                                               w.stride[0], rstd, coef, rows_desc(dx), rows, d);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace rt::cuda
