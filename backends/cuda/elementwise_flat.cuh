// Fast paths of the elementwise ops for the common cases: every operand f32 or bf16 and either
// contiguous, or a matrix with unit column stride and any row stride (gate and up as the column
// halves of one fused GEMM output). The dtypes are template parameters: no runtime dtype switch,
// no per-element offset arithmetic beyond row * ld, coalesced loads. (The general strided kernels
// in elementwise.cu handle the rest.)
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "rt/sdk/tensor.h"

namespace rt::cuda::flat {

// (to_f / from_f and Vec: device_utils.cuh)

struct AddFn {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct SwigluFn {  // silu(g) * u, expf as on the CPU
  __device__ float operator()(float g, float u) const { return g / (1.f + expf(-g)) * u; }
};
struct FirstFn {  // conversion: the second operand is ignored
  __device__ float operator()(float a, float) const { return a; }
};

// Every operand seen as rows x cols with its own row stride (a contiguous tensor: one row).
struct MatShape {
  int64_t rows = 0, cols = 0;
};

inline bool dtype_ok(const TensorView& v) { return v.dtype == DType::F32 || v.dtype == DType::BF16; }

// The common matrix shape of the operands (null ones skipped), or rows = 0 when no fast path
// applies; lds receives each operand's row stride.
inline MatShape mat_shape(std::initializer_list<const TensorView*> ops, int64_t* lds) {
  const TensorView* first = *ops.begin();
  bool all_contiguous = true;
  for (const TensorView* v : ops) {
    if (!v) continue;
    if (!dtype_ok(*v)) return {};
    all_contiguous = all_contiguous && v->is_contiguous();
  }
  if (all_contiguous) {
    int i = 0;
    for (const TensorView* v : ops) lds[i++] = v ? v->numel() : 0;
    return {1, first->numel()};
  }
  int i = 0;
  for (const TensorView* v : ops) {
    if (v && (v->ndim != 2 || v->stride[1] != 1 || v->shape[0] != first->shape[0] || v->shape[1] != first->shape[1]))
      return {};
    lds[i++] = v ? v->stride[0] : 0;
  }
  return {first->shape[0], first->shape[1]};
}

// Grid for a rows x cols loop: columns across x (up to 132 * 32 blocks in all), rows across y.
inline dim3 mat_grid(const MatShape& m, int threads) {
  const int64_t xb = std::max<int64_t>(1, std::min<int64_t>((m.cols + threads - 1) / threads, 132 * 32));
  const int64_t yb = std::max<int64_t>(1, std::min<int64_t>(m.rows, std::max<int64_t>(1, 132 * 32 / xb)));
  return dim3(static_cast<unsigned>(xb), static_cast<unsigned>(std::min<int64_t>(yb, 65535)));
}

constexpr int kVecWidth = 8;

// True when every operand's base and row stride allow kVecWidth-wide vector access.
inline bool vectorizable(std::initializer_list<const TensorView*> ops, const MatShape& m, const int64_t* lds) {
  if (m.cols % kVecWidth != 0) return false;
  int i = 0;
  for (const TensorView* v : ops) {
    const int64_t ld = lds[i++];
    if (!v) continue;
    const size_t bytes = dtype_size(v->dtype) * kVecWidth;
    if (reinterpret_cast<uintptr_t>(v->data) % bytes != 0 || (m.rows > 1 && ld % kVecWidth != 0)) return false;
  }
  return true;
}

// Columns are counted in vectors of kVec elements (kVec = 1: plain scalar loads).
template <typename A, typename B, typename O, typename Fn, int kVec>
__global__ void binary_kernel(const A* a, int64_t lda, const B* b, int64_t ldb, O* o, int64_t ldo, int64_t rows,
                              int64_t vcols, Fn fn) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < vcols; c += step) {
      const Vec<A, kVec> va = reinterpret_cast<const Vec<A, kVec>*>(a + r * lda)[c];
      Vec<B, kVec> vb{};
      if (b) vb = reinterpret_cast<const Vec<B, kVec>*>(b + r * ldb)[c];
      Vec<O, kVec> vo;
#pragma unroll
      for (int j = 0; j < kVec; ++j) vo.v[j] = from_f<O>(fn(to_f(va.v[j]), b ? to_f(vb.v[j]) : 0.f));
      reinterpret_cast<Vec<O, kVec>*>(o + r * ldo)[c] = vo;
    }
}

