// Attention backward on the CUDA device: argument checks, workspaces, launches. The bf16 kernels are
// in flash_attention_bwd.cuh; the fp32 path (plain exact kernels for reference comparisons) is here.
#include "cuda/attention/attention_backward.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "cuda/attention/flash_attention_bwd.cuh"
#include "cuda/attention/attention_launch.h"
#include "cuda/attention/flash_attention_bwd_dq.cuh"
#include "cuda/attention/flash_bwd_hopper.h"
#include "cuda/attention/flash_fwd_hopper.h"
#include "cuda/memory.h"
#include "rt/sdk/error.h"

namespace rt::cuda {
namespace attn_launch {
KernelPath bwd_path_setting() {
  static const KernelPath path = kernel_path_from_env("RT_ATTN_BWD");
  return path;
}
}  // namespace attn_launch

namespace {

using attn::bf16;

constexpr const char* kOp = "attention_backward (cuda)";

// Thin forms of the shared checks (cuda/attention/attention_launch.h) with this file's op name.
void check_cuda(cudaError_t err, const char* what) { attn_launch::check_cuda(kOp, err, what); }
void check_launch(const char* kernel) { attn_launch::check_launch(kOp, kernel); }
void check_view(const char* arg, const TensorView& v) { attn_launch::check_view(kOp, arg, v); }
void check_device_pointer(const char* arg, const TensorView& v) { cuda::check_device_pointer(kOp, arg, v); }
void check_align16(const char* arg, const TensorView& v) { attn_launch::check_align16(kOp, arg, v); }
template <auto Kernel>
void ensure_smem(int bytes, const char* what) { attn_launch::ensure_smem<Kernel>(kOp, bytes, what); }
using attn_launch::kMaxInt;
using attn_launch::mask_params;
using attn_launch::num_sms;
using attn_launch::Shapes;
using attn_launch::with_mask;
// 4-byte aligned element pairs (bf16x2 loads / stores).
void check_align4(const char* arg, const TensorView& v) {
  if (v.numel() == 0) return;
  RT_CHECK(reinterpret_cast<uintptr_t>(v.data) % 4 == 0 && v.stride[0] % 2 == 0 && v.stride[1] % 2 == 0, kOp,
           " bf16: argument '", arg, "' must have 4-byte aligned rows (even strides)");
}


// Zeroes a strided [T, H, D] view (elements of `elem` bytes, 2 or 4).
template <class T>
__global__ void zero_kernel(T* p, int64_t row, int64_t head, int Tn, int H, int D) {
  const int64_t n = static_cast<int64_t>(Tn) * H * D;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(idx % D);
    const int64_t th = idx / D;
    p[(th / H) * row + (th % H) * head + d] = T{};
  }
}

void zero_view(const TensorView& t, cudaStream_t stream) {
  if (t.numel() == 0) return;
  const int64_t n = t.numel();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
  const int Tn = static_cast<int>(t.shape[0]), H = static_cast<int>(t.shape[1]), D = static_cast<int>(t.shape[2]);
  if (t.dtype == DType::F32)
    zero_kernel<float><<<blocks, 256, 0, stream>>>(static_cast<float*>(t.data), t.stride[0], t.stride[1], Tn, H, D);
  else
    zero_kernel<uint16_t><<<blocks, 256, 0, stream>>>(static_cast<uint16_t*>(t.data), t.stride[0], t.stride[1], Tn, H,
                                                      D);
  check_launch("zero_kernel");
}


void launch_convert(const float* src, const TensorView& dst, float mul, cudaStream_t stream, int parts = 1,
                    int64_t part_stride = 0) {
  attn::BwdConvertParams c{};
  c.parts = parts;
  c.part_stride = part_stride;
  c.src = src;
  c.dst = static_cast<bf16*>(dst.data);
  c.dst_row = dst.stride[0], c.dst_head = dst.stride[1];
  c.T = static_cast<int>(dst.shape[0]), c.H = static_cast<int>(dst.shape[1]), c.D = static_cast<int>(dst.shape[2]);
  c.mul = mul;
  const int64_t pairs = dst.numel() / 2;
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((pairs + 255) / 256, 8192)));
  attn::flash_bwd_convert_kernel<<<blocks, 256, 0, stream>>>(c);
  check_launch("flash_bwd_convert_kernel");
}

