// Attention on the CUDA device: argument checks, kernel choice, launches. The bf16 kernels are in
// flash_attention.cuh; the fp32 path (a plain exact kernel for reference comparisons) is here.
#include "cuda/attention/attention.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "cuda/attention/flash_attention.cuh"
#include "cuda/attention/attention_launch.h"
#include "cuda/attention/flash_fwd_hopper.h"
#include "cuda/memory.h"
#include "rt/sdk/error.h"

namespace rt::cuda {
namespace {

using attn::bf16;

// Thin forms of the shared checks (cuda/attention/attention_launch.h) with this file's op name.
void check_cuda(cudaError_t err, const char* what) { attn_launch::check_cuda("attention (cuda)", err, what); }
void check_launch(const char* kernel) { attn_launch::check_launch("attention (cuda)", kernel); }
void check_view(const char* arg, const TensorView& v) { attn_launch::check_view("attention (cuda)", arg, v); }
void check_device_pointer(const char* arg, const TensorView& v) { cuda::check_device_pointer("attention (cuda)", arg, v); }
void check_align16(const char* arg, const TensorView& v) { attn_launch::check_align16("attention (cuda)", arg, v); }
template <auto Kernel>
void ensure_smem(int bytes, const char* what) { attn_launch::ensure_smem<Kernel>("attention (cuda)", bytes, what); }
using attn_launch::capturing;
using attn_launch::kMaxInt;
using attn_launch::mask_params;
using attn_launch::num_sms;
using attn_launch::Shapes;
using attn_launch::with_mask;


// ------------------------------------------------------------------------------------------------
// bf16: flash forward

// Keys per KV tile. Both are the largest that compile without register spills (ptxas -v, sm_90,
// nvcc 13.0, 4 warps x 32 rows): D=64 with 128 keys and D=128 with 64 keys spill 16-88 bytes.
// Override with -DRT_ATTN_D64_BN=... / -DRT_ATTN_D128_BN=... to try others on the GPU.
#ifndef RT_ATTN_D64_BN
#define RT_ATTN_D64_BN 64
#endif
#ifndef RT_ATTN_D128_BN
#define RT_ATTN_D128_BN 32
#endif
template <int kD>
struct FwdCfgFor;
template <>
struct FwdCfgFor<64> {
  using type = attn::FwdConfig<64, 128, RT_ATTN_D64_BN, 4>;
};
template <>
struct FwdCfgFor<128> {
  using type = attn::FwdConfig<128, 128, RT_ATTN_D128_BN, 4>;
};

// Routed rows (L2A) can also run in blocks of 64 rows (4 warps of 16): twice the CTAs and half the
// serial work per CTA. That pays where the few CTAs of the latest routed rows, each walking every
// key, set the time (short sequences, high sparsity), and costs ~7% where the kernel is
// throughput-bound (H200, 0.5B, routed kernel: 16K 0.57 -> 0.52 ms at 80% and 0.47 -> 0.35 ms at
// 95%; 32K at 80% 1.62 -> 1.73 ms). The routed count is on the device, so the choice is by length:
// 64 up to 16K rows. RT_ATTN_ROUTED_BM=64|128 forces one.
template <int kD>
struct RoutedSmallCfgFor {
  using type = attn::FwdConfig<kD, 64, kD == 64 ? RT_ATTN_D64_BN : RT_ATTN_D128_BN, 4>;
};
bool routed_small_blocks(int64_t Tq) {
  static const int forced = [] {
    const char* v = std::getenv("RT_ATTN_ROUTED_BM");
    if (v == nullptr || !*v) return 0;
    RT_CHECK(std::string(v) == "64" || std::string(v) == "128", "RT_ATTN_ROUTED_BM='", v,
             "': expected 64 or 128");
    return std::atoi(v);
  }();
  return forced != 0 ? forced == 64 : Tq <= 16384;
}

}  // namespace

namespace attn_launch {
KernelPath forward_path_setting() {
  static const KernelPath path = kernel_path_from_env("RT_ATTN_FWD");
  return path;
}
}  // namespace attn_launch

namespace {

template <class Cfg, class Rows>
void launch_flash_cfg(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
                      const AttentionSpec& spec, const Shapes& s, cudaStream_t stream) {
  const attn::FwdParams p = attn_launch::fwd_params(q, k, v, o, lse, spec, s, Cfg::kBlockM);
  with_mask(spec, [&](auto mask) {
    using Mask = decltype(mask);
    constexpr auto kernel = attn::flash_fwd_kernel<Cfg, Mask, Rows>;
    ensure_smem<kernel>(Cfg::kSmemBytes, "cudaFuncSetAttribute (flash forward shared memory)");
    const int64_t heads = Rows::routed ? s.Hkv : s.Hq;
    const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>(p.num_m_blocks));
    kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
    check_launch("flash_fwd_kernel");
  });
}

}  // namespace

