// Host-side pieces shared by the attention forward and backward launchers (attention.cu,
// attention_backward.cu): argument checks that name the op, shared-memory opt-in, SM count,
// and the AttentionSpec -> mask-trait dispatch. `op` starts every error message.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <limits>

#include "cuda/attention/flash_attention.cuh"
#include "cuda/check.h"
#include "rt/sdk/error.h"
#include "rt/sdk/ops.h"

namespace rt::cuda::attn_launch {

inline void check_cuda(const char* op, cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear a sticky launch error so later calls see their own
    fail(op, ": ", what, " failed: ", cudaGetErrorString(err), " (", cudaGetErrorName(err), ")");
  }
}

inline void check_launch(const char* op, const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    fail(op, ": launching ", kernel, " failed: ", cudaGetErrorString(err), " (", cudaGetErrorName(err), ")");
}

inline constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();

// [T, heads, head_dim] on the device, int32-sized, non-negative strides, contiguous last dim.
inline void check_view(const char* op, const char* arg, const TensorView& v) {
  RT_CHECK(v.device == Device::CUDA, op, ": argument '", arg, "' must be on device cuda, found ",
           device_name(v.device));
  RT_CHECK(v.ndim == 3, op, ": argument '", arg, "' must have 3 dimensions [T, heads, head_dim], found shape ",
           v.shape_str());
  for (int i = 0; i < 3; ++i) {
    RT_CHECK(v.shape[i] >= 0 && v.shape[i] <= kMaxInt, op, ": argument '", arg,
             "' has a dimension out of range, shape ", v.shape_str());
    RT_CHECK(v.stride[i] >= 0, op, ": argument '", arg, "' has a negative stride");
  }
  RT_CHECK(v.shape[2] <= 1 || v.stride[2] == 1, op, ": argument '", arg,
           "' must have a contiguous last dimension (stride 1), found stride ", v.stride[2], " for shape ",
           v.shape_str());
  RT_CHECK(v.data != nullptr || v.numel() == 0, op, ": argument '", arg, "' has no data (null pointer) for shape ",
           v.shape_str());
}

// True while `stream` is being captured into a graph.
inline bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(stream, &st) == cudaSuccess && st == cudaStreamCaptureStatusActive;
}

// bf16 paths: cp.async moves 16-byte chunks, so rows must start on 16-byte boundaries.
inline void check_align16(const char* op, const char* arg, const TensorView& v) {
  if (v.numel() == 0) return;
  const bool ok = reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && (v.shape[0] <= 1 || v.stride[0] % 8 == 0) &&
                  (v.shape[1] <= 1 || v.stride[1] % 8 == 0);
  RT_CHECK(ok, op, " bf16: argument '", arg,
           "' must have 16-byte aligned rows (data pointer 16-byte aligned, strides multiples of 8 elements); "
           "found strides [",
           v.stride[0], ", ", v.stride[1], ", ", v.stride[2], "]");
}

// Raises a kernel's dynamic shared-memory limit once per device (cudaFuncSetAttribute is a host
// call per launch otherwise, which shows in decode loops).
template <auto Kernel>
void ensure_smem(const char* op, int bytes, const char* what) {
  static std::atomic<uint64_t> done{0};
  int dev = 0;
  check_cuda(op, cudaGetDevice(&dev), "cudaGetDevice");
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (bit != 0 && (done.load(std::memory_order_relaxed) & bit) != 0) return;
  check_cuda(op, cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), what);
  done.fetch_or(bit, std::memory_order_relaxed);
}