// ------------------------------------------------------------------------------------------------
// bf16: preprocess + flash backward + convert

// Keys per CTA (16 per warp) and query rows per step. Override with -DRT_ATTN_BWD_D64_BN=... etc.
#ifndef RT_ATTN_BWD_D64_BN
#define RT_ATTN_BWD_D64_BN 128
#endif
#ifndef RT_ATTN_BWD_D64_BM
#define RT_ATTN_BWD_D64_BM 64
#endif
#ifndef RT_ATTN_BWD_D128_BN
#define RT_ATTN_BWD_D128_BN 64
#endif
#ifndef RT_ATTN_BWD_D128_BM
#define RT_ATTN_BWD_D128_BM 64
#endif
template <int kD>
struct BwdDqCfgFor {
  using type = attn::BwdDqConfig<kD, 64, kD == 64 ? 64 : 32>;
};
template <int kD>
struct BwdCfgFor;
template <>
struct BwdCfgFor<64> {
  using type = attn::BwdConfig<64, RT_ATTN_BWD_D64_BM, RT_ATTN_BWD_D64_BN>;
};
template <>
struct BwdCfgFor<128> {
  using type = attn::BwdConfig<128, RT_ATTN_BWD_D128_BM, RT_ATTN_BWD_D128_BN>;
};

// The Hopper backward kernels (flash_bwd_hopper.h): the default on sm_90 at both head dims. H100,
// 0.5B/1.5B shapes (bench_attention_bwd, one call): 1.44x the mma.sync kernels at head dim 128
// (27.4 against 39.5 ms at 1.5B and 32K causal) and 1.09-1.11x at head dim 64 (25.4 against
// 28.2 ms at 32K), once the dK/dV kernel stopped reading each query tile's statistics from global
// memory between its products (it ran 0.58x of mma.sync at head dim 64 before).
// RT_ATTN_BWD=wgmma forces them (an error where they cannot run), RT_ATTN_BWD=mma forbids them.
// Only the deterministic backward has them (no fused, atomic dQ).
bool hopper_backward_selected(const Shapes& s, int D) {
  const attn_launch::KernelPath path = attn_launch::bwd_path_setting();
  if (path == attn_launch::KernelPath::Mma || s.Tq == 0 || s.Tk == 0) return false;
#if RT_HAVE_SM90A
  if (path == attn_launch::KernelPath::Auto) return (D == 64 || D == 128) && attn_launch::hopper_forward_available();
  RT_CHECK(attn_launch::hopper_forward_available(), kOp,
           ": RT_ATTN_BWD=wgmma needs a GPU of compute capability 9.0 (Hopper)");
  return true;
#else
  (void)D;
  if (path == attn_launch::KernelPath::Auto) return false;
  fail(kOp, ": RT_ATTN_BWD=wgmma: this build has no sm_90a kernels (RT_CUDA_ARCHS without 90)");
#endif
}