bool hopper_forward_runs(int64_t head_dim) {
#if RT_HAVE_SM90A
  return (head_dim == 64 || head_dim == 128) &&
         attn_launch::forward_path_setting() != attn_launch::KernelPath::Mma && attn_launch::hopper_forward_available();
#else
  (void)head_dim;
  return false;
#endif
}

namespace {

// The Hopper kernel (flash_fwd_hopper.h) on sm_90 by default (`auto`) or when asked for
// (RT_ATTN_FWD=wgmma, an error where it cannot run), the mma.sync kernel otherwise (sm_89, and
// RT_ATTN_FWD=mma). On the H200 it runs at 1.2x (D 64) to 1.8x (D 128) the mma.sync kernel's rate
// (BENCHMARKS.md). Inputs without keys or queries go to the mma.sync kernel, which writes the empty
// rows (o = 0, lse = +inf) with no tensor map to build.
bool try_flash_hopper(int D, const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                      float* lse, const AttentionSpec& spec, const Shapes& s, cudaStream_t stream) {
  const attn_launch::KernelPath path = attn_launch::forward_path_setting();
  if (path == attn_launch::KernelPath::Mma || s.Tk == 0 || s.Tq == 0) return false;
  const bool forced = path == attn_launch::KernelPath::Wgmma;
#if RT_HAVE_SM90A
  if (!attn_launch::hopper_forward_available()) {
    RT_CHECK(!forced, "attention (cuda): RT_ATTN_FWD=wgmma needs a GPU of compute capability 9.0 (Hopper)");
    return false;
  }
  const bool done = attn_launch::launch_flash_hopper(D, q, k, v, o, lse, spec, s, stream);
  RT_CHECK(done || !forced, "attention (cuda): RT_ATTN_FWD=wgmma: no tensor map for k/v of shapes ", k.shape_str(),
           " / ", v.shape_str(), " (strides must be multiples of 16 bytes)");
  return done;
#else
  (void)D, (void)q, (void)k, (void)v, (void)o, (void)lse, (void)spec, (void)s, (void)stream;
  RT_CHECK(!forced, "attention (cuda): RT_ATTN_FWD=wgmma: this build has no sm_90a kernels (RT_CUDA_ARCHS without 90)");
  return false;
#endif
}

template <int kD>
void launch_flash(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
                  const AttentionSpec& spec, const Shapes& s, cudaStream_t stream) {
  if (try_flash_hopper(kD, q, k, v, o, lse, spec, s, stream)) return;
  using Big = typename FwdCfgFor<kD>::type;
  if (!spec.routed()) launch_flash_cfg<Big, attn::DenseRows>(q, k, v, o, lse, spec, s, stream);
  else if (routed_small_blocks(s.Tq))
    launch_flash_cfg<typename RoutedSmallCfgFor<kD>::type, attn::RoutedRows>(q, k, v, o, lse, spec, s, stream);
  else launch_flash_cfg<Big, attn::RoutedRows>(q, k, v, o, lse, spec, s, stream);
}

// ------------------------------------------------------------------------------------------------
// bf16: split-KV decode + combine

// The position of a decode step held in device memory (decode_attention_at): pos == nullptr for the
// host-position path. k and v are then the whole KV cache, position p in row p or p % ring.
struct DevicePosition {
  const int32_t* pos = nullptr;
  int64_t ring = 0;
  const float* gate = nullptr;  // decode_attention_gated_at: *gate == 0 reads no key
};

template <int kD>
void launch_decode(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
                   const AttentionSpec& spec, const Shapes& s, const DevicePosition& dp, cudaStream_t stream) {
  using DC = attn::DecodeConfig<kD>;
  const int64_t group = s.Hq / s.Hkv;
  const int64_t rows = group * s.Tq;
  RT_CHECK(rows <= kMaxInt, "attention (cuda): decode kernel: too many query rows (", rows, ")");
  const int64_t row_blocks = (rows + 15) / 16;
  RT_CHECK(row_blocks <= 65535 && s.Hkv <= 65535, "attention (cuda): decode kernel: Tq = ", s.Tq,
           " is too long for the decode kernel; use the flash kernel");
  const attn::MaskParams mp = mask_params(spec, s.Tk);
  int kb = 0, ke = 0;
  if (dp.pos != nullptr) {
    // The split grid is planned for the most keys any position can see (the kernel reads the
    // position and finds its own key range), so it is the same at every position.
    ke = static_cast<int>(dp.ring > 0 ? dp.ring : spec.window > 0 ? std::min<int64_t>(spec.window, s.Tk) : s.Tk);
  } else {
    with_mask(spec, [&](auto mask) {
      using Mask = decltype(mask);
      kb = Mask::key_lo(mp, spec.q_pos0);
      ke = Mask::key_hi(mp, spec.q_pos0 + s.Tq - 1);
    });
  }
  const int64_t total = ke > kb ? ke - kb : 0;

  int64_t splits = 0, chunk = 0;
  if (total > 0) {
    const int64_t tiles = (total + DC::kN - 1) / DC::kN;
    const int64_t units = s.Hkv * row_blocks;
    const int64_t target = std::max<int64_t>(1, 8 * static_cast<int64_t>(num_sms()) / units);  // warps in flight
    splits = std::min<int64_t>((tiles + 1) / 2, target);                                          // >= 2 tiles each
    splits = std::max<int64_t>(splits, 1);
    chunk = ((tiles + splits - 1) / splits) * DC::kN;
    splits = (total + chunk - 1) / chunk;
  }

  void* ws = nullptr;
  const size_t acc_elems = static_cast<size_t>(splits * s.Hkv * rows * kD);
  const size_t ml_elems = static_cast<size_t>(splits * s.Hkv * rows * 2);
  const size_t ws_bytes = (acc_elems + ml_elems) * sizeof(float);
  if (splits > 0)
    ws = malloc_async(ws_bytes, stream, [&] {
      return "the attention (cuda) decode workspace (" + std::to_string(splits) + " splits)";
    });
  float* part_acc = static_cast<float*>(ws);
  float* part_ml = part_acc + acc_elems;

  try {
    if (splits > 0) {
      attn::DecodeParams p{};
      p.q = static_cast<const bf16*>(q.data);
      p.k = static_cast<const bf16*>(k.data);
      p.v = static_cast<const bf16*>(v.data);
      p.q_row = q.stride[0], p.q_head = q.stride[1];
      p.k_row = k.stride[0], p.k_head = k.stride[1];
      p.v_row = v.stride[0], p.v_head = v.stride[1];
      p.Tq = static_cast<int>(s.Tq), p.Tk = static_cast<int>(s.Tk);
      p.Hq = static_cast<int>(s.Hq), p.Hkv = static_cast<int>(s.Hkv);
      p.group = static_cast<int>(group), p.rows = static_cast<int>(rows);
      p.kb = kb, p.ke = ke, p.chunk = static_cast<int>(chunk), p.num_splits = static_cast<int>(splits);
      p.scale_log2 = s.scale * 1.4426950408889634f;
      p.mask = mp;
      p.pos = dp.pos;
      p.ring = static_cast<int>(dp.ring);
      p.gate = dp.gate;
      p.part_acc = part_acc;
      p.part_ml = part_ml;
      with_mask(spec, [&](auto mask) {
        using Mask = decltype(mask);
        constexpr auto kernel = attn::flash_decode_split_kernel<kD, Mask>;
        ensure_smem<kernel>(DC::kSmemBytes, "cudaFuncSetAttribute (decode shared memory)");
        const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(s.Hkv), static_cast<unsigned>(row_blocks));
        kernel<<<grid, 32, DC::kSmemBytes, stream>>>(p);
        check_launch("flash_decode_split_kernel");
      });
    }
    attn::CombineParams c{};
    c.part_acc = part_acc;
    c.part_ml = part_ml;
    c.o = static_cast<bf16*>(o.data);
    c.lse = lse;
    c.o_row = o.stride[0], c.o_head = o.stride[1];
    c.Tq = static_cast<int>(s.Tq), c.Hkv = static_cast<int>(s.Hkv);
    c.group = static_cast<int>(group), c.rows = static_cast<int>(rows), c.num_splits = static_cast<int>(splits);
    attn::flash_decode_combine_kernel<kD><<<static_cast<unsigned>(s.Hkv * rows), kD * attn::combine_groups<kD>(),
                                            static_cast<size_t>(splits) * sizeof(float), stream>>>(c);
    check_launch("flash_decode_combine_kernel");
  } catch (...) {
    if (ws != nullptr) (void)cudaFreeAsync(ws, stream);
    throw;
  }
  if (ws != nullptr) check_cuda(cudaFreeAsync(ws, stream), "cudaFreeAsync (decode workspace)");
}

