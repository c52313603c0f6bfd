// The Hopper backward's launchers: tensor maps, the mask/rows dispatch, the grids. Compiled for
// sm_90a alone, like the Hopper forward (backends/cuda/CMakeLists.txt).
#include "cuda/attention/flash_bwd_hopper.h"

#include "cuda/attention/flash_bwd_dkdv_hopper.cuh"
#include "cuda/attention/flash_bwd_dkdv_hopper_tall.cuh"
#include "cuda/attention/flash_bwd_dq_hopper.cuh"
#include "cuda/env_switch.h"
#include "cuda/attention/sm90/kv_tensor_map.h"

namespace rt::cuda::attn_launch {
namespace {

constexpr const char* kOp = "attention_backward (cuda)";

// At head dim 64 the dK/dV kernel takes FlashAttention-3's 128 x 128 tile
// (flash_bwd_dkdv_hopper_tall.cuh; H100, 0.5B: 1.40x the 128 x 64 tile at 32K causal);
// RT_ATTN_HOPPER_BWD_TALL=0 keeps the 128 x 64 one, for comparison.
bool tall_tiles_setting() {
  static const bool off = env_switch("RT_ATTN_HOPPER_BWD_TALL", "1", "0");
  return !off;
}

// The tall tile computes dQ too, in key-block order (HopperBwdDkDvTallDqConfig), instead of the
// separate dQ pass (H100, 0.5B: backward 1.24x at 32K causal, 1.09x at window 2048);
// RT_ATTN_HOPPER_BWD_FUSED_DQ=0 runs the dQ pass, for comparison.
bool fused_dq_setting() {
  static const bool off = env_switch("RT_ATTN_HOPPER_BWD_FUSED_DQ", "1", "0");
  return !off;
}

}  // namespace

// RT_ATTN_HOPPER_BWD_DQ_UNORDERED=1: the fused dQ adds its partials as they come, without the
// turn order (not deterministic): what the order costs, measured against the default.
bool hopper_bwd_dq_unordered() {
  static const bool on = env_switch("RT_ATTN_HOPPER_BWD_DQ_UNORDERED", "0", "1");
  return on;
}

namespace {

template <class Cfg, class Mask, class Rows, bool kTall>
struct DkDvKernel {
  static constexpr auto value = attn::flash_bwd_dkdv_hopper_kernel<Cfg, Mask, Rows>;
};
template <class Cfg, class Mask, class Rows>
struct DkDvKernel<Cfg, Mask, Rows, true> {
  static constexpr auto value = attn::flash_bwd_dkdv_hopper_tall_kernel<Cfg, Mask, Rows>;
};

template <class Cfg, class Rows, bool kTall = false>
bool launch_dkdv(const attn::BwdParams& p, const TensorView& q, const TensorView& k, const TensorView& v,
                 const TensorView& dout, const AttentionSpec& spec, const Shapes& s, int splits,
                 cudaStream_t stream) {
  static_assert(Cfg::kBlockN == kHopperBwdBlockN, "grid of the dK/dV kernel");
  static_assert(kHopperBwdStatRows % Cfg::kBlockM == 0, "statistics padding (attention_backward.cu)");
  CUtensorMap tk, tv, tq, tdo;
  if (!kv_tensor_map(&tk, k, Cfg::kBlockN) || !kv_tensor_map(&tv, v, Cfg::kBlockN) ||
      !kv_tensor_map(&tq, q, Cfg::kBlockM) || !kv_tensor_map(&tdo, dout, Cfg::kBlockM))
    return false;
  const int64_t n_blocks = (s.Tk + Cfg::kBlockN - 1) / Cfg::kBlockN;
  RT_CHECK(n_blocks * s.Hkv * splits <= kMaxInt, kOp, ": Tk = ", s.Tk,
           " is too long for one launch of the Hopper dK/dV kernel");
  with_mask(spec, [&](auto mask) {
    using Mask = decltype(mask);
    if constexpr (attn::fuses_dq<Cfg>() && !rt::attn::contiguous_key_blocks<Mask, Rows>) {
      RT_CHECK(false, kOp, ": the fused dQ needs one run of key blocks per query tile (not a window over routed rows)");
    } else {
      constexpr auto kernel = DkDvKernel<Cfg, Mask, Rows, kTall>::value;
      ensure_smem<kernel>(kOp, Cfg::kSmemBytes, "cudaFuncSetAttribute (Hopper flash backward dK/dV)");
      // One dimension: (key block, KV head, group share), the last two innermost (rt::attn::dkdv_cta).
      const dim3 grid(static_cast<unsigned>(n_blocks * s.Hkv * splits));
      kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, tk, tv, tq, tdo);
      check_launch(kOp, "flash_bwd_dkdv_hopper_kernel");
    }
  });
  return true;
}

template <class Cfg, class Rows>
bool launch_dq(const attn::BwdParams& p, const TensorView& k, const TensorView& v, const TensorView& dq,
            const AttentionSpec& spec, const Shapes& s, cudaStream_t stream) {
  CUtensorMap tk, tv;
  if (!kv_tensor_map(&tk, k, Cfg::kBlockN) || !kv_tensor_map(&tv, v, Cfg::kBlockN)) return false;
  // Routed rows stack the GQA group's heads in a block's rows (grid x = KV head), as the forward.
  const int64_t rows = Rows::routed ? s.Tq * (s.Hq / s.Hkv) : s.Tq;
  const int64_t m_blocks = (rows + Cfg::kBlockM - 1) / Cfg::kBlockM;
  const int64_t heads = Rows::routed ? s.Hkv : s.Hq;
  RT_CHECK(m_blocks <= 65535 && heads <= 65535 && rows <= kMaxInt, kOp, ": Tq = ", s.Tq,
           " is too long for one launch of the Hopper dQ kernel");
  with_mask(spec, [&](auto mask) {
    using Mask = decltype(mask);
    constexpr auto kernel = attn::flash_bwd_dq_hopper_kernel<Cfg, Mask, Rows>;
    ensure_smem<kernel>(kOp, Cfg::kSmemBytes, "cudaFuncSetAttribute (Hopper flash backward dQ)");
    const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>(m_blocks));
    kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, static_cast<attn::bf16*>(dq.data), dq.stride[0],
                                                             dq.stride[1], static_cast<int>(m_blocks), tk, tv);
    check_launch(kOp, "flash_bwd_dq_hopper_kernel");
  });
  return true;
}

}  // namespace

