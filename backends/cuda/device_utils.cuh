// Device-side helpers shared by the elementwise-style kernels: fp32 loads/stores of f32/bf16/f16
// elements (the dtype switch is uniform across a warp, so it costs a few instructions, not
// divergence, and saves a template instantiation per dtype combination), and a row descriptor
// for strided views (e.g. TensorView::rows of a column slice).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/check.h"
#include "rt/sdk/tensor.h"

namespace rt::cuda {

__device__ __forceinline__ float load_f(const void* base, int64_t i, DType t) {
  switch (t) {
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    case DType::F16: return __half2float(static_cast<const __half*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ void store_f(void* base, int64_t i, DType t, float v) {
  switch (t) {
    case DType::BF16: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v); break;
    case DType::F16: static_cast<__half*>(base)[i] = __float2half_rn(v); break;
    default: static_cast<float*>(base)[i] = v; break;
  }
}

// The typed twins of load_f / store_f, for kernels instantiated per dtype (16-byte vector rows):
// the same conversions, so their results match the dtype-switching kernels' to the bit.
template <class T>
__device__ __forceinline__ float to_f(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return v;
}
template <class T>
__device__ __forceinline__ T from_f(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else return v;
}
// N consecutive elements loaded or stored as one aligned access of up to 16 bytes, or as several
// 16-byte accesses (8 f32: two): the address must be aligned to min(N * sizeof(T), 16).
template <class T, int N>
struct alignas(N * sizeof(T) < 16 ? N * sizeof(T) : 16) Vec {
  T v[N];
};
// Calls f with a value of the C++ type of t (bf16, f16 or f32).
template <class F>
__host__ __forceinline__ void with_float_type(DType t, F&& f) {
  if (t == DType::BF16) f(__nv_bfloat16{});
  else if (t == DType::F16) f(__half{});
  else f(float{});
}

// A view seen as rows x cols: all dimensions but the last are "outer" (collapsed on the host
// where their strides allow), the last has stride `col_stride`.
struct RowsDesc {
  void* data = nullptr;
  DType dtype = DType::F32;
  int outer = 0;  // number of outer dimensions after collapsing (0..3)
  int64_t shape[3] = {1, 1, 1};
  int64_t stride[3] = {0, 0, 0};
  int64_t col_stride = 1;

  __device__ __forceinline__ int64_t row_offset(int64_t r) const {
    if (outer == 1) return r * stride[0];  // the common case: one row stride
    int64_t off = 0;
    for (int i = outer - 1; i >= 0; --i) {
      off += (r % shape[i]) * stride[i];
      r /= shape[i];
    }
    return off;
  }
};

// Host: the descriptor of a view; outer dimensions that are contiguous with each other merge
// into one, so [T, H, D] (contiguous or a rows() slice) becomes one outer dimension.
inline RowsDesc rows_desc(const TensorView& v) {
  RowsDesc d;
  d.data = v.data;
  d.dtype = v.dtype;
  d.col_stride = v.ndim ? v.stride[v.ndim - 1] : 1;
  int n = 0;
  for (int i = 0; i + 1 < v.ndim; ++i) {
    if (v.shape[i] == 1) continue;  // size-1 dimensions do not move the offset
    if (n > 0 && d.stride[n - 1] == v.stride[i] * v.shape[i]) {
      d.shape[n - 1] *= v.shape[i];
      d.stride[n - 1] = v.stride[i];
    } else {
      d.shape[n] = v.shape[i];
      d.stride[n] = v.stride[i];
      ++n;
    }
  }
  if (n == 0) {  // a single row
    d.shape[0] = 1;
    d.stride[0] = 0;
    n = 1;
  }
  d.outer = n;
  return d;
}

// Whether a view's rows sit at one row stride (or are a single row), each starting on a 16-byte
// boundary with unit column stride: what the 16-byte vector kernels read and write.
inline bool rows_16b_aligned(const RowsDesc& d) {
  return d.col_stride == 1 && d.outer <= 1 && reinterpret_cast<uintptr_t>(d.data) % 16 == 0 &&
         (d.stride[0] * static_cast<int64_t>(dtype_size(d.dtype))) % 16 == 0;
}

// 8 consecutive elements at base + i as floats (or from floats): two 16-byte accesses for f32, one
// for the 16-bit types; base + i must be 16-byte aligned (rows_16b_aligned rows, i % 8 == 0). Not
// for f64.
__device__ __forceinline__ void load8(const void* base, int64_t i, DType t, float (&v)[8]) {
  if (t == DType::F32) {
    const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(base) + i);
    const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(base) + i + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + i);
    const uint16_t* h = reinterpret_cast<const uint16_t*>(&raw);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = load_f(h, k, t);
  }
}
__device__ __forceinline__ void store8(void* base, int64_t i, DType t, const float (&v)[8]) {
  if (t == DType::F32) {
    float* p = static_cast<float*>(base) + i;
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint4 raw;
    uint16_t* h = reinterpret_cast<uint16_t*>(&raw);
#pragma unroll
    for (int k = 0; k < 8; ++k) store_f(h, k, t, v[k]);
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + i) = raw;
  }
}

// Launch shape for a rows x cols elementwise kernel: x covers columns, y covers rows (a
// grid-stride loop over rows past the 65535 limit of gridDim.y).
struct Grid2D {
  dim3 grid, block;
};
inline Grid2D grid_2d(int64_t rows, int64_t cols) {
  const int threads = cols >= 256 ? 256 : (cols >= 64 ? 128 : 64);
  const int64_t bx = (cols + threads - 1) / threads;
  // Enough blocks to fill the GPU; each block row-loops.
  int64_t by = rows < 65535 ? rows : 65535;
  if (by < 1) by = 1;
  return {dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by)), dim3(threads)};
}

// Block-wide sum of one float per thread (blockDim.x a multiple of 32, at most 1024).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = lane < nwarps ? warp_sums[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace rt::cuda