// ------------------------------------------------------------------------------------------------
// f32: one warp per (query row, head), exact fp32 online softmax (expf), head dims up to 256.

struct F32Params {
  const float* q;
  const float* k;
  const float* v;
  float* o;
  float* lse;
  int64_t q_row, q_head, k_row, k_head, v_row, v_head, o_row, o_head;
  int Tq, Hq, group, D;
  float scale;
  attn::MaskParams mask;
  const int32_t* pos;  // decode at a device-held position, as in attn::DecodeParams (Tq = 1)
  int ring;
  const float* gate;  // as in attn::DecodeParams
  const int32_t* q_index;  // routed rows (AttentionSpec::q_index / q_count), or nullptr
  const int32_t* q_count;
  bool q_indexed, inactive_unwritten;  // as in AttentionSpec
};

constexpr int kF32MaxD = 256;

template <class Mask>
__global__ void __launch_bounds__(128) attention_f32_kernel(const F32Params p) {
  constexpr int kC = kF32MaxD / 32;
  constexpr float kInf = __builtin_huge_valf();
  const int64_t w = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (w >= static_cast<int64_t>(p.Tq) * p.Hq) return;
  const int i = static_cast<int>(w / p.Hq), h = static_cast<int>(w % p.Hq), hk = h / p.group;
  attn::MaskParams mask = p.mask;
  if (p.pos != nullptr) {
    if (p.ring > 0) mask.Tk = static_cast<int>(min(static_cast<int64_t>(*p.pos) + 1, static_cast<int64_t>(p.ring)));
    else mask.q_pos0 = *p.pos;
  }
  const bool active = (p.q_index == nullptr || i < *p.q_count) && (p.gate == nullptr || *p.gate != 0.f);
  if (!active && p.inactive_unwritten) return;  // routed: the caller reads the active rows only
  const int64_t pos = mask.q_pos0 + (p.q_index != nullptr && active ? p.q_index[i] : i);
  const int lo = Mask::key_lo(mask, pos), hi = active ? Mask::key_hi(mask, pos) : lo;  // inactive: no key
  const int64_t q_src = p.q_indexed && active ? min(max(p.q_index[i], 0), p.Tq - 1) : i;  // clamped: never faults
  const float* qr = p.q + q_src * p.q_row + static_cast<int64_t>(h) * p.q_head;
  const float* kr = p.k + static_cast<int64_t>(hk) * p.k_head;
  const float* vr = p.v + static_cast<int64_t>(hk) * p.v_head;
  float qv[kC], acc[kC];
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int d = lane + 32 * c;
    qv[c] = d < p.D ? qr[d] : 0.f;
    acc[c] = 0.f;
  }
  float m = -kInf, l = 0.f;
  for (int j = lo; j < hi; ++j) {
    const float* kj = kr + static_cast<int64_t>(j) * p.k_row;
    float dot = 0.f;
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int d = lane + 32 * c;
      if (d < p.D) dot = fmaf(qv[c], kj[d], dot);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    const float sc = dot * p.scale;
    const float mn = fmaxf(m, sc);
    const float corr = expf(m - mn);  // m = -inf: 0
    const float e = expf(sc - mn);
    l = l * corr + e;
    const float* vj = vr + static_cast<int64_t>(j) * p.v_row;
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int d = lane + 32 * c;
      if (d < p.D) acc[c] = acc[c] * corr + e * vj[d];
    }
    m = mn;
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  float* orow = p.o + static_cast<int64_t>(i) * p.o_row + static_cast<int64_t>(h) * p.o_head;
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int d = lane + 32 * c;
    if (d < p.D) orow[d] = acc[c] * inv;
  }
  if (p.lse != nullptr && lane == 0) p.lse[static_cast<int64_t>(h) * p.Tq + i] = l > 0.f ? m + logf(l) : kInf;
}

