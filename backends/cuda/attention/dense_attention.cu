// Materialized attention (AttentionSpec::materialize): scores by cuBLAS strided-batched GEMMs into an
// f32 workspace, a masked softmax kernel, GEMMs with V; the backward the same way. See
// dense_attention.h for the math, the layouts and the workspace bound.
//
// cuBLAS is column-major; a row-major [rows, cols] matrix with row stride ld is, to cuBLAS, the
// column-major [cols, rows] matrix with leading dimension ld. The head matrices used below:
//   Q_h  rows [i0, i0 + nc) of head h of q: row-major [nc, D], ld q.stride[0]
//   K_g, V_g  head g of k / v: row-major [Tk, D], ld stride[0]
//   S_h, P_h, dP_h, dS_h  [nc, Tk] contiguous (ld Tk), head h at offset h * nc * Tk
// GQA: for each j in [0, group), the heads h = g * group + j (g = 0..Hkv-1) form one strided batch
// (batch index g): Q stride group * q.stride[1], K stride k.stride[1], S stride group * nc * Tk.
#include "cuda/attention/dense_attention.h"

#include "common/attention_rows.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <utility>

#include "cuda/check.h"
#include "cuda/memory.h"
#include "rt/sdk/error.h"

namespace rt::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr size_t kDefaultWorkspaceLimit = size_t{1} << 30;  // score-sized workspaces of one chunk
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // cuBLAS's own scratch, per call
constexpr int kThreads = 256;                               // row kernels: one block per row
constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();

std::atomic<size_t> g_workspace_limit{0};  // 0: kDefaultWorkspaceLimit

// ---- masks ---------------------------------------------------------------------------------------

// Row i (query position q_pos0 + i) sees keys [lo(i), hi(i)): the shared definition
// (common/attention_rows.h), as the CPU reference and the flash kernels use it.
using Mask = attn::KeyRange;
__host__ __device__ inline int64_t key_lo(const Mask& m, int64_t i) { return m.lo(i); }
__host__ __device__ inline int64_t key_hi(const Mask& m, int64_t i) { return m.hi(i); }

Mask mask_of(const AttentionSpec& spec, int64_t Tk) {
  Mask m;
  m.causal = spec.causal;
  m.m.q_pos0 = spec.q_pos0;
  m.m.k_pos0 = spec.k_pos0;
  m.m.window = spec.window;
  m.m.Tk = static_cast<int>(Tk);
  return m;
}

// ---- element access ------------------------------------------------------------------------------

__device__ inline float to_f(float x) { return x; }
__device__ inline float to_f(bf16 x) { return __bfloat162float(x); }
template <class T>
__device__ inline T from_f(float x);
template <>
__device__ inline float from_f<float>(float x) {
  return x;
}
template <>
__device__ inline bf16 from_f<bf16>(float x) {
  return __float2bfloat16(x);  // round to nearest even
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024); every thread gets the result,
// summed in a fixed order (deterministic).
__device__ inline float block_sum(float v, float* red) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __syncthreads();  // red may still be read by a previous reduction
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) t += red[w];
  return t;
}
__device__ inline float block_max(float v, float* red) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = -INFINITY;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) t = fmaxf(t, red[w]);
  return t;
}

// Log-sum-exp of the visible part [lo, hi) of a score row (+inf when empty).
__device__ inline float row_lse(const float* s, int64_t lo, int64_t hi, float* red) {
  float m = -INFINITY;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) m = fmaxf(m, s[j]);
  m = block_max(m, red);
  float sum = 0.f;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) sum += expf(s[j] - m);
  sum = block_sum(sum, red);
  return lo < hi ? m + logf(sum) : INFINITY;
}

// ---- kernels -------------------------------------------------------------------------------------

struct SoftmaxFwdParams {
  const float* S;  // [Hq, nc, Tk], already scaled
  void* P;         // [Hq, nc, Tk] of T
  float* lse;      // [Hq, Tq] or null
  int64_t Tk, nc, i0, Tq;
  Mask mask;
};

