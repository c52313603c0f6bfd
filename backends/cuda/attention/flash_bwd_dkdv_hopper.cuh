// dK and dV of the deterministic backward (flash_bwd_kernel in flash_attention_bwd.cuh, without
// the fused dQ) on Hopper (sm_90a), in FlashAttention-3's structure: a block of kBlockN keys stays
// in shared memory while the query tiles that see it stream through a ring of stages, brought by
// TMA from a producer warpgroup; two consumer warpgroups own 64 keys each. Per query tile:
//   S^T  = K Q^T        wgmma, K and Q from shared memory
//   dP^T = V dO^T       wgmma, V and dO from shared memory
//   P^T  = exp2(S^T scale log2e - lse2[query]), 0 for a (key, query) pair outside the query's key
//          range and for inactive queries
//   dV  += P^T dO       wgmma, P^T from registers, dO read transposed (MN-major); at D = 64 issued
//                       before dS^T = P^T (dP^T - Delta[query]) is computed (0 where P^T is masked)
//   dK  += dS^T Q       wgmma, dS^T from registers, Q read transposed
// The tile's lse2 and Delta come with Q and dO, by a bulk copy into the same stage. At D = 64, with
// four stages in flight, S^T and dP^T are committed as separate groups so that P^T is computed
// while dP^T runs.
// dK and dV stay in fp32 registers over the whole loop (the group's query heads of this CTA's
// split, then the query tiles) and are written once, as the mma.sync kernel writes them: bf16, or
// the split's fp32 partial when the group is split over CTAs. No atomics: the same bits every run.
//
// Routed rows are a compact list (q, dout [capacity, Hq, D]), so a query tile is a box TMA can
// load; rows at or past the active count may hold anything, and the last tile's are zeroed in
// shared memory before use (0 * NaN would otherwise reach dV).
#pragma once

#include "cuda/attention/flash_attention_bwd.cuh"
#include "cuda/attention/flash_fwd_hopper.cuh"