void launch_f32(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
                const AttentionSpec& spec, const Shapes& s, const DevicePosition& dp, cudaStream_t stream) {
  F32Params p{};
  p.pos = dp.pos;
  p.ring = static_cast<int>(dp.ring);
  p.gate = dp.gate;
  p.q = static_cast<const float*>(q.data);
  p.k = static_cast<const float*>(k.data);
  p.v = static_cast<const float*>(v.data);
  p.o = static_cast<float*>(o.data);
  p.lse = lse;
  p.q_row = q.stride[0], p.q_head = q.stride[1];
  p.k_row = k.stride[0], p.k_head = k.stride[1];
  p.v_row = v.stride[0], p.v_head = v.stride[1];
  p.o_row = o.stride[0], p.o_head = o.stride[1];
  p.Tq = static_cast<int>(s.Tq), p.Hq = static_cast<int>(s.Hq);
  p.group = static_cast<int>(s.Hq / s.Hkv), p.D = static_cast<int>(s.D);
  p.scale = s.scale;
  p.mask = mask_params(spec, s.Tk);
  p.q_index = static_cast<const int32_t*>(spec.q_index.data);
  p.q_count = static_cast<const int32_t*>(spec.q_count.data);
  p.q_indexed = spec.q_indexed;
  p.inactive_unwritten = spec.inactive_unwritten;
  const int64_t warps = s.Tq * s.Hq;
  const int64_t blocks = (warps + 3) / 4;
  RT_CHECK(blocks <= kMaxInt, "attention (cuda, f32): too many query rows x heads (", warps, ")");
  with_mask(spec, [&](auto mask) {
    using Mask = decltype(mask);
    attention_f32_kernel<Mask><<<static_cast<unsigned>(blocks), 128, 0, stream>>>(p);
    check_launch("attention_f32_kernel");
  });
}

