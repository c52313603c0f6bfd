// Fast paths of the elementwise ops for the common case: every operand contiguous and f32 or
// bf16. One flat grid-stride loop with the dtypes as template parameters: no per-row offset
// arithmetic, no runtime dtype switch, coalesced loads. (The general strided kernels in
// elementwise.cu handle the rest.)
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/check.h"
#include "rt/sdk/tensor.h"

namespace rt::cuda::flat {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

struct AddFn {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct SwigluFn {  // silu(g) * u, expf as on the CPU
  __device__ float operator()(float g, float u) const { return g / (1.f + expf(-g)) * u; }
};
struct FirstFn {  // conversion: the second operand is ignored
  __device__ float operator()(float a, float) const { return a; }
};

template <typename A, typename B, typename O, typename Fn>
__global__ void binary_kernel(const A* a, const B* b, O* o, int64_t n, Fn fn) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    o[i] = from_f<O>(fn(to_f(a[i]), to_f(b ? b[i] : B{})));
}

inline bool flat_ok(const TensorView& v) {
  return v.is_contiguous() && (v.dtype == DType::F32 || v.dtype == DType::BF16);
}

template <typename A, typename B, typename O, typename Fn>
void launch(const TensorView& a, const TensorView* b, const TensorView& o, Fn fn, cudaStream_t stream) {
  const int64_t n = a.numel();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 132 * 32);
  binary_kernel<A, B, O, Fn><<<static_cast<unsigned>(std::max<int64_t>(blocks, 1)), threads, 0, stream>>>(
      static_cast<const A*>(a.data), b ? static_cast<const B*>(b->data) : nullptr, static_cast<O*>(o.data), n, fn);
  CUDA_CHECK_LAUNCH();
}

template <typename A, typename B, typename Fn>
void dispatch_out(const TensorView& a, const TensorView* b, const TensorView& o, Fn fn, cudaStream_t s) {
  if (o.dtype == DType::F32) launch<A, B, float>(a, b, o, fn, s);
  else launch<A, B, __nv_bfloat16>(a, b, o, fn, s);
}

template <typename A, typename Fn>
void dispatch_b(const TensorView& a, const TensorView* b, const TensorView& o, Fn fn, cudaStream_t s) {
  if (!b || b->dtype == DType::F32) dispatch_out<A, float>(a, b, o, fn, s);
  else dispatch_out<A, __nv_bfloat16>(a, b, o, fn, s);
}

// o = fn(a, b) elementwise (b may be null for a conversion). False when a fast path does not
// apply; the caller then runs the general kernel.
template <typename Fn>
bool try_binary(const TensorView& a, const TensorView* b, const TensorView& o, Fn fn, cudaStream_t s) {
  if (!flat_ok(a) || !flat_ok(o) || (b && !flat_ok(*b))) return false;
  if (a.numel() == 0) return true;
  if (a.dtype == DType::F32) dispatch_b<float>(a, b, o, fn, s);
  else dispatch_b<__nv_bfloat16>(a, b, o, fn, s);
  return true;
}

// silu(g) * u backward over contiguous tensors of one dtype T (the MLP's bf16 activations):
// dg = dout * u * s (1 + g (1 - s)), du = dout * silu(g), s = sigmoid(g); either output may be
// null. Each element is read before it is written, so dg / du may alias g / u.
template <typename T>
__global__ void swiglu_backward_kernel(const T* g, const T* u, const T* dout, T* dg, T* du, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const float x = to_f(g[i]), y = to_f(u[i]), d = to_f(dout[i]);
    const float e = expf(-x);
    const float sig = 1.f / (1.f + e);
    const float silu = x / (1.f + e);
    if (dg) dg[i] = from_f<T>(d * y * (sig * (1.f + x * (1.f - sig))));
    if (du) du[i] = from_f<T>(d * silu);
  }
}

// False when a fast path does not apply (mixed dtypes, strided views).
inline bool try_swiglu_backward(const TensorView& g, const TensorView& u, const TensorView& dout,
                                const TensorView* dg, const TensorView* du, cudaStream_t s) {
  const DType t = g.dtype;
  for (const TensorView* v : {&g, &u, &dout, dg, du})
    if (v && (!flat_ok(*v) || v->dtype != t)) return false;
  const int64_t n = g.numel();
  if (n == 0) return true;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 132 * 32)));
  if (t == DType::F32)
    swiglu_backward_kernel<float><<<blocks, threads, 0, s>>>(
        static_cast<const float*>(g.data), static_cast<const float*>(u.data), static_cast<const float*>(dout.data),
        dg ? static_cast<float*>(dg->data) : nullptr, du ? static_cast<float*>(du->data) : nullptr, n);
  else
    swiglu_backward_kernel<__nv_bfloat16><<<blocks, threads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(g.data), static_cast<const __nv_bfloat16*>(u.data),
        static_cast<const __nv_bfloat16*>(dout.data), dg ? static_cast<__nv_bfloat16*>(dg->data) : nullptr,
        du ? static_cast<__nv_bfloat16*>(du->data) : nullptr, n);
  CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace rt::cuda::flat
