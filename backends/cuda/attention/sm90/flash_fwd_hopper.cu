// The Hopper flash forward's launcher: tensor maps for K and V, the mask/rows dispatch, the
// launch. This file alone is compiled for sm_90a (wgmma and setmaxnreg exist only there; see
// backends/cuda/CMakeLists.txt).
#include "cuda/attention/flash_fwd_hopper.h"

#include <cuda.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cuda/attention/flash_fwd_hopper.cuh"
#include "cuda/env_switch.h"
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

template <class Cfg, class Rows>
bool launch(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
            const AttentionSpec& spec, const Shapes& s, cudaStream_t stream) {
  CUtensorMap tk, tv;
  if (!kv_tensor_map(&tk, k, Cfg::kBlockN) || !kv_tensor_map(&tv, v, Cfg::kBlockN)) return false;
  const attn::FwdParams p = fwd_params(q, k, v, o, lse, spec, s, Cfg::kBlockM);
  with_mask(spec, [&](auto mask) {
    using Mask = decltype(mask);
    constexpr auto kernel = attn::flash_fwd_hopper_kernel<Cfg, Mask, Rows>;
    ensure_smem<kernel>("attention (cuda)", Cfg::kSmemBytes, "cudaFuncSetAttribute (Hopper flash forward)");
    const int64_t heads = Rows::routed ? s.Hkv : s.Hq;
    const int64_t blocks = heads * p.num_m_blocks;
    RT_CHECK(!Cfg::kPersistent || blocks <= INT32_MAX, "attention (cuda): ", blocks, " query blocks are too many for one launch");
    const dim3 grid = Cfg::kPersistent ? dim3(static_cast<unsigned>(std::min<int64_t>(blocks, num_sms())))
                                       : dim3(static_cast<unsigned>(heads), static_cast<unsigned>(p.num_m_blocks));
    kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, tk, tv);
    check_launch("attention (cuda)", "flash_fwd_hopper_kernel");
  });
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