void attention_forward_impl(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                            const AttentionSpec& spec, AttentionKernel kernel, const DevicePosition& dp,
                            cudaStream_t stream) {
  check_view("q", q);
  check_view("k", k);
  check_view("v", v);
  check_view("o", o);
  RT_CHECK(q.dtype == k.dtype && q.dtype == v.dtype && q.dtype == o.dtype,
           "attention (cuda): q, k, v and o must have the same dtype, found q ", dtype_name(q.dtype), ", k ",
           dtype_name(k.dtype), ", v ", dtype_name(v.dtype), ", o ", dtype_name(o.dtype));
  RT_CHECK(q.dtype == DType::BF16 || q.dtype == DType::F32, "attention (cuda): dtype ", dtype_name(q.dtype),
           " is not supported (bf16, or f32 for the reference path)");
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  RT_CHECK(k.shape[2] == D, "attention (cuda): argument 'k' head dim must be ", D, " (q.shape[2]), found shape ",
           k.shape_str());
  RT_CHECK(v.shape[0] == Tk && v.shape[1] == Hkv && v.shape[2] == D, "attention (cuda): argument 'v' must have the shape of 'k' ",
           k.shape_str(), ", found ", v.shape_str());
  RT_CHECK(o.shape[0] == Tq && o.shape[1] == Hq && o.shape[2] == D, "attention (cuda): argument 'o' must have the shape of 'q' ",
           q.shape_str(), ", found ", o.shape_str());
  RT_CHECK(Hkv > 0 || Hq == 0, "attention (cuda): k has 0 heads, shape ", k.shape_str());
  RT_CHECK(Hkv == 0 || Hq % Hkv == 0, "attention (cuda): query heads (", Hq, ", q shape ", q.shape_str(),
           ") must be a multiple of KV heads (", Hkv, ", k shape ", k.shape_str(), ")");
  RT_CHECK(spec.window >= 0, "attention (cuda): window must be >= 0 (0: none), found ", spec.window);
  RT_CHECK(std::isfinite(spec.scale), "attention (cuda): scale must be finite, found ", spec.scale);
  RT_CHECK(!views_overlap(o, k) && !views_overlap(o, v), "attention (cuda): output 'o' overlaps 'k' or 'v'");
  if (q.dtype == DType::BF16) {
    RT_CHECK(D == 64 || D == 128 || Tq == 0 || Hq == 0, "attention (cuda, bf16): head dim ", D,
             " is not supported (supported: 64, 128); q shape ", q.shape_str());
    check_align16("q", q);
    check_align16("k", k);
    check_align16("v", v);
    RT_CHECK(reinterpret_cast<uintptr_t>(o.data) % 4 == 0 && o.stride[0] % 2 == 0 && o.stride[1] % 2 == 0,
             "attention (cuda, bf16): argument 'o' must have 4-byte aligned rows (even strides)");
  } else {
    RT_CHECK(D <= kF32MaxD, "attention (cuda, f32): head dim ", D, " is not supported (at most ", kF32MaxD,
             "); q shape ", q.shape_str());
  }
  float* lse_ptr = nullptr;
  if (lse.data != nullptr) {
    RT_CHECK(lse.device == Device::CUDA && lse.dtype == DType::F32 && lse.ndim == 2 && lse.shape[0] == Hq &&
                 lse.shape[1] == Tq && lse.is_contiguous(),
             "attention (cuda): argument 'lse' must be a contiguous f32 cuda tensor of shape [", Hq, ", ", Tq,
             "], found ", dtype_name(lse.dtype), " ", device_name(lse.device), " ", lse.shape_str());
    check_device_pointer("lse", lse);
    lse_ptr = static_cast<float*>(lse.data);
  }
  attn_launch::check_routed("attention (cuda)", spec, Tq, capturing(stream));
  RT_CHECK(!spec.routed() || (dp.pos == nullptr && kernel != AttentionKernel::Decode), "attention (cuda): routed ",
           "queries run on the flash kernel, not the decode kernel");
  if (Tq == 0 || Hq == 0 || D == 0) return;
  if (!capturing(stream)) {  // memory a graph allocates has no attributes to query until it runs
    check_device_pointer("q", q);
    check_device_pointer("k", k);
    check_device_pointer("v", v);
    check_device_pointer("o", o);
  }

  Shapes s{Tq, Hq, D, Tk, Hkv, 0.f};
  s.scale = spec.scale != 0.f ? spec.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));

  if (q.dtype == DType::F32) {
    launch_f32(q, k, v, o, lse_ptr, spec, s, dp, stream);
    return;
  }
  const bool decode = dp.pos != nullptr || kernel == AttentionKernel::Decode ||
                      (kernel == AttentionKernel::Auto && Tq <= 16 && !spec.routed());
  if (D == 64) {
    if (decode) launch_decode<64>(q, k, v, o, lse_ptr, spec, s, dp, stream);
    else launch_flash<64>(q, k, v, o, lse_ptr, spec, s, stream);
  } else {
    if (decode) launch_decode<128>(q, k, v, o, lse_ptr, spec, s, dp, stream);
    else launch_flash<128>(q, k, v, o, lse_ptr, spec, s, stream);
  }
}

}  // namespace