namespace rt::cuda::attn {

template <int kD_>
struct HopperBwdDkDvConfig {
  static constexpr int kD = kD_;
  static constexpr int kConsumers = 2;              // warpgroups of 64 keys
  static constexpr int kBlockN = 64 * kConsumers;   // keys per CTA
  static constexpr int kBlockM = 64;                // queries per tile (the statistics' padding)
  // At D = 64 a query tile is short work (16 KB of Q and dO), so more of them are kept in flight.
  static constexpr int kStages = kD == 64 ? 4 : 2;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kSubTiles = kD / 64;
  static constexpr int kKVBytes = kBlockN * kD * 2;  // K, and V
  static constexpr int kQBytes = kBlockM * kD * 2;   // one stage of Q, and of dO
  static constexpr int kStatBytes = 2 * kBlockM * 4;  // one stage of lse2 and Delta
  static constexpr int kExtraBytes = 0;               // (the tall tile's P and dS)
  static constexpr int kBarBytes = (1 + 2 * kStages) * 8;
  static constexpr int kSmemBytes =
      1024 + 2 * kKVBytes + kStages * (2 * kQBytes + kStatBytes) + kExtraBytes + kBarBytes;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(kD == 64 || kD == 128, "head dims 64 and 128");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

// Whether a dK/dV config also accumulates dQ (HopperBwdDkDvTallDqConfig): its items then run
// query tiles in descending order (rt::attn::dkdv_item), and the launcher refuses masks whose key
// blocks are not one run per tile.
template <class Cfg>
__host__ __device__ constexpr bool fuses_dq() {
  if constexpr (requires { Cfg::kFusedDq; }) return Cfg::kFusedDq;
  else return false;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// What the Hopper dK/dV kernels (this one and flash_bwd_dkdv_hopper_tall.cuh) share: the shared
// memory plan, the work list of a CTA, its producer and the zeroing of inactive routed rows.
namespace dkdv_detail {

// K and V (kSub 64-column sub-tiles of kBlockN rows), kStages stages of Q and dO (kBlockM rows),
// Cfg::kExtraBytes of the kernel's own, the stages' statistics (lse2 then Delta), the mbarriers.
template <class Cfg>
struct Smem {
  uint32_t k, v, q, dout, extra, stat, bars;
  __device__ __forceinline__ uint32_t q_stage(int st) const { return q + st * Cfg::kQBytes; }
  __device__ __forceinline__ uint32_t dout_stage(int st) const { return dout + st * Cfg::kQBytes; }
  __device__ __forceinline__ uint32_t stat_stage(int st) const { return stat + st * Cfg::kStatBytes; }
  __device__ __forceinline__ uint32_t kv_full() const { return bars; }
  __device__ __forceinline__ uint32_t q_full(int st) const { return bars + 8u * (1 + st); }
  __device__ __forceinline__ uint32_t q_empty(int st) const { return bars + 8u * (1 + Cfg::kStages + st); }
};
template <class Cfg>
__device__ __forceinline__ Smem<Cfg> smem_plan(const uint8_t* smem_raw) {
  Smem<Cfg> m;
  m.k = (smem_addr(smem_raw) + 1023u) & ~1023u;
  m.v = m.k + Cfg::kKVBytes;
  m.q = m.v + Cfg::kKVBytes;
  m.dout = m.q + Cfg::kStages * Cfg::kQBytes;
  m.extra = m.dout + Cfg::kStages * Cfg::kQBytes;
  m.stat = m.extra + Cfg::kExtraBytes;
  m.bars = m.stat + Cfg::kStages * Cfg::kStatBytes;
  return m;
}

// A CTA's keys [n0, n1) (key block `key_block`) of KV head hk and group share `split`, and its
// items in rt::attn::dkdv_item's order (which depends on the mask for a kernel that accumulates
// dQ: flash_bwd_dkdv_hopper_tall.cuh). The 1-D grid is laid out by rt::attn::dkdv_cta.
template <class Cfg, class Mask, class Rows>
struct Work {
  int key_block, split, n0, n1, hk, h_first, heads, Tq, mb_first, m_steps, items;
  Rows rows;
  __device__ __forceinline__ int head(int it) const {
    int h, t;
    rt::attn::dkdv_item<Mask, fuses_dq<Cfg>()>(it, heads, m_steps, h, t);
    return h_first + h;
  }
  __device__ __forceinline__ int m0(int it) const {
    int h, t;
    rt::attn::dkdv_item<Mask, fuses_dq<Cfg>()>(it, heads, m_steps, h, t);
    return (mb_first + t) * Cfg::kBlockM;
  }
};
template <class Cfg, class Mask, class Rows>
__device__ __forceinline__ Work<Cfg, Mask, Rows> make_work(const BwdParams& p) {
  Work<Cfg, Mask, Rows> w;
  // (the launcher's share count: heads_per_split is ceil(group / splits) and splits ceil(group / it))
  const int splits = (p.group + p.heads_per_split - 1) / p.heads_per_split;
  int chain;
  rt::attn::dkdv_cta(static_cast<int>(blockIdx.x), p.Hkv * splits, w.key_block, chain);
  w.hk = chain / splits;
  w.split = chain % splits;
  w.n0 = w.key_block * Cfg::kBlockN;
  w.n1 = min(w.n0 + Cfg::kBlockN, p.Tk);
  w.h_first = w.hk * p.group + w.split * p.heads_per_split;
  const int h_end = min(w.h_first + p.heads_per_split, (w.hk + 1) * p.group);
  w.rows = make_rows<Rows>(p.q_index, p.q_count);
  w.Tq = w.rows.active(p.Tq);  // rows at or past it are inactive
  int q_begin, q_end;
  query_range<Mask>(p.mask, w.rows, w.Tq, w.n0, w.n1, q_begin, q_end);
  w.mb_first = q_begin / Cfg::kBlockM;
  w.m_steps = q_begin < q_end ? (q_end + Cfg::kBlockM - 1) / Cfg::kBlockM - w.mb_first : 0;
  w.heads = max(h_end - w.h_first, 0);
  w.items = w.m_steps * w.heads;
  return w;
}

// Thread 0: the mbarriers (then every thread must synchronize).
template <class Cfg>
__device__ __forceinline__ void init_barriers(const Smem<Cfg>& sm) {
  if (threadIdx.x != 0) return;
  sm90::mbar_init(sm.kv_full(), 1);
  for (int st = 0; st < Cfg::kStages; ++st) {
    sm90::mbar_init(sm.q_full(st), 1);
    sm90::mbar_init(sm.q_empty(st), 128 * Cfg::kConsumers);  // one arrival per consumer thread
  }
  sm90::mbar_init_fence();
}

// The producer (one thread): K and V once, then per item Q, dO and the tile's statistics into
// stage it % kStages. The statistics ride with the tile: read from global memory after the
// products, their latency sat between S^T and P^T on every tile. [Hq][Tq_pad] rows, Tq_pad a
// multiple of kHopperBwdStatRows, so both runs are aligned and in range.
template <class Cfg, class W>
__device__ __forceinline__ void produce(const BwdParams& p, const W& w, const Smem<Cfg>& sm, const CUtensorMap* tk,
                                        const CUtensorMap* tv, const CUtensorMap* tq, const CUtensorMap* tdo) {
  using namespace sm90;
  constexpr int kSub = Cfg::kD / 64, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  tma_prefetch_desc(tk);
  tma_prefetch_desc(tv);
  tma_prefetch_desc(tq);
  tma_prefetch_desc(tdo);
  mbar_arrive_expect_tx(sm.kv_full(), 2 * Cfg::kKVBytes);
#pragma unroll
  for (int j = 0; j < kSub; ++j) {
    tma_load_3d(sm.k + j * kBlockN * 128, tk, sm.kv_full(), j * 64, w.hk, w.n0);
    tma_load_3d(sm.v + j * kBlockN * 128, tv, sm.kv_full(), j * 64, w.hk, w.n0);
  }
  for (int it = 0; it < w.items; ++it) {
    const int st = it % Cfg::kStages;
    const uint32_t ph = (it / Cfg::kStages) & 1;
    const int h = w.head(it), m0 = w.m0(it);
    mbar_wait(sm.q_empty(st), ph ^ 1);
    mbar_arrive_expect_tx(sm.q_full(st), 2 * Cfg::kQBytes + Cfg::kStatBytes);
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      tma_load_3d(sm.q_stage(st) + j * kBlockM * 128, tq, sm.q_full(st), j * 64, h, m0);
      tma_load_3d(sm.dout_stage(st) + j * kBlockM * 128, tdo, sm.q_full(st), j * 64, h, m0);
    }
    const int64_t stat = static_cast<int64_t>(h) * p.Tq_pad + m0;
    bulk_load(sm.stat_stage(st), p.lse2 + stat, kBlockM * 4, sm.q_full(st));
    bulk_load(sm.stat_stage(st) + kBlockM * 4, p.delta + stat, kBlockM * 4, sm.q_full(st));
  }
}

// Routed rows past the active count hold anything: the last tile's are zeroed in shared memory
// before use (0 * NaN would otherwise reach dV), by both consumer warpgroups (tid in [0, 256)),
// then a barrier.
template <class Cfg>
__device__ __forceinline__ void zero_inactive_rows(uint32_t sQs, uint32_t sdOs, int first_dead, int tid) {
  constexpr int kSub = Cfg::kD / 64, kBlockM = Cfg::kBlockM;
  for (int idx = tid; idx < (kBlockM - first_dead) * kSub * 8; idx += 256) {
    const int r = first_dead + idx / (kSub * 8), j = (idx / 8) % kSub, c = idx % 8;
    const uint32_t off = j * kBlockM * 128 + r * 128 + c * 16;
    asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(sQs + off), "r"(0u) : "memory");
    asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(sdOs + off), "r"(0u) : "memory");
  }
  sm90::fence_proxy_async();
  sm90::named_barrier_sync(1, 256);
}

// A consumer's step `it`, once its query tile has arrived: the stage, the tile's first row, its
// last active row, and the stage's Q and dO (inactive routed rows zeroed, by the consumer thread
// `tid` of [0, 256)).
struct Step {
  int st, m0, last_row;
  uint32_t q, dout;
};
template <class Cfg, class W>
__device__ __forceinline__ Step begin_step(const Smem<Cfg>& sm, const W& w, int it, int tid) {
  Step s;
  s.st = it % Cfg::kStages;
  s.m0 = w.m0(it);
  s.last_row = min(s.m0 + Cfg::kBlockM, w.Tq) - 1;
  s.q = sm.q_stage(s.st);
  s.dout = sm.dout_stage(s.st);
  sm90::mbar_wait(sm.q_full(s.st), (it / Cfg::kStages) & 1);
  if (decltype(w.rows)::routed && s.m0 + Cfg::kBlockM > w.Tq)
    zero_inactive_rows<Cfg>(s.q, s.dout, w.Tq - s.m0, tid);
  return s;
}

}  // namespace dkdv_detail
#endif