template <typename A, typename B, typename O, typename Fn>
void launch(const TensorView& a, const TensorView* b, const TensorView& o, const MatShape& m, const int64_t* lds, Fn fn,
            cudaStream_t stream) {
  const int threads = 256;
  const A* pa = static_cast<const A*>(a.data);
  const B* pb = b ? static_cast<const B*>(b->data) : nullptr;
  O* po = static_cast<O*>(o.data);
  if (vectorizable({&a, b, &o}, m, lds)) {
    const MatShape mv{m.rows, m.cols / kVecWidth};
    binary_kernel<A, B, O, Fn, kVecWidth><<<mat_grid(mv, threads), threads, 0, stream>>>(
        pa, lds[0], pb, lds[1], po, lds[2], m.rows, mv.cols, fn);
  } else {
    binary_kernel<A, B, O, Fn, 1><<<mat_grid(m, threads), threads, 0, stream>>>(pa, lds[0], pb, lds[1], po, lds[2],
                                                                                m.rows, m.cols, fn);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename A, typename B, typename Fn>
void dispatch_out(const TensorView& a, const TensorView* b, const TensorView& o, const MatShape& m, const int64_t* lds,
                  Fn fn, cudaStream_t s) {
  if (o.dtype == DType::F32) launch<A, B, float>(a, b, o, m, lds, fn, s);
  else launch<A, B, __nv_bfloat16>(a, b, o, m, lds, fn, s);
}

template <typename A, typename Fn>
void dispatch_b(const TensorView& a, const TensorView* b, const TensorView& o, const MatShape& m, const int64_t* lds,
                Fn fn, cudaStream_t s) {
  if (!b || b->dtype == DType::F32) dispatch_out<A, float>(a, b, o, m, lds, fn, s);
  else dispatch_out<A, __nv_bfloat16>(a, b, o, m, lds, fn, s);
}

// o = fn(a, b) elementwise (b may be null for a conversion). False when a fast path does not
// apply; the caller then runs the general kernel.
template <typename Fn>
bool try_binary(const TensorView& a, const TensorView* b, const TensorView& o, Fn fn, cudaStream_t s) {
  int64_t lds[3];
  const MatShape m = mat_shape({&a, b, &o}, lds);
  if (m.rows == 0) return false;
  if (m.cols == 0) return true;
  if (a.dtype == DType::F32) dispatch_b<float>(a, b, o, m, lds, fn, s);
  else dispatch_b<__nv_bfloat16>(a, b, o, m, lds, fn, s);
  return true;
}

// silu(g) * u backward over tensors of one dtype T (the MLP's bf16 activations):
// dg = dout * u * s (1 + g (1 - s)), du = dout * silu(g), s = sigmoid(g); either output may be
// null. Each element is read before it is written, so dg / du may alias g / u.
template <typename T, int kVec>
__global__ void swiglu_backward_kernel(const T* g, int64_t ldg, const T* u, int64_t ldu, const T* dout, int64_t ldd,
                                       T* dg, int64_t lddg, T* du, int64_t lddu, int64_t rows, int64_t vcols) {
  using V = Vec<T, kVec>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < vcols; c += step) {
      const V vg = reinterpret_cast<const V*>(g + r * ldg)[c], vu = reinterpret_cast<const V*>(u + r * ldu)[c],
              vd = reinterpret_cast<const V*>(dout + r * ldd)[c];
      V og, ou;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float x = to_f(vg.v[j]), y = to_f(vu.v[j]), d = to_f(vd.v[j]);
        const float e = expf(-x);
        const float sig = 1.f / (1.f + e);
        const float silu = x / (1.f + e);
        og.v[j] = from_f<T>(d * y * (sig * (1.f + x * (1.f - sig))));
        ou.v[j] = from_f<T>(d * silu);
      }
      if (dg) reinterpret_cast<V*>(dg + r * lddg)[c] = og;
      if (du) reinterpret_cast<V*>(du + r * lddu)[c] = ou;
    }
}