bool launch_flash_bwd_dkdv_hopper(int D, const attn::BwdParams& p, const TensorView& q, const TensorView& k,
                                  const TensorView& v, const TensorView& dout, const AttentionSpec& spec,
                                  const Shapes& s, int splits, cudaStream_t stream) {
  auto go = [&](auto cfg) {
    using Cfg = decltype(cfg);
    return spec.routed() ? launch_dkdv<Cfg, attn::RoutedRows>(p, q, k, v, dout, spec, s, splits, stream)
                         : launch_dkdv<Cfg, attn::DenseRows>(p, q, k, v, dout, spec, s, splits, stream);
  };
  if (hopper_bwd_fuses_dq(D, spec)) {
    using TallDq = attn::HopperBwdDkDvTallDqConfig;
    return spec.routed() ? launch_dkdv<TallDq, attn::RoutedRows, true>(p, q, k, v, dout, spec, s, splits, stream)
                         : launch_dkdv<TallDq, attn::DenseRows, true>(p, q, k, v, dout, spec, s, splits, stream);
  }
  if (D == 64 && tall_tiles_setting()) {
    using Tall = attn::HopperBwdDkDvTallConfig;
    return spec.routed() ? launch_dkdv<Tall, attn::RoutedRows, true>(p, q, k, v, dout, spec, s, splits, stream)
                         : launch_dkdv<Tall, attn::DenseRows, true>(p, q, k, v, dout, spec, s, splits, stream);
  }
  if (D == 64) return go(attn::HopperBwdDkDvConfig<64>{});
  if (D == 128) return go(attn::HopperBwdDkDvConfig<128>{});
  return false;
}

bool hopper_bwd_fuses_dq(int D, const AttentionSpec& spec) {
  // (a window over routed rows: rt::attn::contiguous_key_blocks is false)
  return D == 64 && tall_tiles_setting() && fused_dq_setting() && !(spec.routed() && spec.window > 0);
}

bool launch_flash_bwd_dq_hopper(int D, const attn::BwdParams& p, const TensorView& k, const TensorView& v,
                                const TensorView& dq, const AttentionSpec& spec, const Shapes& s,
                                cudaStream_t stream) {
  if (hopper_bwd_fuses_dq(D, spec)) {  // the dK/dV kernel accumulated dQ: scale and convert it
    const int64_t n = s.Tq * s.Hq * (D / 4);
    const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
    auto convert = [&](auto rows) {
      attn::flash_bwd_dq_accum_convert_kernel<decltype(rows)><<<blocks, 256, 0, stream>>>(
          p.dq_accum, p.dq_lock, static_cast<attn::bf16*>(dq.data), dq.stride[0], dq.stride[1], p.Tq, p.Hq, p.Tq_pad, p.scale,
          p.q_index, p.q_count);
    };
    if (spec.routed()) convert(attn::RoutedRows{});
    else convert(attn::DenseRows{});
    check_launch(kOp, "flash_bwd_dq_accum_convert_kernel");
    return true;
  }
  auto go = [&](auto cfg) {
    using Cfg = decltype(cfg);
    return spec.routed() ? launch_dq<Cfg, attn::RoutedRows>(p, k, v, dq, spec, s, stream)
                         : launch_dq<Cfg, attn::DenseRows>(p, k, v, dq, spec, s, stream);
  };
  if (D == 64) return go(attn::HopperBwdDqConfig<64>{});
  if (D == 128) return go(attn::HopperBwdDqConfig<128>{});
  return false;
}

}  // namespace rt::cuda::attn_launch