// Grid: one dimension of key blocks x KV heads x group splits, laid out by rt::attn::dkdv_cta.
template <class Cfg, class Mask, class Rows>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    flash_bwd_dkdv_hopper_kernel(const __grid_constant__ BwdParams p, const __grid_constant__ CUtensorMap tmap_k,
                                 const __grid_constant__ CUtensorMap tmap_v, const __grid_constant__ CUtensorMap tmap_q,
                                 const __grid_constant__ CUtensorMap tmap_do) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace sm90;
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  constexpr int kMT = kBlockM / 8;  // n8 blocks of queries in S^T

  extern __shared__ uint8_t smem_raw[];
  const dkdv_detail::Smem<Cfg> sm = dkdv_detail::smem_plan<Cfg>(smem_raw);
  const uint32_t sK = sm.k, sV = sm.v;
  const dkdv_detail::Work<Cfg, Mask, Rows> w = dkdv_detail::make_work<Cfg, Mask, Rows>(p);
  const int n0 = w.n0, hk = w.hk, Tq = w.Tq, items = w.items;
  const MaskParams& mk = p.mask;
  const Rows& rows = w.rows;

  dkdv_detail::init_barriers(sm);
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0 && items > 0) dkdv_detail::produce(p, w, sm, &tmap_k, &tmap_v, &tmap_q, &tmap_do);
  } else {
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int cw = wg - 1;
    const int ctid = threadIdx.x - 128 * wg;
    const int warp = ctid >> 5, lane = ctid & 31, g = lane >> 2, t4 = lane & 3;
    const int nw0 = n0 + cw * 64;  // this warpgroup's first key
    int key[2], key_seen[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      key[hr] = nw0 + warp * 16 + g + 8 * hr;
      key_seen[hr] = key[hr] < p.Tk;
    }

    float dk[kD / 2], dv[kD / 2];
#pragma unroll
    for (int i = 0; i < kD / 2; ++i) dk[i] = dv[i] = 0.f;
    float s[kBlockM / 2], dp[kBlockM / 2];
    uint32_t pa[kBlockM / 16][4];

    // Every consumer thread arrives: its own reads of the stage's statistics (ordinary loads, unlike
    // the tensor cores' operand reads) come before its own arrival, as in CUTLASS's consumer_release.
    auto release = [&](uint32_t bar) { mbar_arrive(bar); };

    if (items > 0) mbar_wait(sm.kv_full(), 0);
    for (int it = 0; it < items; ++it) {
      const auto [st, m0, last_row, sQs, sdOs] = dkdv_detail::begin_step(sm, w, it, ctid + 128 * cw);
      const int h = w.head(it);

      // S^T = K Q^T and dP^T = V dO^T (this warpgroup's 64 keys x kBlockM queries), one group.
      hopper_detail::fence_regs(s);
      hopper_detail::fence_regs(dp);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        const uint32_t a_off = (ks >> 2) * (kBlockN * 128) + cw * 64 * 128 + (ks & 3) * 32;
        const uint32_t b_off = (ks >> 2) * (kBlockM * 128) + (ks & 3) * 32;
        hopper_detail::mma_qk<kBlockM>(s, smem_desc_sw128(sK + a_off, 16, 1024), smem_desc_sw128(sQs + b_off, 16, 1024),
                                       ks == 0);
      }
      wgmma_commit();  // S^T alone: P^T is computed while dP^T's products run
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        const uint32_t a_off = (ks >> 2) * (kBlockN * 128) + cw * 64 * 128 + (ks & 3) * 32;
        const uint32_t b_off = (ks >> 2) * (kBlockM * 128) + (ks & 3) * 32;
        hopper_detail::mma_qk<kBlockM>(dp, smem_desc_sw128(sV + a_off, 16, 1024),
                                       smem_desc_sw128(sdOs + b_off, 16, 1024), ks == 0);
      }
      wgmma_commit();
      wgmma_wait<1>();
      hopper_detail::fence_regs(s);

      // P^T = exp2(S^T scale log2e - lse2) and dS^T = P^T (dP^T - Delta), both 0 for a pair outside
      // its query's key range and for inactive queries (a NaN in an unseen dO or V stays out).
      const bool full_tile = Mask::key_lo(mk, rows.pos(mk, last_row)) <= nw0 &&
                             Mask::key_hi(mk, rows.pos(mk, m0)) >= nw0 + 64;
      const float* lse2 = reinterpret_cast<const float*>(smem_raw + (sm.stat_stage(st) - smem_addr(smem_raw)));
      const float* delta = lse2 + kBlockM;
      auto visible = [&](int hr, int col) {
        bool v = m0 + col <= last_row;
        if (!full_tile && v) {
          const int64_t qpos = rows.pos(mk, m0 + col);
          v = key[hr] >= Mask::key_lo(mk, qpos) && key[hr] < Mask::key_hi(mk, qpos);
        }
        return v;
      };
      // dV += P^T dO and dK += dS^T Q (dO and Q read transposed: [queries][D], D contiguous).
      uint32_t dsa[kBlockM / 16][4];
      auto issue_dv = [&] {
#pragma unroll
        for (int kk = 0; kk < kBlockM / 16; ++kk)
          hopper_detail::mma_pv<kD>(dv, pa[kk], smem_desc_sw128(sdOs + kk * 16 * 128, kBlockM * 128, 1024));
      };
      auto issue_dk = [&] {
#pragma unroll
        for (int kk = 0; kk < kBlockM / 16; ++kk)
          hopper_detail::mma_pv<kD>(dk, dsa[kk], smem_desc_sw128(sQs + kk * 16 * 128, kBlockM * 128, 1024));
      };
      // P^T while dP^T's products run.
      static_assert(kBlockM / 2 <= 32, "one visibility bit per accumulator element");
      uint32_t vis = 0;