template <int kD>
void launch_flash_bwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                      const TensorView& lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                      const TensorView& dv, const AttentionSpec& spec, const Shapes& s, int group_splits,
                      cudaStream_t stream) {
  using Cfg = typename BwdCfgFor<kD>::type;
  const int64_t group = s.Hq / s.Hkv;
  const bool fused_dq = !spec.routed() && !attention_deterministic();
  const bool hopper = !fused_dq && hopper_backward_selected(s, kD);
  // Statistics rows padded to whole query tiles of the kernels that run: the Hopper dK/dV kernel
  // bulk-copies a tile's worth.
  const int64_t stat_pad = hopper ? std::max<int64_t>(Cfg::kBlockM, attn_launch::kHopperBwdStatRows) : Cfg::kBlockM;
  const int64_t Tq_pad = (s.Tq + stat_pad - 1) / stat_pad * stat_pad;
  RT_CHECK(Tq_pad * s.Hq <= kMaxInt && s.Tk * s.Hkv <= kMaxInt, kOp, ": sequence too long (Tq ", s.Tq, ", Tk ", s.Tk,
           ")");
  const int64_t block_n = hopper ? attn_launch::kHopperBwdBlockN : Cfg::kBlockN;
  const int64_t n_blocks = (s.Tk + block_n - 1) / block_n;
  RT_CHECK(s.Hkv <= 65535 && s.Hq <= 65535, kOp, ": too many heads (", s.Hq, " query, ", s.Hkv, " KV)");

  // Split the GQA group over CTAs when there are too few (KV block, KV head) pairs to fill the GPU.
  const int64_t ctas = n_blocks * s.Hkv;
  const int64_t target = 2 * static_cast<int64_t>(num_sms());
  int64_t splits = std::clamp<int64_t>(group_splits > 0 ? group_splits : (target + ctas - 1) / ctas, 1, group);
  const int64_t hps = (group + splits - 1) / splits;
  splits = (group + hps - 1) / hps;
  using DqCfg = typename BwdDqCfgFor<kD>::type;
  static_assert(DqCfg::kBlockM == Cfg::kBlockM, "dQ pass reads statistics padded to the backward's BlockM");

  // The Hopper tall tile may accumulate dQ itself, in key-block order ([Hq][Tq_pad][D], and a turn
  // counter per query tile).
  bool hopper_dq = false, dq_unordered = false;
#if RT_HAVE_SM90A
  if (hopper) hopper_dq = attn_launch::hopper_bwd_fuses_dq(kD, spec);
  dq_unordered = hopper_dq && attn_launch::hopper_bwd_dq_unordered();
#endif
  const size_t dq_elems = fused_dq ? static_cast<size_t>(s.Tq * s.Hq * kD)
                          : hopper_dq ? static_cast<size_t>(s.Hq * Tq_pad * kD)
                                      : 0;
  // (rounded to 128 bytes: the statistics after it are bulk-copied, from 16-byte aligned rows)
  const size_t lock_elems =
      hopper_dq ? (static_cast<size_t>(s.Hq * (Tq_pad / attn_launch::kHopperBwdStatRows)) + 31) / 32 * 32 : 0;
  const size_t stat_elems = static_cast<size_t>(s.Hq * Tq_pad);
  const size_t plane = static_cast<size_t>(s.Tk * s.Hkv * kD);
  const size_t dkv_elems = splits > 1 ? static_cast<size_t>(splits) * 2 * plane : 0;  // a slice per split
  Scratch ws((dq_elems + lock_elems + 2 * stat_elems + dkv_elems) * sizeof(float), stream,
             "the attention backward's workspace");
  float* dq_accum = static_cast<float*>(ws.get());
  int* dq_lock = reinterpret_cast<int*>(dq_accum + dq_elems);
  float* lse2 = dq_accum + dq_elems + lock_elems;
  float* delta = lse2 + stat_elems;
  float* dkv_accum = splits > 1 ? delta + stat_elems : nullptr;
  // The mma.sync fused dQ adds into a zeroed accumulator (so does the Hopper one unordered); the
  // Hopper one stores its first partial of a tile, so only its turn counters start at 0.
  if (fused_dq || dq_unordered)
    check_cuda(cudaMemsetAsync(dq_accum, 0, dq_elems * sizeof(float), stream), "cudaMemsetAsync (dq accumulator)");
  if (hopper_dq)
    check_cuda(cudaMemsetAsync(dq_lock, 0, lock_elems * sizeof(int), stream), "cudaMemsetAsync (dq turn counters)");

  {
    attn::BwdPreParams pp{};
    pp.o = static_cast<const bf16*>(o.data);
    pp.dout = static_cast<const bf16*>(dout.data);
    pp.lse = static_cast<const float*>(lse.data);
    pp.lse2 = lse2;
    pp.delta = delta;
    pp.o_row = o.stride[0], pp.o_head = o.stride[1];
    pp.do_row = dout.stride[0], pp.do_head = dout.stride[1];
    pp.Tq = static_cast<int>(s.Tq), pp.Hq = static_cast<int>(s.Hq), pp.Tq_pad = static_cast<int>(Tq_pad);
    pp.q_count = static_cast<const int32_t*>(spec.q_count.data);
    using Pre = attn::BwdPreShape<kD>;
    const dim3 grid(static_cast<unsigned>((Tq_pad + Pre::kRowsPerBlock - 1) / Pre::kRowsPerBlock),
                    static_cast<unsigned>(s.Hq));
    auto aligned = [](const TensorView& t) {
      return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.stride[0] % 8 == 0 && t.stride[1] % 8 == 0;
    };
    if (aligned(o) && aligned(dout))
      attn::flash_bwd_preprocess_kernel<kD, true><<<grid, 32 * Pre::kWarps, 0, stream>>>(pp);
    else
      attn::flash_bwd_preprocess_kernel<kD, false><<<grid, 32 * Pre::kWarps, 0, stream>>>(pp);
    check_launch("flash_bwd_preprocess_kernel");
  }

  attn::BwdParams p{};
  p.q = static_cast<const bf16*>(q.data);
  p.k = static_cast<const bf16*>(k.data);
  p.v = static_cast<const bf16*>(v.data);
  p.dout = static_cast<const bf16*>(dout.data);
  p.dk = static_cast<bf16*>(dk.data);
  p.dv = static_cast<bf16*>(dv.data);
  p.dq_accum = fused_dq || hopper_dq ? dq_accum : nullptr;
  p.dq_lock = hopper_dq ? dq_lock : nullptr;
  p.dq_unordered = dq_unordered ? 1 : 0;
  p.dkv_accum = dkv_accum;
  p.q_index = static_cast<const int32_t*>(spec.q_index.data);
  p.q_count = static_cast<const int32_t*>(spec.q_count.data);
  p.lse2 = lse2;
  p.delta = delta;
  p.q_row = q.stride[0], p.q_head = q.stride[1];
  p.k_row = k.stride[0], p.k_head = k.stride[1];
  p.v_row = v.stride[0], p.v_head = v.stride[1];
  p.do_row = dout.stride[0], p.do_head = dout.stride[1];
  p.dk_row = dk.stride[0], p.dk_head = dk.stride[1];
  p.dv_row = dv.stride[0], p.dv_head = dv.stride[1];
  p.Tq = static_cast<int>(s.Tq), p.Tk = static_cast<int>(s.Tk);
  p.Hq = static_cast<int>(s.Hq), p.Hkv = static_cast<int>(s.Hkv);
  p.group = static_cast<int>(group), p.Tq_pad = static_cast<int>(Tq_pad);
  p.heads_per_split = static_cast<int>(hps);
  p.scale = s.scale;
  p.scale_log2 = s.scale * 1.4426950408889634f;
  p.mask = mask_params(spec, s.Tk);
  const int64_t m_blocks = Tq_pad / Cfg::kBlockM;
  RT_CHECK(m_blocks <= 65535 && s.Hq <= 65535, kOp, ": Tq = ", s.Tq, " is too long for one launch");
  if (hopper) {
#if RT_HAVE_SM90A
    RT_CHECK(attn_launch::launch_flash_bwd_dkdv_hopper(kD, p, q, k, v, dout, spec, s, static_cast<int>(splits), stream) &&
                 attn_launch::launch_flash_bwd_dq_hopper(kD, p, k, v, dq, spec, s, stream),
             kOp, ": RT_ATTN_BWD=wgmma: no tensor map for q/k/v/dout of shapes ", q.shape_str(), " / ", k.shape_str(),
             " / ", v.shape_str(), " / ", dout.shape_str(), " (strides must be multiples of 16 bytes)");
#endif
  } else with_mask(spec, [&](auto mask) {
    using Mask = decltype(mask);
    auto go = [&](auto rows, auto fused) {
      using Rows = decltype(rows);
      constexpr auto kernel = attn::flash_bwd_kernel<Cfg, Mask, Rows, decltype(fused)::value>;
      ensure_smem<kernel>(Cfg::kSmemBytes, "cudaFuncSetAttribute (flash backward shared memory)");
      const dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(s.Hkv), static_cast<unsigned>(splits));
      kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
      check_launch("flash_bwd_kernel");
      if constexpr (!decltype(fused)::value) {
        constexpr auto dq_kernel = attn::flash_bwd_dq_kernel<DqCfg, Mask, Rows>;
        ensure_smem<dq_kernel>(DqCfg::kSmemBytes, "cudaFuncSetAttribute (flash backward dQ shared memory)");
        const dim3 g2(static_cast<unsigned>(s.Hq), static_cast<unsigned>(m_blocks));
        dq_kernel<<<g2, DqCfg::kThreads, DqCfg::kSmemBytes, stream>>>(p, static_cast<bf16*>(dq.data), dq.stride[0],
                                                                      dq.stride[1]);
        check_launch("flash_bwd_dq_kernel");
      }
    };
    if (spec.routed()) go(attn::RoutedRows{}, std::false_type{});
    else if (fused_dq) go(attn::DenseRows{}, std::true_type{});
    else go(attn::DenseRows{}, std::false_type{});
  });

  if (fused_dq) launch_convert(dq_accum, dq, s.scale, stream);
  if (dkv_accum != nullptr) {
    launch_convert(dkv_accum, dk, 1.f, stream, static_cast<int>(splits), static_cast<int64_t>(2 * plane));
    launch_convert(dkv_accum + plane, dv, 1.f, stream, static_cast<int>(splits), static_cast<int64_t>(2 * plane));
  }
  ws.release();
}