// One block per (head, chunk row): P = softmax over the visible keys (0 elsewhere), lse.
template <class T>
__global__ void __launch_bounds__(kThreads) dense_softmax_fwd_kernel(const SoftmaxFwdParams p) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const int64_t h = r / p.nc, i = p.i0 + r % p.nc;
  const float* s = p.S + r * p.Tk;
  T* out = static_cast<T*>(p.P) + r * p.Tk;
  const int64_t lo = key_lo(p.mask, i), hi = key_hi(p.mask, i);
  float m = -INFINITY;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) m = fmaxf(m, s[j]);
  m = block_max(m, red);
  float sum = 0.f;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) sum += expf(s[j] - m);
  sum = block_sum(sum, red);
  const float inv = lo < hi ? 1.f / sum : 0.f;
  for (int64_t j = threadIdx.x; j < p.Tk; j += blockDim.x)
    out[j] = from_f<T>(j >= lo && j < hi ? expf(s[j] - m) * inv : 0.f);
  if (p.lse != nullptr && threadIdx.x == 0) p.lse[h * p.Tq + i] = lo < hi ? m + logf(sum) : INFINITY;
}

struct SoftmaxBwdParams {
  const float* S;    // [Hq, nc, Tk], scaled scores
  const float* dP;   // [Hq, nc, Tk] = dO V^T
  const float* lse;  // [Hq, Tq] or null (recomputed from S)
  const void* o;     // of T, strided [Tq, Hq, D]
  const void* dout;
  int64_t o_row, o_head, do_row, do_head, D;
  void* P;   // [Hq, nc, Tk] of T, or null (dv not wanted)
  void* dS;  // [Hq, nc, Tk] of T: P * (dP - Delta), unscaled
  int64_t Tk, nc, i0, Tq;
  Mask mask;
};

template <class T>
__global__ void __launch_bounds__(kThreads) dense_softmax_bwd_kernel(const SoftmaxBwdParams p) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const int64_t h = r / p.nc, i = p.i0 + r % p.nc;
  const T* orow = static_cast<const T*>(p.o) + i * p.o_row + h * p.o_head;
  const T* drow = static_cast<const T*>(p.dout) + i * p.do_row + h * p.do_head;
  float delta = 0.f;
  for (int64_t d = threadIdx.x; d < p.D; d += blockDim.x) delta = fmaf(to_f(drow[d]), to_f(orow[d]), delta);
  delta = block_sum(delta, red);
  const float* s = p.S + r * p.Tk;
  const float* dp = p.dP + r * p.Tk;
  const int64_t lo = key_lo(p.mask, i), hi = key_hi(p.mask, i);
  const float L = p.lse != nullptr ? p.lse[h * p.Tq + i] : row_lse(s, lo, hi, red);
  const bool any = lo < hi && L < INFINITY;  // false for +inf (no key) and NaN
  T* P = p.P != nullptr ? static_cast<T*>(p.P) + r * p.Tk : nullptr;
  T* dS = static_cast<T*>(p.dS) + r * p.Tk;
  for (int64_t j = threadIdx.x; j < p.Tk; j += blockDim.x) {
    const bool vis = any && j >= lo && j < hi;
    const float pj = vis ? expf(s[j] - L) : 0.f;
    if (P != nullptr) P[j] = from_f<T>(pj);
    dS[j] = from_f<T>(vis ? pj * (dp[j] - delta) : 0.f);
  }
}

// dst (strided [T, H, D] of T) = 0.
template <class T>
__global__ void dense_zero_kernel(T* dst, int64_t row, int64_t head, int64_t H, int64_t D, int64_t n) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = idx % D, th = idx / D;
    dst[(th / H) * row + (th % H) * head + d] = from_f<T>(0.f);
  }
}

// dst (strided [T, H, D] of T) = src ([H, T, D] f32 contiguous).
template <class T>
__global__ void dense_convert_kernel(const float* src, T* dst, int64_t row, int64_t head, int64_t Tn, int64_t H,
                                     int64_t D, int64_t n) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = idx % D, th = idx / D, t = th / H, hh = th % H;
    dst[t * row + hh * head + d] = from_f<T>(src[(hh * Tn + t) * D + d]);
  }
}

__global__ void dense_fill_kernel(float* dst, float value, int64_t n) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[idx] = value;
}

// ---- host helpers --------------------------------------------------------------------------------

