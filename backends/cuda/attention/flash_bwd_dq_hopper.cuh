// dQ of the deterministic backward (flash_attention_bwd_dq.cuh) on Hopper (sm_90a), built like
// the Hopper forward (flash_fwd_hopper.cuh): the same producer warpgroup bringing K and V tiles by
// TMA into a ring of stages, the same query block (QueryBlock: dense rows, or routed rows with the
// GQA heads stacked), the same descriptors. Per KV tile, in each consumer warpgroup (64 rows):
//   S  = Q K^T          wgmma, Q and K from shared memory          (the forward's S)
//   dP = dO V^T         wgmma, dO and V from shared memory         (V read as K is)
//   dS = P (dP - Delta), P = exp2(S scale log2e - lse2), 0 outside each row's key range
//   dQ += dS K          wgmma, dS from registers, K read transposed (the forward's P V)
// dQ stays in fp32 registers and is written once, scaled, as bf16: each element comes from one
// thread in a fixed order, so the result is the same bits on every run (no atomics).
// The statistics (lse2, Delta) are flash_bwd_preprocess_kernel's, [Hq][Tq_pad].
#pragma once

#include "cuda/attention/flash_attention_bwd.cuh"
#include "cuda/attention/flash_fwd_hopper.cuh"

namespace rt::cuda::attn {

template <int kD_>
struct HopperBwdDqConfig {
  static constexpr int kD = kD_;
  static constexpr int kConsumers = 2;  // warpgroups of 64 query rows
  static constexpr int kBlockM = 64 * kConsumers;
  // S and dP are kept together in registers: 64-key tiles at D = 128 leave room for dQ's 64.
  static constexpr int kBlockN = kD == 64 ? 128 : 64;
  static constexpr int kStages = 2;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kSubTiles = kD / 64;
  static constexpr int kQBytes = kBlockM * kD * 2;  // Q, and dO
  static constexpr int kTileBytes = kBlockN * kD * 2;
  static constexpr int kBarBytes = 4 * kStages * 8;
  static constexpr int kSmemBytes = 1024 + 2 * kQBytes + 2 * kStages * kTileBytes + kBarBytes;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(kD == 64 || kD == 128, "head dims 64 and 128");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

// dq [Tq, Hq, D] (strides dq_row, dq_head). Grid: (query heads, or KV heads for routed rows) x
// num_m_blocks blocks of kBlockM rows.
template <class Cfg, class Mask, class Rows>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    flash_bwd_dq_hopper_kernel(const __grid_constant__ BwdParams p, bf16* dq, int64_t dq_row, int64_t dq_head,
                               int num_m_blocks, const __grid_constant__ CUtensorMap tmap_k,
                               const __grid_constant__ CUtensorMap tmap_v) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace sm90;
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kStages = Cfg::kStages;
  constexpr int kSub = Cfg::kSubTiles, kTile = Cfg::kTileBytes;
  constexpr int kNT = kBlockN / 8;
  constexpr float kInf = __builtin_huge_valf();

  extern __shared__ uint8_t smem_raw[];
  const uint32_t sQ = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sdO = sQ + Cfg::kQBytes;
  const uint32_t sK = sdO + Cfg::kQBytes;  // stage st at sK + st * kTile
  const uint32_t sV = sK + kStages * kTile;
  const hopper_detail::KvRing<kStages> ring{sV + kStages * kTile};

  const QueryBlock<Mask, Rows> qb = make_query_block<Mask, Rows>(p, kBlockM, num_m_blocks);
  auto dq_ptr = [&](int r) {
    return dq + static_cast<int64_t>(qb.qrow(r)) * dq_row + static_cast<int64_t>(qb.qhead(r)) * dq_head;
  };
  if (qb.empty()) {  // no row sees a key, or none is active: dq = 0
    for (int idx = threadIdx.x; idx < kBlockM * (kD / 2); idx += Cfg::kThreads) {
      const int r = idx / (kD / 2), c = idx % (kD / 2);
      if (qb.m0 + r < qb.m_end) reinterpret_cast<uint32_t*>(dq_ptr(qb.m0 + r))[c] = 0u;
    }
    return;
  }
  const int nb_min = qb.n_lo / kBlockN;
  const int nb_max = (qb.n_hi + kBlockN - 1) / kBlockN;  // exclusive
  const int ntiles = nb_max - nb_min;                     // latest tile first, as the forward