// ------------------------------------------------------------------------------------------------
// f32: exact, simple. Kernel 1: one warp per (query row, head): Delta = dO . O, then dq over the
// visible keys. Kernel 2: one warp per (key, KV head): dk, dv over the query heads of the group and
// the query rows that see the key. Head dims up to 256.

constexpr int kF32MaxD = 256;

struct F32BwdParams {
  const float* q;
  const float* k;
  const float* v;
  const float* o;
  const float* dout;
  const float* lse;  // [Hq][Tq]
  float* dq;
  float* dk;
  float* dv;
  float* delta;  // [Hq][Tq] workspace
  int64_t q_row, q_head, k_row, k_head, v_row, v_head, o_row, o_head, do_row, do_head;
  int64_t dq_row, dq_head, dk_row, dk_head, dv_row, dv_head;
  int Tq, Tk, Hq, Hkv, group, D;
  float scale;
  attn::MaskParams mask;
  const int32_t* q_index;  // routed rows (AttentionSpec::q_index / q_count), or nullptr
  const int32_t* q_count;
};

template <class Mask>
__global__ void __launch_bounds__(128) attention_bwd_f32_dq_kernel(const F32BwdParams p) {
  constexpr int kC = kF32MaxD / 32;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (w >= static_cast<int64_t>(p.Tq) * p.Hq) return;
  const int i = static_cast<int>(w / p.Hq), h = static_cast<int>(w % p.Hq), hk = h / p.group;
  const bool active = p.q_index == nullptr || i < *p.q_count;
  const int64_t pos = p.mask.q_pos0 + (p.q_index != nullptr && active ? p.q_index[i] : i);
  const int lo = Mask::key_lo(p.mask, pos);
  int hi = active ? Mask::key_hi(p.mask, pos) : lo;
  const float* qr = p.q + static_cast<int64_t>(i) * p.q_row + static_cast<int64_t>(h) * p.q_head;
  const float* orow = p.o + static_cast<int64_t>(i) * p.o_row + static_cast<int64_t>(h) * p.o_head;
  const float* dr = p.dout + static_cast<int64_t>(i) * p.do_row + static_cast<int64_t>(h) * p.do_head;
  const float* kr = p.k + static_cast<int64_t>(hk) * p.k_head;
  const float* vr = p.v + static_cast<int64_t>(hk) * p.v_head;
  float qv[kC], dov[kC], acc[kC];
  float delta = 0.f;
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int d = lane + 32 * c;
    qv[c] = d < p.D ? qr[d] : 0.f;
    dov[c] = d < p.D ? dr[d] : 0.f;
    if (d < p.D) delta = fmaf(dov[c], orow[d], delta);
    acc[c] = 0.f;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) delta += __shfl_xor_sync(0xffffffffu, delta, off);
  if (lane == 0) p.delta[static_cast<int64_t>(h) * p.Tq + i] = delta;
  const float lse = active ? p.lse[static_cast<int64_t>(h) * p.Tq + i] : __builtin_huge_valf();
  if (!(lse < __builtin_huge_valf())) hi = lo;  // no visible key (or an inactive routed row): nothing
  for (int j = lo; j < hi; ++j) {
    const float* kj = kr + static_cast<int64_t>(j) * p.k_row;
    const float* vj = vr + static_cast<int64_t>(j) * p.v_row;
    float dot = 0.f, dp = 0.f;
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int d = lane + 32 * c;
      if (d < p.D) {
        dot = fmaf(qv[c], kj[d], dot);
        dp = fmaf(dov[c], vj[d], dp);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      dot += __shfl_xor_sync(0xffffffffu, dot, off);
      dp += __shfl_xor_sync(0xffffffffu, dp, off);
    }
    const float pr = expf(dot * p.scale - lse);
    const float ds = pr * (dp - delta);
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int d = lane + 32 * c;
      if (d < p.D) acc[c] = fmaf(ds, kj[d], acc[c]);
    }
  }
  float* out = p.dq + static_cast<int64_t>(i) * p.dq_row + static_cast<int64_t>(h) * p.dq_head;
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int d = lane + 32 * c;
    if (d < p.D) out[d] = acc[c] * p.scale;
  }
}