void check_launch(const char* op, const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    fail(op, " (materialized): launching ", kernel, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
         ")");
}

unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 8192));
}

void zero_view(const char* op, const TensorView& t, cudaStream_t stream) {
  const int64_t n = t.numel();
  if (n == 0) return;
  if (t.dtype == DType::F32)
    dense_zero_kernel<float><<<grid_for(n), kThreads, 0, stream>>>(static_cast<float*>(t.data), t.stride[0],
                                                                    t.stride[1], t.shape[1], t.shape[2], n);
  else
    dense_zero_kernel<bf16><<<grid_for(n), kThreads, 0, stream>>>(static_cast<bf16*>(t.data), t.stride[0],
                                                                   t.stride[1], t.shape[1], t.shape[2], n);
  check_launch(op, "dense_zero_kernel");
}

void fill_f32(const char* op, float* dst, float value, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dense_fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(dst, value, n);
  check_launch(op, "dense_fill_kernel");
}

void convert_into(const char* op, const float* src, const TensorView& dst, cudaStream_t stream) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  if (dst.dtype == DType::F32)
    dense_convert_kernel<float><<<grid_for(n), kThreads, 0, stream>>>(
        src, static_cast<float*>(dst.data), dst.stride[0], dst.stride[1], dst.shape[0], dst.shape[1], dst.shape[2], n);
  else
    dense_convert_kernel<bf16><<<grid_for(n), kThreads, 0, stream>>>(
        src, static_cast<bf16*>(dst.data), dst.stride[0], dst.stride[1], dst.shape[0], dst.shape[1], dst.shape[2], n);
  check_launch(op, "dense_convert_kernel");
}

cudaDataType_t cuda_type(DType t) { return t == DType::F32 ? CUDA_R_32F : CUDA_R_16BF; }

// Leading dimension of a head matrix of a [T, H, D] view (>= D as cuBLAS wants; checked for T > 1).
int64_t ld_of(const TensorView& v) { return v.shape[0] > 1 ? v.stride[0] : std::max<int64_t>(v.shape[2], 1); }

// Element pointer of (row t, head h) of a [T, H, D] view.
const void* at(const TensorView& v, int64_t t, int64_t h) {
  return static_cast<const char*>(v.data) +
         (t * v.stride[0] + h * v.stride[1]) * static_cast<int64_t>(dtype_size(v.dtype));
}
void* at_mut(const TensorView& v, int64_t t, int64_t h) { return const_cast<void*>(at(v, t, h)); }

// One cuBLAS handle per device, created on first use and never destroyed (its teardown at process
// exit could run after the CUDA runtime's). The mutex serializes the calls of this module: a
// handle holds one stream and one workspace at a time.
std::mutex& module_mutex() {
  static std::mutex m;
  return m;
}