inline int num_sms() {
  static std::atomic<int> cached[64] = {};
  int dev = 0, n = 0;
  check_cuda("attention", cudaGetDevice(&dev), "cudaGetDevice");
  if (dev >= 0 && dev < 64 && (n = cached[dev].load(std::memory_order_relaxed)) > 0) return n;
  check_cuda("attention", cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  n = n > 0 ? n : 1;
  if (dev >= 0 && dev < 64) cached[dev].store(n, std::memory_order_relaxed);
  return n;
}

// A routed spec (AttentionSpec::q_index / q_count): the index I32 [>= Tq] contiguous and the count
// I32 [1], both on the device. Their values stay there (read by the kernels).
inline void check_routed(const char* op, const AttentionSpec& spec, int64_t Tq, bool capturing_now) {
  if (!spec.routed()) {
    RT_CHECK(spec.q_count.data == nullptr, op, ": 'q_count' is given without 'q_index'");
    spec.check_routed_options(op, false);
    return;
  }
  const TensorView& ix = spec.q_index;
  const TensorView& n = spec.q_count;
  RT_CHECK(ix.device == Device::CUDA && ix.dtype == DType::I32 && ix.ndim == 1 && ix.is_contiguous() &&
               ix.shape[0] >= Tq,
           op, ": routed 'q_index' must be a contiguous I32 cuda tensor of at least Tq = ", Tq, " entries, found ",
           dtype_name(ix.dtype), " ", device_name(ix.device), " ", ix.shape_str());
  RT_CHECK(n.data != nullptr && n.device == Device::CUDA && n.dtype == DType::I32 && n.numel() == 1, op,
           ": routed 'q_count' must be an I32 [1] cuda tensor, found ", n.data ? dtype_name(n.dtype) : "none", " ",
           device_name(n.device), " ", n.shape_str());
  if (!capturing_now) {
    check_device_pointer(op, "q_index", ix);
    check_device_pointer(op, "q_count", n);
  }
}

// Calls fn(Mask{}) with the mask type of the spec.
template <class Fn>
void with_mask(const AttentionSpec& spec, Fn&& fn) {
  if (spec.causal && spec.window > 0) fn(attn::SlidingWindowMask{});
  else if (spec.causal) fn(attn::CausalMask{});
  else if (spec.window > 0) fn(attn::WindowOnlyMask{});
  else fn(attn::FullMask{});
}

inline attn::MaskParams mask_params(const AttentionSpec& spec, int64_t Tk) {
  attn::MaskParams m;
  m.q_pos0 = spec.q_pos0;
  m.k_pos0 = spec.k_pos0;
  m.window = spec.window;
  m.Tk = static_cast<int>(Tk);
  return m;
}

struct Shapes {
  int64_t Tq, Hq, D, Tk, Hkv;
  float scale;
};


// The forward kernels' parameters (flash_fwd_kernel and the Hopper kernel) for query blocks of
// block_m rows.
inline attn::FwdParams fwd_params(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                  float* lse, const AttentionSpec& spec, const Shapes& s, int block_m) {
  using bf16 = attn::bf16;
  attn::FwdParams p{};
  p.q = static_cast<const bf16*>(q.data);
  p.k = static_cast<const bf16*>(k.data);
  p.v = static_cast<const bf16*>(v.data);
  p.o = static_cast<bf16*>(o.data);
  p.lse = lse;
  p.q_row = q.stride[0], p.q_head = q.stride[1];
  p.k_row = k.stride[0], p.k_head = k.stride[1];
  p.v_row = v.stride[0], p.v_head = v.stride[1];
  p.o_row = o.stride[0], p.o_head = o.stride[1];
  p.Tq = static_cast<int>(s.Tq), p.Tk = static_cast<int>(s.Tk);
  p.Hq = static_cast<int>(s.Hq), p.Hkv = static_cast<int>(s.Hkv);
  p.group = static_cast<int>(s.Hq / s.Hkv);
  // Routed rows stack the query heads of a GQA group into a CTA's rows (one CTA per KV head).
  const int64_t block_rows = spec.routed() ? s.Tq * (s.Hq / s.Hkv) : s.Tq;
  RT_CHECK(block_rows <= kMaxInt, "attention (cuda): too many query rows (", block_rows, ")");
  p.num_m_blocks = static_cast<int>((block_rows + block_m - 1) / block_m);
  p.scale_log2 = s.scale * 1.4426950408889634f;
  p.mask = mask_params(spec, s.Tk);
  RT_CHECK(p.num_m_blocks <= 65535, "attention (cuda): Tq = ", s.Tq, " is too long for one launch (max ",
           65535 * block_m, ")");
  p.q_index = static_cast<const int32_t*>(spec.q_index.data);
  p.q_count = static_cast<const int32_t*>(spec.q_count.data);
  p.q_indexed = spec.q_indexed;
  p.inactive_unwritten = spec.inactive_unwritten;
  return p;
}

}  // namespace rt::cuda::attn_launch