template <class Mask>
__global__ void __launch_bounds__(128) attention_bwd_f32_dkv_kernel(const F32BwdParams p) {
  constexpr int kC = kF32MaxD / 32;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (w >= static_cast<int64_t>(p.Tk) * p.Hkv) return;
  const int j = static_cast<int>(w / p.Hkv), hk = static_cast<int>(w % p.Hkv);
  int i_begin = 0, i_end = 0;
  if (p.q_index != nullptr) {
    const attn::RoutedRows rows{p.q_index, p.q_count};
    attn::query_range<Mask>(p.mask, rows, rows.active(p.Tq), j, j + 1, i_begin, i_end);
  } else {
    attn::query_range<Mask>(p.mask, attn::DenseRows{}, p.Tq, j, j + 1, i_begin, i_end);
  }
  const float* kj = p.k + static_cast<int64_t>(j) * p.k_row + static_cast<int64_t>(hk) * p.k_head;
  const float* vj = p.v + static_cast<int64_t>(j) * p.v_row + static_cast<int64_t>(hk) * p.v_head;
  float kv[kC], vv[kC], dkacc[kC], dvacc[kC];
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int d = lane + 32 * c;
    kv[c] = d < p.D ? kj[d] : 0.f;
    vv[c] = d < p.D ? vj[d] : 0.f;
    dkacc[c] = dvacc[c] = 0.f;
  }
  for (int h = hk * p.group; h < (hk + 1) * p.group; ++h) {
    for (int i = i_begin; i < i_end; ++i) {
      const int64_t pos = p.mask.q_pos0 + (p.q_index != nullptr ? p.q_index[i] : i);
      if (j < Mask::key_lo(p.mask, pos) || j >= Mask::key_hi(p.mask, pos)) continue;
      const float lse = p.lse[static_cast<int64_t>(h) * p.Tq + i];
      if (!(lse < __builtin_huge_valf())) continue;
      const float* qr = p.q + static_cast<int64_t>(i) * p.q_row + static_cast<int64_t>(h) * p.q_head;
      const float* dr = p.dout + static_cast<int64_t>(i) * p.do_row + static_cast<int64_t>(h) * p.do_head;
      float dot = 0.f, dp = 0.f;
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        const int d = lane + 32 * c;
        if (d < p.D) {
          dot = fmaf(qr[d], kv[c], dot);
          dp = fmaf(dr[d], vv[c], dp);
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        dot += __shfl_xor_sync(0xffffffffu, dot, off);
        dp += __shfl_xor_sync(0xffffffffu, dp, off);
      }
      const float pr = expf(dot * p.scale - lse);
      const float ds = pr * (dp - p.delta[static_cast<int64_t>(h) * p.Tq + i]);
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        const int d = lane + 32 * c;
        if (d < p.D) {
          dvacc[c] = fmaf(pr, dr[d], dvacc[c]);
          dkacc[c] = fmaf(ds, qr[d], dkacc[c]);
        }
      }
    }
  }
  float* dko = p.dk + static_cast<int64_t>(j) * p.dk_row + static_cast<int64_t>(hk) * p.dk_head;
  float* dvo = p.dv + static_cast<int64_t>(j) * p.dv_row + static_cast<int64_t>(hk) * p.dv_head;
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int d = lane + 32 * c;
    if (d < p.D) {
      dko[d] = dkacc[c] * p.scale;
      dvo[d] = dvacc[c];
    }
  }
}