cublasHandle_t handle_for_current_device(const char* op) {
  static auto* handles = new std::map<int, cublasHandle_t>();
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  auto it = handles->find(dev);
  if (it != handles->end()) return it->second;
  cublasHandle_t h = nullptr;
  const cublasStatus_t st = cublasCreate(&h);
  if (st != CUBLAS_STATUS_SUCCESS)
    fail(op, " (materialized): cublasCreate failed on cuda device ", dev, ": ", cublasGetStatusName(st), " (",
         cublasGetStatusString(st), ")");
  // Full fp32 accumulation: no TF32, no reduced-precision split-K reductions.
  const cublasStatus_t mst =
      cublasSetMathMode(h, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
  if (mst != CUBLAS_STATUS_SUCCESS) {
    cublasDestroy(h);
    fail(op, " (materialized): cublasSetMathMode failed: ", cublasGetStatusName(mst));
  }
  handles->emplace(dev, h);
  return h;
}

// The module's cuBLAS handle for one call: set to the stream, with a workspace of its own from the
// stream-ordered pool (so that calls on different streams never share cuBLAS scratch).
class Blas {
 public:
  Blas(const char* op, cudaStream_t stream)
      : op_(op), handle_(handle_for_current_device(op)), ws_(kCublasWorkspaceBytes, stream, "the cuBLAS workspace") {
    check(cublasSetStream(handle_, stream), "cublasSetStream");
    check(cublasSetWorkspace(handle_, ws_.get(), kCublasWorkspaceBytes), "cublasSetWorkspace");
  }

  // Column-major C [m, n] = alpha op(A) op(B) + beta C for `batch` matrices at element strides
  // sa, sb, sc; compute and scale in fp32.
  void gemm(const char* what, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* A,
            DType a_type, int64_t lda, int64_t sa, const void* B, DType b_type, int64_t ldb, int64_t sb, float beta,
            void* C, DType c_type, int64_t ldc, int64_t sc, int64_t batch) {
    RT_CHECK(m <= kMaxInt && n <= kMaxInt && k <= kMaxInt && lda <= kMaxInt && ldb <= kMaxInt && ldc <= kMaxInt &&
                 batch <= kMaxInt,
             op_, " (materialized): GEMM ", what, " is too large for cuBLAS (m ", m, ", n ", n, ", k ", k, ", lda ",
             lda, ", ldb ", ldb, ", ldc ", ldc, ", batch ", batch, ")");
    if (m == 0 || n == 0 || batch == 0) return;
    const cublasStatus_t st = cublasGemmStridedBatchedEx(
        handle_, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(m),
        static_cast<int>(n), static_cast<int>(k), &alpha, A, cuda_type(a_type), static_cast<int>(lda), sa, B,
        cuda_type(b_type), static_cast<int>(ldb), sb, &beta, C, c_type == DType::F32 ? CUDA_R_32F : CUDA_R_16BF,
        static_cast<int>(ldc), sc, static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
      fail(op_, " (materialized): cublasGemmStridedBatchedEx (", what, ") failed: ", cublasGetStatusName(st), " (",
           cublasGetStatusString(st), "); m ", m, ", n ", n, ", k ", k, ", lda ", lda, ", ldb ", ldb, ", ldc ", ldc,
           ", batch ", batch, ", ", dtype_name(a_type), " x ", dtype_name(b_type), " -> ", dtype_name(c_type));
  }

 private:
  void check(cublasStatus_t st, const char* call) {
    if (st != CUBLAS_STATUS_SUCCESS)
      fail(op_, " (materialized): ", call, " failed: ", cublasGetStatusName(st), " (", cublasGetStatusString(st), ")");
  }
  const char* op_;
  cublasHandle_t handle_;
  Scratch ws_;
};

// ---- argument checks -----------------------------------------------------------------------------

// A [T, heads, head_dim] cuda view of dtype `want` (q's), int-sized, contiguous last dimension,
// rows of a head not overlapping.
void check_thd(const char* op, const char* arg, const TensorView& v, DType want) {
  RT_CHECK(v.device == Device::CUDA, op, ": argument '", arg, "' must be on device cuda, found ",
           device_name(v.device));
  RT_CHECK(v.ndim == 3, op, ": argument '", arg, "' must have 3 dimensions [T, heads, head_dim], found shape ",
           v.shape_str());
  for (int i = 0; i < 3; ++i) {
    RT_CHECK(v.shape[i] >= 0 && v.shape[i] <= kMaxInt, op, ": argument '", arg,
             "' has a dimension out of range (0..", kMaxInt, "), shape ", v.shape_str());
    RT_CHECK(v.stride[i] >= 0, op, ": argument '", arg, "' must have non-negative strides, found [", v.stride[0],
             ", ", v.stride[1], ", ", v.stride[2], "]");
  }
  RT_CHECK(v.dtype == want, op, ": argument '", arg, "' must have dtype ", dtype_name(want),
           " (that of 'q'; the materialized path takes one dtype for every tensor), found ", dtype_name(v.dtype));
  RT_CHECK(v.shape[2] <= 1 || v.stride[2] == 1, op, ": argument '", arg,
           "' must have a contiguous last dimension (stride 1), found stride ", v.stride[2], " for shape ",
           v.shape_str());
  RT_CHECK(v.shape[0] <= 1 || (v.stride[0] >= v.shape[2] && v.stride[0] <= kMaxInt), op, ": argument '", arg,
           "' must have a row stride between head_dim (", v.shape[2], ") and ", kMaxInt, ", found ", v.stride[0],
           " for shape ", v.shape_str());
  RT_CHECK(v.data != nullptr || v.numel() == 0, op, ": argument '", arg, "' has no data (null pointer) for shape ",
           v.shape_str());
}

void check_shape(const char* op, const char* arg, const TensorView& v, const char* like_name, const TensorView& like) {
  RT_CHECK(v.shape[0] == like.shape[0] && v.shape[1] == like.shape[1] && v.shape[2] == like.shape[2], op,
           ": argument '", arg, "' must have the shape of '", like_name, "' ", like.shape_str(), ", found ",
           v.shape_str());
}

void check_lse(const char* op, const TensorView& lse, int64_t Hq, int64_t Tq) {
  RT_CHECK(lse.device == Device::CUDA && lse.dtype == DType::F32 && lse.ndim == 2 && lse.shape[0] == Hq &&
               lse.shape[1] == Tq && lse.is_contiguous(),
           op, ": argument 'lse' must be a contiguous f32 cuda tensor of shape [", Hq, ", ", Tq, "], found ",
           dtype_name(lse.dtype), " ", device_name(lse.device), " ", lse.shape_str(),
           lse.is_contiguous() ? "" : " (not contiguous)");
  check_device_pointer(op, "lse", lse);
}

// Common checks of q, k, v (and the spec); returns the GQA group size (0 when Hkv == 0).
int64_t check_qkv(const char* op, const TensorView& q, const TensorView& k, const TensorView& v,
                  const AttentionSpec& spec) {
  RT_CHECK(q.dtype == DType::BF16 || q.dtype == DType::F32, op, ": argument 'q' must have dtype bf16 or f32 (",
           "the materialized path), found ", dtype_name(q.dtype));
  check_thd(op, "q", q, q.dtype);
  check_thd(op, "k", k, q.dtype);
  check_thd(op, "v", v, q.dtype);
  RT_CHECK(k.shape[2] == q.shape[2], op, ": argument 'k' dimension 2 (head dim) must be ", q.shape[2],
           " (q.shape[2]), found shape ", k.shape_str());
  check_shape(op, "v", v, "k", k);
  const int64_t Hq = q.shape[1], Hkv = k.shape[1];
  RT_CHECK(Hkv > 0 || Hq == 0, op, ": argument 'k' has 0 heads (shape ", k.shape_str(), ") but q has ", Hq);
  RT_CHECK(Hkv == 0 || Hq % Hkv == 0, op, ": query heads (", Hq, ", q shape ", q.shape_str(),
           ") must be a multiple of KV heads (", Hkv, ", k shape ", k.shape_str(), ")");
  RT_CHECK(spec.window >= 0, op, ": window must be >= 0 (0: none), found ", spec.window);
  RT_CHECK(std::isfinite(spec.scale), op, ": scale must be finite, found ", spec.scale);
  return Hkv > 0 ? Hq / Hkv : 0;
}

float scale_of(const AttentionSpec& spec, int64_t D) {
  return spec.scale != 0.f ? spec.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(D, 1))));
}

