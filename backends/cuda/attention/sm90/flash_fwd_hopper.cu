// The Hopper flash forward's launcher: tensor maps for K and V, the mask/rows dispatch, the
// launch. This file alone is compiled for sm_90a (wgmma and setmaxnreg exist only there; see
// backends/cuda/CMakeLists.txt).
#include "cuda/attention/flash_fwd_hopper.h"

#include <cuda.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "cuda/attention/flash_fwd_hopper.cuh"
#include "cuda/env_switch.h"
#include "cuda/memory.h"
#include "cuda/attention/sm90/kv_tensor_map.h"

namespace rt::cuda::attn_launch {
namespace {

// RT_ATTN_HOPPER_OVERLAP=0 runs the serial schedule (for comparison); default: the overlapped one.
bool overlap_setting() {
  static const bool serial = env_switch("RT_ATTN_HOPPER_OVERLAP", "1", "0");
  return !serial;
}

// Consumer warpgroups at head dim 64 (the overlapped schedule): three (FlashAttention-3's 192-row
// query blocks) from 8192 query rows (a routed call: its capacity), two (128 rows) below. On the
// H100 (tenth session of 2026-12-06, bench_attention) three ran causal 8% faster from 16K (0.955
// against 1.042 ms at 16K, 14.88 against 16.13 at 64K), the window 3% and the routed rows 8-13%;
// at 4K they tie and at 1K the 192-row block loses (0.024 against 0.021 ms).
// RT_ATTN_HOPPER_D64_WG=2|3 forces one.
int consumers_setting(int64_t rows) {
  static const char* forced = [] {
    const char* v = std::getenv("RT_ATTN_HOPPER_D64_WG");
    RT_CHECK(v == nullptr || !*v || std::string(v) == "2" || std::string(v) == "3", "RT_ATTN_HOPPER_D64_WG='", v,
             "': expected 2 or 3");
    return v && *v ? v : nullptr;
  }();
  if (forced) return forced[0] - '0';
  return rows >= 8192 ? 3 : 2;
}

// RT_ATTN_HOPPER_PERSISTENT=1: one CTA per SM walking the query blocks (an experiment against the
// default grid of one CTA per block; the overlapped schedule only).
bool persistent_setting() {
  static const bool on = env_switch("RT_ATTN_HOPPER_PERSISTENT", "0", "1");
  return on;
}

// RT_ATTN_ROUTED_SPLIT: auto (default) splits the key range of heavy routed query blocks when few
// blocks are active (flash_fwd_split.cuh); 0 never; force splits every block of two or more key
// tiles, whatever the count, into as many chunks as it can (up to 4; for the tests: small inputs
// then take the split and combine path).
// RT_ATTN_ROUTED_SPLIT_WAVES=1|2|4: chunks of about 1/waves of an SM's share of the work (default 2:
// on the H100, session 13, 2 beat 1 at 32K and 95% by 7%, 0.905 against 0.968 ms).
enum class SplitMode { Off, Auto, Force };
SplitMode split_setting() {
  static const SplitMode mode = [] {
    const char* v = std::getenv("RT_ATTN_ROUTED_SPLIT");
    const std::string m = v ? v : "";
    RT_CHECK(m.empty() || m == "auto" || m == "0" || m == "force", "RT_ATTN_ROUTED_SPLIT='", m,
             "': expected auto, 0 or force");
    return m == "0" ? SplitMode::Off : m == "force" ? SplitMode::Force : SplitMode::Auto;
  }();
  return mode;
}
int split_waves_setting() {
  static const int waves = [] {
    const char* v = std::getenv("RT_ATTN_ROUTED_SPLIT_WAVES");
    const std::string w = v ? v : "";
    RT_CHECK(w.empty() || w == "1" || w == "2" || w == "4", "RT_ATTN_ROUTED_SPLIT_WAVES='", w, "': expected 1, 2 or 4");
    return w.empty() ? 2 : std::atoi(w.c_str());
  }();
  return waves;
}

// The split's plan bounds (the kernel decides the rest from the count) and its workspace size in
// floats; max_splits stays 0 where no block could be split.
template <class Cfg>
int64_t plan_split(attn::FwdParams& p, const Shapes& s) {
  constexpr int kMaxSplits = 4, kMinChunk = 8;
  const SplitMode mode = split_setting();
  const int64_t tiles_max = (s.Tk + Cfg::kBlockN - 1) / Cfg::kBlockN;
  const int min_chunk = mode == SplitMode::Force ? 1 : kMinChunk;
  if (mode == SplitMode::Off || tiles_max <= min_chunk || Cfg::kPersistent) return 0;
  attn::RoutedSplit& sp = p.split;
  sp.sms = num_sms();
  // Auto: only launches whose active blocks fit one wave (see flash_fwd_split.cuh).
  const int64_t blocks_max =
      std::min<int64_t>(p.num_m_blocks, mode == SplitMode::Force ? 512 : std::max<int64_t>(1, sp.sms / s.Hkv));
  sp.max_splits = kMaxSplits;
  sp.blocks_max = static_cast<int>(blocks_max);
  sp.extra_y = static_cast<int>((kMaxSplits - 1) * blocks_max);
  sp.tiles_max = static_cast<int>(tiles_max);
  sp.min_chunk = min_chunk;
  sp.waves = split_waves_setting();
  sp.fixed_chunk = mode == SplitMode::Force ? 1 : 0;
  RT_CHECK(p.num_m_blocks + sp.extra_y <= 65535, "attention (cuda): Tq = ", s.Tq, " is too long for one launch");
  return s.Hkv * blocks_max * kMaxSplits * Cfg::kBlockM * (Cfg::kD + 2);
}

template <class Cfg, class Rows>
bool launch(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
            const AttentionSpec& spec, const Shapes& s, cudaStream_t stream) {
  CUtensorMap tk, tv;
  if (!kv_tensor_map(&tk, k, Cfg::kBlockN) || !kv_tensor_map(&tv, v, Cfg::kBlockN)) return false;
  attn::FwdParams p = fwd_params(q, k, v, o, lse, spec, s, Cfg::kBlockM);
  const int64_t part_floats = Rows::routed ? plan_split<Cfg>(p, s) : 0;
  std::optional<Scratch> part;  // the split's workspace, freed in stream order when this returns or throws
  if (part_floats > 0) {
    part.emplace(static_cast<size_t>(part_floats) * sizeof(float), stream, "the routed rows' key split (attention)");
    p.split.part = static_cast<float*>(part->get());
  }
  with_mask(spec, [&](auto mask) {
    using Mask = decltype(mask);
    constexpr auto kernel = attn::flash_fwd_hopper_kernel<Cfg, Mask, Rows>;
    ensure_smem<kernel>("attention (cuda)", Cfg::kSmemBytes, "cudaFuncSetAttribute (Hopper flash forward)");
    const int64_t heads = Rows::routed ? s.Hkv : s.Hq;
    const int64_t blocks = heads * p.num_m_blocks;
    RT_CHECK(!Cfg::kPersistent || blocks <= INT32_MAX, "attention (cuda): ", blocks, " query blocks are too many for one launch");
    const dim3 grid = Cfg::kPersistent
                          ? dim3(static_cast<unsigned>(std::min<int64_t>(blocks, num_sms())))
                          : dim3(static_cast<unsigned>(heads), static_cast<unsigned>(p.num_m_blocks + p.split.extra_y));
    kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, tk, tv);
    check_launch("attention (cuda)", "flash_fwd_hopper_kernel");
    if constexpr (Rows::routed) {
      if (p.split.max_splits <= 1) return;
      constexpr auto combine = attn::flash_fwd_split_combine_kernel<Cfg::kD, Cfg::kBlockM, Cfg::kBlockN, Mask, Rows>;
      combine<<<dim3(static_cast<unsigned>(s.Hkv), static_cast<unsigned>(p.split.blocks_max)), 256, 0, stream>>>(p);
      check_launch("attention (cuda)", "flash_fwd_split_combine_kernel");
    }
  });
  if (part) part->release();
  return true;
}

}  // namespace