void launch_f32(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                const TensorView& lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                const TensorView& dv, const AttentionSpec& spec, const Shapes& s, cudaStream_t stream) {
  Scratch ws(static_cast<size_t>(s.Hq * s.Tq) * sizeof(float), stream, "the attention backward's workspace (f32)");
  F32BwdParams p{};
  p.q = static_cast<const float*>(q.data);
  p.k = static_cast<const float*>(k.data);
  p.v = static_cast<const float*>(v.data);
  p.o = static_cast<const float*>(o.data);
  p.dout = static_cast<const float*>(dout.data);
  p.lse = static_cast<const float*>(lse.data);
  p.dq = static_cast<float*>(dq.data);
  p.dk = static_cast<float*>(dk.data);
  p.dv = static_cast<float*>(dv.data);
  p.delta = static_cast<float*>(ws.get());
  p.q_row = q.stride[0], p.q_head = q.stride[1];
  p.k_row = k.stride[0], p.k_head = k.stride[1];
  p.v_row = v.stride[0], p.v_head = v.stride[1];
  p.o_row = o.stride[0], p.o_head = o.stride[1];
  p.do_row = dout.stride[0], p.do_head = dout.stride[1];
  p.dq_row = dq.stride[0], p.dq_head = dq.stride[1];
  p.dk_row = dk.stride[0], p.dk_head = dk.stride[1];
  p.dv_row = dv.stride[0], p.dv_head = dv.stride[1];
  p.Tq = static_cast<int>(s.Tq), p.Tk = static_cast<int>(s.Tk);
  p.Hq = static_cast<int>(s.Hq), p.Hkv = static_cast<int>(s.Hkv);
  p.group = static_cast<int>(s.Hq / s.Hkv), p.D = static_cast<int>(s.D);
  p.scale = s.scale;
  p.mask = mask_params(spec, s.Tk);
  p.q_index = static_cast<const int32_t*>(spec.q_index.data);
  p.q_count = static_cast<const int32_t*>(spec.q_count.data);
  const int64_t b1 = (s.Tq * s.Hq + 3) / 4, b2 = (s.Tk * s.Hkv + 3) / 4;
  RT_CHECK(b1 <= kMaxInt && b2 <= kMaxInt, kOp, " f32: too many rows x heads");
  with_mask(spec, [&](auto mask) {
    using Mask = decltype(mask);
    attention_bwd_f32_dq_kernel<Mask><<<static_cast<unsigned>(b1), 128, 0, stream>>>(p);
    check_launch("attention_bwd_f32_dq_kernel");
    attention_bwd_f32_dkv_kernel<Mask><<<static_cast<unsigned>(b2), 128, 0, stream>>>(p);
    check_launch("attention_bwd_f32_dkv_kernel");
  });
  ws.release();
}

}  // namespace