size_t limit_bytes() {
  const size_t l = g_workspace_limit.load(std::memory_order_relaxed);
  return l == 0 ? kDefaultWorkspaceLimit : l;
}

// Query rows per chunk: the most whose workspaces (bytes_per_score per score) fit the limit, >= 1.
int64_t chunk_rows(const char* op, int64_t Tq, int64_t Hq, int64_t Tk, size_t bytes_per_score) {
  const double per_row = static_cast<double>(Hq) * static_cast<double>(Tk) * static_cast<double>(bytes_per_score);
  const int64_t by_limit = static_cast<int64_t>(std::min(static_cast<double>(Tq), static_cast<double>(limit_bytes()) / per_row));
  const int64_t nc = std::clamp<int64_t>(by_limit, 1, Tq);
  RT_CHECK(Hq * nc <= kMaxInt, op, " (materialized): too many (head, row) pairs per chunk (", Hq, " x ", nc, ")");
  return nc;
}

// Scores of rows [i0, i0 + nc) for every head: S_h = alpha * A_h B_g^T, A = q or dout (query side,
// [Tq, Hq, D]), B = k or v ([Tk, Hkv, D]), into S [Hq, nc, Tk] f32.
void scores_gemm(Blas& blas, const char* what, const TensorView& a, const TensorView& b, int64_t i0, int64_t nc,
                 int64_t group, float alpha, float* S) {
  const int64_t Tk = b.shape[0], Hkv = b.shape[1], D = b.shape[2];
  for (int64_t j = 0; j < group; ++j)
    blas.gemm(what, /*ta=*/true, /*tb=*/false, Tk, nc, D, alpha, b.data, b.dtype, ld_of(b), b.stride[1],
              at(a, i0, j), a.dtype, ld_of(a), group * a.stride[1], 0.f, S + j * nc * Tk, DType::F32, Tk,
              group * nc * Tk, Hkv);
}

}  // namespace