bool hopper_forward_available() {
  static std::atomic<int> cached[64] = {};  // per device: 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (dev >= 0 && dev < 64) {
    const int c = cached[dev].load(std::memory_order_relaxed);
    if (c != 0) return c == 1;
  }
  int major = 0, minor = 0;
  bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess;
  if (!ok) (void)cudaGetLastError();
  ok = ok && major == 9 && minor == 0;
  if (dev >= 0 && dev < 64) cached[dev].store(ok ? 1 : 2, std::memory_order_relaxed);
  return ok;
}

bool launch_flash_hopper(int D, const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                         float* lse, const AttentionSpec& spec, const Shapes& s, cudaStream_t stream) {
  auto go = [&](auto cfg) {
    using Cfg = decltype(cfg);
    return spec.routed() ? launch<Cfg, attn::RoutedRows>(q, k, v, o, lse, spec, s, stream)
                         : launch<Cfg, attn::DenseRows>(q, k, v, o, lse, spec, s, stream);
  };
  const bool overlap = overlap_setting();
  if (overlap && persistent_setting()) {
    if (D == 64 && consumers_setting(s.Tq) == 3) return go(attn::HopperFwdConfig<64, true, 3, true>{});
    if (D == 64) return go(attn::HopperFwdConfig<64, true, 2, true>{});
    if (D == 128) return go(attn::HopperFwdConfig<128, true, 2, true>{});
    return false;
  }
  if (D == 64 && overlap && consumers_setting(s.Tq) == 3) return go(attn::HopperFwdConfig<64, true, 3>{});
  if (D == 64) return overlap ? go(attn::HopperFwdConfig<64, true>{}) : go(attn::HopperFwdConfig<64, false>{});
  if (D == 128) return overlap ? go(attn::HopperFwdConfig<128, true>{}) : go(attn::HopperFwdConfig<128, false>{});
  return false;
}

}  // namespace rt::cuda::attn_launch