template <typename T>
void launch_swiglu_backward(const TensorView& g, const TensorView& u, const TensorView& dout, const TensorView* dg,
                            const TensorView* du, const MatShape& m, const int64_t* lds, cudaStream_t s) {
  const int threads = 256;
  auto go = [&](auto vec, const MatShape& mm) {
    constexpr int kVec = decltype(vec)::value;
    swiglu_backward_kernel<T, kVec><<<mat_grid(mm, threads), threads, 0, s>>>(
        static_cast<const T*>(g.data), lds[0], static_cast<const T*>(u.data), lds[1],
        static_cast<const T*>(dout.data), lds[2], dg ? static_cast<T*>(dg->data) : nullptr, lds[3],
        du ? static_cast<T*>(du->data) : nullptr, lds[4], mm.rows, mm.cols);
  };
  if (vectorizable({&g, &u, &dout, dg, du}, m, lds)) go(std::integral_constant<int, kVecWidth>{}, {m.rows, m.cols / kVecWidth});
  else go(std::integral_constant<int, 1>{}, m);
  CUDA_CHECK_LAUNCH();
}

// False when a fast path does not apply (mixed dtypes, other strides).
inline bool try_swiglu_backward(const TensorView& g, const TensorView& u, const TensorView& dout,
                                const TensorView* dg, const TensorView* du, cudaStream_t s) {
  for (const TensorView* v : {&g, &u, &dout, dg, du})
    if (v && v->dtype != g.dtype) return false;
  int64_t lds[5];
  const MatShape m = mat_shape({&g, &u, &dout, dg, du}, lds);
  if (m.rows == 0) return false;
  if (m.cols == 0) return true;
  if (g.dtype == DType::F32) launch_swiglu_backward<float>(g, u, dout, dg, du, m, lds, s);
  else launch_swiglu_backward<__nv_bfloat16>(g, u, dout, dg, du, m, lds, s);
  return true;
}

// out row r = s[r] * x row r, s f32: the general kernel ran a block per row, bound by how fast the
// GPU starts blocks (1.2 ms for a [32K, 896] view, the leaked L2A layers' gate); here a block loops
// over rows. The product is the general kernel's (one f32 multiply, one rounding to O), bit for bit.
template <typename A, typename O, int kVec>
__global__ void row_scale_kernel(const A* x, int64_t ldx, const float* sc, int64_t ss, O* o, int64_t ldo, int64_t rows,
                                 int64_t vcols) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float sr = sc[r * ss];
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < vcols; c += step) {
      const Vec<A, kVec> vx = reinterpret_cast<const Vec<A, kVec>*>(x + r * ldx)[c];
      Vec<O, kVec> vo;
#pragma unroll
      for (int j = 0; j < kVec; ++j) vo.v[j] = from_f<O>(sr * to_f(vx.v[j]));
      reinterpret_cast<Vec<O, kVec>*>(o + r * ldo)[c] = vo;
    }
  }
}

// False when the fast path does not apply (f16, column strides, rows over several strides, s not f32).
inline bool try_row_scale(const TensorView& x, const TensorView& sc, const TensorView& o, int64_t rows, int64_t cols,
                          cudaStream_t stream) {
  if (!dtype_ok(x) || !dtype_ok(o) || sc.dtype != DType::F32) return false;
  int64_t lds[2];
  int i = 0;
  for (const TensorView* v : {&x, &o}) {
    const RowsDesc d = rows_desc(*v);
    if (d.col_stride != 1 || d.outer > 1) return false;
    lds[i++] = d.outer == 1 ? d.stride[0] : 0;
  }
  const MatShape m{rows, cols};
  const int threads = 256;
  auto go = [&](auto a, auto out) {
    using A = decltype(a);
    using O = decltype(out);
    const A* px = static_cast<const A*>(x.data);
    const float* ps = static_cast<const float*>(sc.data);
    O* po = static_cast<O*>(o.data);
    if (vectorizable({&x, &o}, m, lds)) {
      const MatShape mv{rows, cols / kVecWidth};
      row_scale_kernel<A, O, kVecWidth><<<mat_grid(mv, threads), threads, 0, stream>>>(px, lds[0], ps, sc.stride[0],
                                                                                         po, lds[1], rows, mv.cols);
    } else {
      row_scale_kernel<A, O, 1><<<mat_grid(m, threads), threads, 0, stream>>>(px, lds[0], ps, sc.stride[0], po, lds[1],
                                                                               rows, cols);
    }
  };
  auto with_out = [&](auto a) {
    if (o.dtype == DType::F32) go(a, float{});
    else go(a, __nv_bfloat16{});
  };
  if (x.dtype == DType::F32) with_out(float{});
  else with_out(__nv_bfloat16{});
  CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace rt::cuda::flat