#pragma unroll
      for (int nt = 0; nt < kMT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 4 * nt + e, col = nt * 8 + 2 * t4 + (e & 1);
          const bool v = visible(e >> 1, col);
          s[i] = v ? fast_exp2(fmaf(s[i], p.scale_log2, -lse2[col])) : 0.f;
          vis |= static_cast<uint32_t>(v) << i;
        }
      hopper_detail::pack_a<kBlockM>(s, pa);
      if constexpr (kD == 64) {
        // dV's products run while the CUDA cores compute dS^T. (At D = 128 its in-flight
        // accumulators would force spills, so both GEMMs go after.)
        hopper_detail::fence_regs(dv);
        hopper_detail::fence_regs(pa);
        wgmma_fence();
        issue_dv();
        wgmma_commit();
        wgmma_wait<1>();  // dP^T done; dV += P^T dO may still run
      } else {
        wgmma_wait<0>();
      }
      hopper_detail::fence_regs(dp);
#pragma unroll
      for (int nt = 0; nt < kMT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 4 * nt + e, col = nt * 8 + 2 * t4 + (e & 1);
          s[i] = (vis >> i) & 1u ? s[i] * (dp[i] - delta[col]) : 0.f;
        }
      hopper_detail::pack_a<kBlockM>(s, dsa);
      hopper_detail::fence_regs(dk);
      hopper_detail::fence_regs(dv);
      hopper_detail::fence_regs(pa);
      hopper_detail::fence_regs(dsa);
      wgmma_fence();
      if constexpr (kD != 64) issue_dv();
      issue_dk();
      wgmma_commit();
      wgmma_wait<0>();
      hopper_detail::fence_regs(dk);
      hopper_detail::fence_regs(dv);
      hopper_detail::fence_regs(pa);
      hopper_detail::fence_regs(dsa);
      release(sm.q_empty(st));
    }

    // Epilogue (dk[4 dt + 2 hr + e]: key row hr, column dt * 8 + 2 t4 + e), as flash_bwd_kernel's.
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      if (!key_seen[hr]) continue;
      const int kr = key[hr];
      if (p.dkv_accum == nullptr) {
        bf16* dkr = p.dk + static_cast<int64_t>(kr) * p.dk_row + static_cast<int64_t>(hk) * p.dk_head + 2 * t4;
        bf16* dvr = p.dv + static_cast<int64_t>(kr) * p.dv_row + static_cast<int64_t>(hk) * p.dv_head + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < kD / 8; ++dt) {
          *reinterpret_cast<uint32_t*>(dkr + dt * 8) =
              pack_bf16(dk[4 * dt + 2 * hr] * p.scale, dk[4 * dt + 2 * hr + 1] * p.scale);
          *reinterpret_cast<uint32_t*>(dvr + dt * 8) = pack_bf16(dv[4 * dt + 2 * hr], dv[4 * dt + 2 * hr + 1]);
        }
      } else {
        const int64_t plane = static_cast<int64_t>(p.Tk) * p.Hkv * kD;
        float* dkr = p.dkv_accum + w.split * 2 * plane + (static_cast<int64_t>(kr) * p.Hkv + hk) * kD + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < kD / 8; ++dt) {
          *reinterpret_cast<float2*>(dkr + dt * 8) =
              make_float2(dk[4 * dt + 2 * hr] * p.scale, dk[4 * dt + 2 * hr + 1] * p.scale);
          *reinterpret_cast<float2*>(dkr + plane + dt * 8) = make_float2(dv[4 * dt + 2 * hr], dv[4 * dt + 2 * hr + 1]);
        }
      }
    }
  }
#endif
}

}  // namespace rt::cuda::attn