void set_dense_attention_workspace_limit(size_t bytes) { g_workspace_limit.store(bytes, std::memory_order_relaxed); }
size_t dense_attention_workspace_limit() { return limit_bytes(); }

// ---- forward -------------------------------------------------------------------------------------

void dense_attention_forward(const char* op, TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                             const AttentionSpec& spec, cudaStream_t stream) {
  const int64_t group = check_qkv(op, q, k, v, spec);
  check_thd(op, "o", o, q.dtype);
  check_shape(op, "o", o, "q", q);
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2], Tk = k.shape[0], Hkv = k.shape[1];
  const bool want_lse = lse.data != nullptr;
  if (want_lse) check_lse(op, lse, Hq, Tq);
  const std::pair<const char*, const TensorView*> ins[] = {{"q", &q}, {"k", &k}, {"v", &v}};
  for (const auto& [name, t] : ins) {
    RT_CHECK(!views_overlap(o, *t), op, ": output 'o' overlaps input '", name, "'");
    if (want_lse) RT_CHECK(!views_overlap(lse, *t), op, ": output 'lse' overlaps input '", name, "'");
  }
  if (want_lse) RT_CHECK(!views_overlap(lse, o), op, ": outputs 'lse' and 'o' overlap");
  for (const auto& [name, t] : ins) check_device_pointer(op, name, *t);
  check_device_pointer(op, "o", o);
  if (Tq == 0 || Hq == 0) return;
  float* lse_ptr = want_lse ? static_cast<float*>(lse.data) : nullptr;
  if (Tk == 0) {  // no row sees a key
    zero_view(op, o, stream);
    if (want_lse) fill_f32(op, lse_ptr, INFINITY, Hq * Tq, stream);
    return;
  }

  std::lock_guard<std::mutex> lock(module_mutex());
  Blas blas(op, stream);
  const float scale = scale_of(spec, D);
  const size_t es = dtype_size(q.dtype);
  const int64_t nc = chunk_rows(op, Tq, Hq, Tk, 4 + es);
  const size_t scores = static_cast<size_t>(Hq * nc) * static_cast<size_t>(Tk);
  Scratch s_buf(scores * 4, stream, "the materialized attention scores");
  Scratch p_buf(scores * es, stream, "the materialized attention probabilities");
  float* S = static_cast<float*>(s_buf.get());
  SoftmaxFwdParams sp{};
  sp.S = S;
  sp.P = p_buf.get();
  sp.lse = lse_ptr;
  sp.Tk = Tk;
  sp.Tq = Tq;
  sp.mask = mask_of(spec, Tk);
  for (int64_t i0 = 0; i0 < Tq; i0 += nc) {
    const int64_t n = std::min(nc, Tq - i0);
    // S = scale * Q K^T (zeros when there are no features: every visible score is 0).
    if (D > 0) scores_gemm(blas, "scores = scale * q k^T", q, k, i0, n, group, scale, S);
    else CUDA_CHECK(cudaMemsetAsync(S, 0, static_cast<size_t>(Hq * n * Tk) * 4, stream));
    sp.nc = n;
    sp.i0 = i0;
    const unsigned rows = static_cast<unsigned>(Hq * n);
    if (q.dtype == DType::F32) dense_softmax_fwd_kernel<float><<<rows, kThreads, 0, stream>>>(sp);
    else dense_softmax_fwd_kernel<bf16><<<rows, kThreads, 0, stream>>>(sp);
    check_launch(op, "dense_softmax_fwd_kernel");
    if (D == 0) continue;
    // O_h = P_h V_g: column-major O^T [D, n] = V^T [D, Tk] P^T [Tk, n].
    const char* P = static_cast<const char*>(p_buf.get());
    for (int64_t j = 0; j < group; ++j)
      blas.gemm("o = p v", false, false, D, n, Tk, 1.f, v.data, v.dtype, ld_of(v), v.stride[1],
                P + static_cast<size_t>(j * n * Tk) * es, q.dtype, Tk, group * n * Tk, 0.f, at_mut(o, i0, j), o.dtype,
                ld_of(o), group * o.stride[1], Hkv);
  }
}