  if (threadIdx.x == 0) ring.init(4 * Cfg::kConsumers);  // one arrival per consumer warp
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    // Producer: the forward's ring.
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) ring.template produce<kSub, kBlockN>(ntiles, nb_max, qb.hk, sK, sV, &tmap_k, &tmap_v);
  } else {
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int cw = wg - 1;
    const int ctid = threadIdx.x - 128 * wg;
    const int warp = ctid >> 5, lane = ctid & 31, g = lane >> 2, t4 = lane & 3;
    const int r_base = qb.m0 + cw * 64;
    const uint32_t sQw = sQ + cw * 64 * kD * 2, sdOw = sdO + cw * 64 * kD * 2;

    // Q and dO: 64 rows each, 128-byte swizzled sub-tiles [kSub][64][64] (the forward's Q layout).
    {
      constexpr int kChunks = kD / 8;
#pragma unroll
      for (int idx = ctid; idx < 64 * kChunks; idx += 128) {
        const int r = idx / kChunks, c = idx % kChunks;
        const int row = r_base + r;
        const bool ok = row <= qb.m_last;
        const int64_t qr = qb.qrow(min(row, qb.m_last)), qh = qb.qhead(min(row, qb.m_last));
        const uint32_t off = (c >> 3) * (64 * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4);
        cp_async_16(sQw + off, ok ? p.q + qr * p.q_row + qh * p.q_head + c * 8 : p.q, ok);
        cp_async_16(sdOw + off, ok ? p.dout + qr * p.do_row + qh * p.do_head + c * 8 : p.dout, ok);
      }
      cp_async_commit();
      cp_async_wait<0>();
      fence_proxy_async();
      named_barrier_sync(1 + cw, 128);
    }

    // This thread's two rows: key range and statistics (inactive rows: lse2 = +inf, P = 0).
    const MaskParams& mk = p.mask;
    int row_lo[2], row_hi[2];
    float lse2[2], delta[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = r_base + warp * 16 + g + hr * 8;
      const bool active = r <= qb.m_last;
      row_lo[hr] = qb.key_lo(mk, r);
      row_hi[hr] = active ? qb.key_hi(mk, r) : row_lo[hr];
      const int64_t st = static_cast<int64_t>(qb.qhead(min(r, qb.m_last))) * p.Tq_pad + qb.qrow(min(r, qb.m_last));
      lse2[hr] = active ? p.lse2[st] : kInf;
      delta[hr] = active ? p.delta[st] : 0.f;
    }

    float acc[kD / 2];
#pragma unroll
    for (int i = 0; i < kD / 2; ++i) acc[i] = 0.f;
    float s[kBlockN / 2], dp[kBlockN / 2];
    uint32_t pa[kBlockN / 16][4];  // dS in bf16: the A operand of dQ += dS K

    auto release = [&](uint32_t bar) {
      __syncwarp();
      if (lane == 0) mbar_arrive(bar);
    };

    for (int it = 0; it < ntiles; ++it) {
      const int st = it % kStages;
      const uint32_t ph = (it / kStages) & 1;
      const int n0 = (nb_max - 1 - it) * kBlockN;

      // S = Q K^T and dP = dO V^T, two commit groups: P is computed while dP's products run.
      mbar_wait(ring.full_k(st), ph);
      mbar_wait(ring.full_v(st), ph);
      hopper_detail::fence_regs(s);
      hopper_detail::fence_regs(dp);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        const uint32_t a_off = (ks >> 2) * (64 * 128) + (ks & 3) * 32;
        const uint32_t b_off = st * kTile + (ks >> 2) * (kBlockN * 128) + (ks & 3) * 32;
        hopper_detail::mma_qk<kBlockN>(s, smem_desc_sw128(sQw + a_off, 16, 1024),
                                       smem_desc_sw128(sK + b_off, 16, 1024), ks == 0);
      }
      wgmma_commit();
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        const uint32_t a_off = (ks >> 2) * (64 * 128) + (ks & 3) * 32;
        const uint32_t b_off = st * kTile + (ks >> 2) * (kBlockN * 128) + (ks & 3) * 32;
        hopper_detail::mma_qk<kBlockN>(dp, smem_desc_sw128(sdOw + a_off, 16, 1024),
                                       smem_desc_sw128(sV + b_off, 16, 1024), ks == 0);
      }
      wgmma_commit();
      wgmma_wait<1>();
      hopper_detail::fence_regs(s);
#pragma unroll
      for (int i = 0; i < kBlockN / 2; ++i) s[i] = fast_exp2(fmaf(s[i], p.scale_log2, -lse2[(i >> 1) & 1]));
      wgmma_wait<0>();
      hopper_detail::fence_regs(dp);
      release(ring.empty_v(st));  // V is done with; K is read again by dQ += dS K

      // dS = P (dP - Delta) where the key is visible, else 0 (a NaN in a masked key's V or dO
      // stays out of the rows that do not see it).
      const bool full_tile = n0 >= qb.full_lo && n0 + kBlockN <= qb.full_hi;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hr = e >> 1, i = 4 * nt + e;
          float ds = s[i] * (dp[i] - delta[hr]);
          if (!full_tile) {
            const int col = n0 + nt * 8 + 2 * t4 + (e & 1);
            if (col < row_lo[hr] || col >= row_hi[hr]) ds = 0.f;
          }
          s[i] = ds;
        }
      hopper_detail::pack_a<kBlockN>(s, pa);

      // dQ += dS K (K as the forward reads V: transposed, MN-major).
      hopper_detail::fence_regs(acc);
      hopper_detail::fence_regs(pa);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk)
        hopper_detail::mma_pv<kD>(acc, pa[kk], smem_desc_sw128(sK + st * kTile + kk * 16 * 128, kBlockN * 128, 1024));
      wgmma_commit();
      wgmma_wait<0>();
      hopper_detail::fence_regs(acc);
      hopper_detail::fence_regs(pa);
      release(ring.empty_k(st));
    }

    // dq = scale * dQ (acc[4 dt + 2 hr + e]: row hr, column dt * 8 + 2 t4 + e); inactive rows 0.
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = r_base + warp * 16 + g + hr * 8;
      if (r >= qb.m_end) continue;
      const bool active = r <= qb.m_last;
      bf16* dst = dq_ptr(r) + 2 * t4;
#pragma unroll
      for (int dt = 0; dt < kD / 8; ++dt)
        *reinterpret_cast<uint32_t*>(dst + dt * 8) =
            active ? pack_bf16(acc[4 * dt + 2 * hr] * p.scale, acc[4 * dt + 2 * hr + 1] * p.scale) : 0u;
    }
  }
#endif
}

}  // namespace rt::cuda::attn