void attention_forward_with(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                            const AttentionSpec& spec, AttentionKernel kernel, cudaStream_t stream) {
  attention_forward_impl(q, k, v, o, lse, spec, kernel, DevicePosition{}, stream);
}

void decode_attention_at(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring, TensorView pos,
                         const AttentionSpec& spec, TensorView o, cudaStream_t stream, TensorView gate) {
  const char* op = "decode_attention_at (cuda)";
  RT_CHECK(!gate.data || (gate.device == Device::CUDA && gate.dtype == DType::F32 && gate.numel() == 1), op,
           ": argument 'gate' must be an F32 [1] cuda tensor, found ", dtype_name(gate.dtype), " ",
           device_name(gate.device), " ", gate.shape_str());
  if (gate.data && !capturing(stream)) check_device_pointer("gate", gate);
  RT_CHECK(pos.device == Device::CUDA && pos.dtype == DType::I32 && pos.numel() == 1, op,
           ": argument 'pos' must be an I32 [1] cuda tensor, found ", dtype_name(pos.dtype), " ",
           device_name(pos.device), " ", pos.shape_str());
  if (!capturing(stream)) check_device_pointer("pos", pos);
  RT_CHECK(q.ndim == 3 && q.shape[0] == 1, op, ": one query token expected, q [1, Hq, D], found ", q.shape_str());
  RT_CHECK(spec.causal, op, ": needs a causal spec");
  RT_CHECK(ring == 0 || (ring == spec.window && ring == k_cache.shape[0]), op, ": a ring of ", ring,
           " rows must hold exactly the window (", spec.window, ") and be the whole cache (",
           k_cache.ndim == 3 ? k_cache.shape[0] : -1, " rows)");
  AttentionSpec s = spec;
  s.q_pos0 = 0;  // read from pos by the kernel
  s.k_pos0 = 0;
  if (ring > 0) {  // ring rows are slots: every filled one is visible, no mask
    s.causal = false;
    s.window = 0;
  }
  attention_forward_impl(q, k_cache, v_cache, o, TensorView{}, s, AttentionKernel::Decode,
                         DevicePosition{static_cast<const int32_t*>(pos.data), ring, static_cast<const float*>(gate.data)},
                         stream);
}

void attention_forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                           const AttentionSpec& spec, cudaStream_t stream) {
  attention_forward_with(q, k, v, o, lse, spec, AttentionKernel::Auto, stream);
}

void attention_forward(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec,
                       cudaStream_t stream) {
  attention_forward_with(q, k, v, o, TensorView{}, spec, AttentionKernel::Auto, stream);
}

}  // namespace rt::cuda