// ---- backward ------------------------------------------------------------------------------------

void dense_attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                              TensorView dout, TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec,
                              cudaStream_t stream) {
  const char* op = "attention_backward";
  const int64_t group = check_qkv(op, q, k, v, spec);
  check_thd(op, "o", o, q.dtype);
  check_shape(op, "o", o, "q", q);
  check_thd(op, "dout", dout, q.dtype);
  check_shape(op, "dout", dout, "q", q);
  const bool want_dq = dq.data != nullptr, want_dk = dk.data != nullptr, want_dv = dv.data != nullptr;
  if (want_dq) {
    check_thd(op, "dq", dq, q.dtype);
    check_shape(op, "dq", dq, "q", q);
  }
  if (want_dk) {
    check_thd(op, "dk", dk, q.dtype);
    check_shape(op, "dk", dk, "k", k);
  }
  if (want_dv) {
    check_thd(op, "dv", dv, q.dtype);
    check_shape(op, "dv", dv, "k", k);
  }
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2], Tk = k.shape[0], Hkv = k.shape[1];
  const bool have_lse = lse.data != nullptr;
  if (have_lse) check_lse(op, lse, Hq, Tq);
  {
    const std::pair<const char*, const TensorView*> outs[] = {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}};
    const std::pair<const char*, const TensorView*> ins[] = {{"q", &q}, {"k", &k},     {"v", &v},
                                                             {"o", &o}, {"lse", &lse}, {"dout", &dout}};
    for (const auto& [on, ov] : outs) {
      if (ov->data == nullptr) continue;
      for (const auto& [in, iv] : ins)
        RT_CHECK(iv->data == nullptr || !views_overlap(*ov, *iv), op, ": output '", on, "' overlaps input '", in, "'");
      for (const auto& [on2, ov2] : outs)
        RT_CHECK(ov == ov2 || ov2->data == nullptr || !views_overlap(*ov, *ov2), op, ": outputs '", on, "' and '", on2,
                 "' overlap");
    }
    for (const auto& [name, t] : ins)
      if (t != &lse) check_device_pointer(op, name, *t);
    for (const auto& [name, t] : outs)
      if (t->data != nullptr) check_device_pointer(op, name, *t);
  }
  if (!want_dq && !want_dk && !want_dv) return;
  if (D == 0) return;  // every gradient is empty
  if (Tq == 0 || Hq == 0 || Tk == 0) {  // no query sees a key: every gradient is zero
    if (want_dq) zero_view(op, dq, stream);
    if (want_dk) zero_view(op, dk, stream);
    if (want_dv) zero_view(op, dv, stream);
    return;
  }

  std::lock_guard<std::mutex> lock(module_mutex());
  Blas blas(op, stream);
  const float scale = scale_of(spec, D);
  const DType dt = q.dtype;
  const size_t es = dtype_size(dt);
  // S and dP f32, P and dS in the input dtype.
  const int64_t nc = chunk_rows(op, Tq, Hq, Tk, 8 + 2 * es);
  const size_t scores = static_cast<size_t>(Hq * nc) * static_cast<size_t>(Tk);
  Scratch s_buf(scores * 4, stream, "the materialized attention scores");
  Scratch dp_buf(scores * 4, stream, "the materialized attention dP");
  Scratch p_buf(want_dv ? scores * es : 0, stream, "the materialized attention probabilities");
  Scratch ds_buf(scores * es, stream, "the materialized attention dS");
  // dK, dV accumulators [Hkv, Tk, D] f32 (head g's [Tk, D] block at g * Tk * D).
  const size_t kv_elems = static_cast<size_t>(Hkv * Tk * D);
  Scratch dk_acc(want_dk ? kv_elems * 4 : 0, stream, "the materialized attention dk accumulator");
  Scratch dv_acc(want_dv ? kv_elems * 4 : 0, stream, "the materialized attention dv accumulator");
  if (want_dk) CUDA_CHECK(cudaMemsetAsync(dk_acc.get(), 0, kv_elems * 4, stream));
  if (want_dv) CUDA_CHECK(cudaMemsetAsync(dv_acc.get(), 0, kv_elems * 4, stream));
  float* S = static_cast<float*>(s_buf.get());
  float* dP = static_cast<float*>(dp_buf.get());
  const char* P = static_cast<const char*>(p_buf.get());
  const char* dS = static_cast<const char*>(ds_buf.get());

  SoftmaxBwdParams bp{};
  bp.S = S;
  bp.dP = dP;
  bp.lse = have_lse ? static_cast<const float*>(lse.data) : nullptr;
  bp.o = o.data;
  bp.dout = dout.data;
  bp.o_row = o.stride[0], bp.o_head = o.stride[1];
  bp.do_row = dout.stride[0], bp.do_head = dout.stride[1];
  bp.D = D;
  bp.P = want_dv ? p_buf.get() : nullptr;
  bp.dS = ds_buf.get();
  bp.Tk = Tk;
  bp.Tq = Tq;
  bp.mask = mask_of(spec, Tk);

  for (int64_t i0 = 0; i0 < Tq; i0 += nc) {
    const int64_t n = std::min(nc, Tq - i0);
    scores_gemm(blas, "scores = scale * q k^T", q, k, i0, n, group, scale, S);
    scores_gemm(blas, "dp = dout v^T", dout, v, i0, n, group, 1.f, dP);
    bp.nc = n;
    bp.i0 = i0;
    const unsigned rows = static_cast<unsigned>(Hq * n);
    if (dt == DType::F32) dense_softmax_bwd_kernel<float><<<rows, kThreads, 0, stream>>>(bp);
    else dense_softmax_bwd_kernel<bf16><<<rows, kThreads, 0, stream>>>(bp);
    check_launch(op, "dense_softmax_bwd_kernel");
    for (int64_t j = 0; j < group; ++j) {
      const size_t off = static_cast<size_t>(j * n * Tk) * es;  // head j's [n, Tk] block (batch 0)
      // dQ_h = scale * dS_h K_g: column-major dQ^T [D, n] = K^T [D, Tk] dS^T [Tk, n].
      if (want_dq)
        blas.gemm("dq = scale * ds k", false, false, D, n, Tk, scale, k.data, dt, ld_of(k), k.stride[1], dS + off, dt,
                  Tk, group * n * Tk, 0.f, at_mut(dq, i0, j), dt, ld_of(dq), group * dq.stride[1], Hkv);
      // dK_g += scale * dS_h^T Q_h: column-major dK^T [D, Tk] += Q^T [D, n] dS [n, Tk].
      if (want_dk)
        blas.gemm("dk += scale * ds^T q", false, true, D, Tk, n, scale, at(q, i0, j), dt, ld_of(q),
                  group * q.stride[1], dS + off, dt, Tk, group * n * Tk, 1.f, dk_acc.get(), DType::F32, D, Tk * D, Hkv);
      // dV_g += P_h^T dO_h: column-major dV^T [D, Tk] += dO^T [D, n] P [n, Tk].
      if (want_dv)
        blas.gemm("dv += p^T dout", false, true, D, Tk, n, 1.f, at(dout, i0, j), dt, ld_of(dout),
                  group * dout.stride[1], P + off, dt, Tk, group * n * Tk, 1.f, dv_acc.get(), DType::F32, D, Tk * D,
                  Hkv);
    }
  }
  if (want_dk) convert_into(op, static_cast<const float*>(dk_acc.get()), dk, stream);
  if (want_dv) convert_into(op, static_cast<const float*>(dv_acc.get()), dv, stream);
}

}  // namespace rt::cuda