bool attention_deterministic() {
  static const bool on = [] {
    const char* v = std::getenv("RT_ATTENTION_DETERMINISTIC");
    return !(v != nullptr && std::string(v) == "0");
  }();
  return on;
}

void attention_backward_with(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                             TensorView dout, TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec,
                             int group_splits, cudaStream_t stream) {
  RT_CHECK(group_splits >= 0, kOp, ": group_splits must be >= 0 (0: automatic), found ", group_splits);
  const std::pair<const char*, const TensorView*> all[] = {{"q", &q},       {"k", &k},   {"v", &v},
                                                           {"o", &o},       {"dout", &dout}, {"dq", &dq},
                                                           {"dk", &dk},     {"dv", &dv}};
  for (const auto& [name, t] : all) check_view(name, *t);
  for (const auto& [name, t] : all)
    RT_CHECK(t->dtype == q.dtype, kOp, ": q, k, v, o, dout, dq, dk and dv must have the same dtype; q is ",
             dtype_name(q.dtype), ", '", name, "' is ", dtype_name(t->dtype));
  RT_CHECK(q.dtype == DType::BF16 || q.dtype == DType::F32, kOp, ": dtype ", dtype_name(q.dtype),
           " is not supported (bf16, or f32 for the reference path)");
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  RT_CHECK(k.shape[2] == D, kOp, ": argument 'k' head dim must be ", D, " (q.shape[2]), found shape ", k.shape_str());
  auto same = [](const TensorView& a, const TensorView& b) {
    return a.shape[0] == b.shape[0] && a.shape[1] == b.shape[1] && a.shape[2] == b.shape[2];
  };
  RT_CHECK(same(v, k), kOp, ": argument 'v' must have the shape of 'k' ", k.shape_str(), ", found ", v.shape_str());
  RT_CHECK(same(dk, k), kOp, ": argument 'dk' must have the shape of 'k' ", k.shape_str(), ", found ", dk.shape_str());
  RT_CHECK(same(dv, k), kOp, ": argument 'dv' must have the shape of 'k' ", k.shape_str(), ", found ", dv.shape_str());
  RT_CHECK(same(o, q), kOp, ": argument 'o' must have the shape of 'q' ", q.shape_str(), ", found ", o.shape_str());
  RT_CHECK(same(dout, q), kOp, ": argument 'dout' must have the shape of 'q' ", q.shape_str(), ", found ",
           dout.shape_str());
  RT_CHECK(same(dq, q), kOp, ": argument 'dq' must have the shape of 'q' ", q.shape_str(), ", found ", dq.shape_str());
  RT_CHECK(Hkv > 0 || Hq == 0, kOp, ": k has 0 heads, shape ", k.shape_str());
  RT_CHECK(Hkv == 0 || Hq % Hkv == 0, kOp, ": query heads (", Hq, ", q shape ", q.shape_str(),
           ") must be a multiple of KV heads (", Hkv, ", k shape ", k.shape_str(), ")");
  RT_CHECK(spec.window >= 0, kOp, ": window must be >= 0 (0: none), found ", spec.window);
  RT_CHECK(std::isfinite(spec.scale), kOp, ": scale must be finite, found ", spec.scale);
  for (const auto& [oname, ot] : {std::pair{"dq", &dq}, std::pair{"dk", &dk}, std::pair{"dv", &dv}}) {
    for (const auto& [iname, it] : all) {
      if (it == ot) continue;
      RT_CHECK(!views_overlap(*ot, *it), kOp, ": output '", oname, "' overlaps '", iname, "'");
    }
  }
  RT_CHECK(lse.data != nullptr || Tq * Hq == 0, kOp, ": argument 'lse' is required (from attention_forward_lse)");
  if (lse.data != nullptr) {
    RT_CHECK(lse.device == Device::CUDA && lse.dtype == DType::F32 && lse.ndim == 2 && lse.shape[0] == Hq &&
                 lse.shape[1] == Tq && lse.is_contiguous(),
             kOp, ": argument 'lse' must be a contiguous f32 cuda tensor of shape [", Hq, ", ", Tq, "], found ",
             dtype_name(lse.dtype), " ", device_name(lse.device), " ", lse.shape_str());
    check_device_pointer("lse", lse);
  }
  const bool empty = Tq == 0 || Hq == 0 || D == 0 || Tk == 0;
  if (q.dtype == DType::BF16) {
    RT_CHECK(D == 64 || D == 128 || empty, kOp, " bf16: head dim ", D, " is not supported (supported: 64, 128); q shape ",
             q.shape_str());
    check_align16("q", q);
    check_align16("k", k);
    check_align16("v", v);
    check_align16("dout", dout);
    check_align4("o", o);
    check_align4("dq", dq);
    check_align4("dk", dk);
    check_align4("dv", dv);
  } else {
    RT_CHECK(D <= kF32MaxD || empty, kOp, " f32: head dim ", D, " is not supported (at most ", kF32MaxD, "); q shape ",
             q.shape_str());
  }
  for (const auto& [name, t] : all) check_device_pointer(name, *t);
  attn_launch::check_routed(kOp, spec, Tq, false);
  spec.check_routed_options(kOp, true);
  if (empty) {  // gradients of nothing: zeros
    zero_view(dq, stream);
    zero_view(dk, stream);
    zero_view(dv, stream);
    return;
  }

  Shapes s{Tq, Hq, D, Tk, Hkv, 0.f};
  s.scale = spec.scale != 0.f ? spec.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  if (q.dtype == DType::F32) launch_f32(q, k, v, o, lse, dout, dq, dk, dv, spec, s, stream);
  else if (D == 64) launch_flash_bwd<64>(q, k, v, o, lse, dout, dq, dk, dv, spec, s, group_splits, stream);
  else launch_flash_bwd<128>(q, k, v, o, lse, dout, dq, dk, dv, spec, s, group_splits, stream);
}

void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, TensorView dout,
                        TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec, cudaStream_t stream) {
  attention_backward_with(q, k, v, o, lse, dout, dq, dk, dv, spec, 0, stream);
}

}  // namespace rt::cuda
