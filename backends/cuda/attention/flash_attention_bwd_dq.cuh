// dQ of flash attention without atomics (the deterministic half of the backward; flash_bwd_kernel
// computes dK and dV). Same kernel family: mask and rows traits (common/attention_rows.h), PTX
// helpers and swizzled tiles of flash_attention.cuh, statistics from flash_bwd_preprocess_kernel.
//
// One CTA per (query head, block of kBlockM query rows), each warp owning 16 rows, walks the KV
// tiles its rows see (causal: up to the diagonal; window: the band; routed rows: up to the last
// row's position), exactly as the forward does, with a 2-stage cp.async ring of (K, V) tiles:
//   S  = Q K^T                 (A: Q from smem, B: K rows)
//   P  = exp2(S scale log2e - lse2[row]), 0 where masked (boundary tiles only)
//   dP = dO V^T                (A: dO from smem, B: V rows)
//   dS = P (dP - Delta[row])
//   dQ += dS K                 (A: dS from the accumulator registers, B: K, ldmatrix.trans)
// dQ stays in fp32 registers and is written once, scaled, as bf16: every element is produced by one
// thread in a fixed order, so the result is the same bits on every run.
#pragma once

#include "cuda/attention/flash_attention_bwd.cuh"

namespace rt::cuda::attn {

template <int kD_, int kBlockM_, int kBlockN_>
struct BwdDqConfig {
  static constexpr int kD = kD_, kBlockM = kBlockM_, kBlockN = kBlockN_;
  static constexpr int kWarps = kBlockM / 16;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kD % 64 == 0 && kBlockN % 16 == 0 && kBlockM % 16 == 0, "tile shape");
  static constexpr int kTileQ = kBlockM * kD * 2, kTileK = kBlockN * kD * 2;
  // Q, dO, then 2 stages of (K, V).
  static constexpr int kSmemBytes = 2 * kTileQ + 2 * 2 * kTileK;
};

template <class Cfg, class Mask, class Rows>
__global__ void __launch_bounds__(Cfg::kThreads) flash_bwd_dq_kernel(const BwdParams p, bf16* dq, int64_t dq_row,
                                                                    int64_t dq_head) {
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kThreads = Cfg::kThreads;
  constexpr int kNT = kBlockN / 8, kDT = kD / 8;
  constexpr float kInf = __builtin_huge_valf();
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t sQ = smem_addr(smem), sdO = sQ + Cfg::kTileQ;
  auto sK = [&](int stage) { return sQ + 2 * Cfg::kTileQ + stage * 2 * Cfg::kTileK; };
  auto sV = [&](int stage) { return sK(stage) + Cfg::kTileK; };

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int h = blockIdx.x, hk = h / p.group;
  const int m_block = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);  // most keys first
  const int m0 = m_block * kBlockM;
  const Rows rows = make_rows<Rows>(p.q_index, p.q_count);
  const int Tq = rows.active(p.Tq);
  const int m_end = min(m0 + kBlockM, p.Tq), m_last = min(m0 + kBlockM, Tq) - 1;
  const MaskParams& mk = p.mask;

  const int64_t pos_first = rows.pos(mk, m0);
  const int64_t pos_last = m_last >= m0 ? rows.pos(mk, m_last) : pos_first;
  const int n_lo = Mask::key_lo(mk, pos_first), n_hi = m_last >= m0 ? Mask::key_hi(mk, pos_last) : n_lo;
  const int full_lo = Mask::key_lo(mk, pos_last), full_hi = Mask::key_hi(mk, pos_first);

  float acc[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;

  if (n_lo < n_hi) {
    const int nb_min = n_lo / kBlockN, nb_max = (n_hi + kBlockN - 1) / kBlockN;
    const int ntiles = nb_max - nb_min;
    const bf16* kbase = p.k + static_cast<int64_t>(hk) * p.k_head;
    const bf16* vbase = p.v + static_cast<int64_t>(hk) * p.v_head;
    load_tile<kD, kBlockM, kThreads>(sQ, p.q + static_cast<int64_t>(h) * p.q_head, p.q_row, m0, m_last + 1, tid);
    load_tile<kD, kBlockM, kThreads>(sdO, p.dout + static_cast<int64_t>(h) * p.do_head, p.do_row, m0, m_last + 1, tid);
    auto load_kv = [&](int tile, int stage) {
      const int n0 = (nb_min + tile) * kBlockN;
      load_tile<kD, kBlockN, kThreads>(sK(stage), kbase, p.k_row, n0, p.Tk, tid);
      load_tile<kD, kBlockN, kThreads>(sV(stage), vbase, p.v_row, n0, p.Tk, tid);
    };
    load_kv(0, 0);
    cp_async_commit();

    // This thread's rows (g and g + 8 of its warp's m16 tile): key range and statistics.
    int row_lo[2], row_hi[2];
    float lse2[2], delta[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = m0 + warp * 16 + g + hr * 8;
      const int64_t pos = rows.pos(mk, min(r, m_last));
      row_lo[hr] = Mask::key_lo(mk, pos);
      row_hi[hr] = r <= m_last ? Mask::key_hi(mk, pos) : row_lo[hr];  // inactive rows see nothing
      const int64_t st = static_cast<int64_t>(h) * p.Tq_pad + min(r, p.Tq_pad - 1);
      lse2[hr] = r <= m_last ? p.lse2[st] : kInf;
      delta[hr] = r <= m_last ? p.delta[st] : 0.f;
    }
    const int a_row = warp * 16 + (lane & 15), a_chunk = lane >> 4;
    const int kb_row = (lane & 7) + ((lane >> 4) << 3), kb_chunk = (lane >> 3) & 1;
    const int vb_row = (lane & 7) + (((lane >> 3) & 1) << 3), vb_chunk = lane >> 4;

    for (int tile = 0; tile < ntiles; ++tile) {
      const int stage = tile & 1;
      if (tile + 1 < ntiles) {
        load_kv(tile + 1, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const int n0 = (nb_min + tile) * kBlockN;

      // S = Q K^T and dP = dO V^T, side by side (same B-operand access pattern).
      float s[kNT][4], dpv[kNT][4];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = dpv[nt][e] = 0.f;
#pragma unroll kKsUnroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t aq[4], ado[4];
        ldmatrix_x4(aq, sQ + swz<kD>(a_row, 2 * ks + a_chunk));
        ldmatrix_x4(ado, sdO + swz<kD>(a_row, 2 * ks + a_chunk));
#pragma unroll
        for (int np = 0; np < kBlockN / 16; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, sK(stage) + swz<kD>(np * 16 + kb_row, 2 * ks + kb_chunk));
          mma_bf16(s[2 * np], aq, b[0], b[1]);
          mma_bf16(s[2 * np + 1], aq, b[2], b[3]);
          ldmatrix_x4(b, sV(stage) + swz<kD>(np * 16 + kb_row, 2 * ks + kb_chunk));
          mma_bf16(dpv[2 * np], ado, b[0], b[1]);
          mma_bf16(dpv[2 * np + 1], ado, b[2], b[3]);
        }
      }

      // P, then dS = P (dP - Delta), in place in s.
      const bool full_tile = n0 >= full_lo && n0 + kBlockN <= full_hi;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hr = e >> 1;
          float pv = fast_exp2(fmaf(s[nt][e], p.scale_log2, -lse2[hr]));
          if (!full_tile) {
            const int col = n0 + nt * 8 + 2 * t4 + (e & 1);
            if (col < row_lo[hr] || col >= row_hi[hr]) pv = 0.f;
          }
          s[nt][e] = pv * (dpv[nt][e] - delta[hr]);
        }

      // dQ += dS K (dS from the accumulators: C layout of two n8 tiles = A layout of k16).
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t a[4];
        accum_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < kD / 16; ++dp) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, sK(stage) + swz<kD>(kk * 16 + vb_row, 2 * dp + vb_chunk));
          mma_bf16(acc[2 * dp], a, b[0], b[1]);
          mma_bf16(acc[2 * dp + 1], a, b[2], b[3]);
        }
      }
      __syncthreads();  // this stage is refilled by the next iteration's prefetch
    }
    cp_async_wait<0>();
  }

  // dq = scale * dQ; rows that saw nothing (or are inactive) get zeros.
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = m0 + warp * 16 + g + hr * 8;
    if (r >= m_end) continue;
    bf16* dst = dq + static_cast<int64_t>(r) * dq_row + static_cast<int64_t>(h) * dq_head + 2 * t4;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
      *reinterpret_cast<uint32_t*>(dst + dt * 8) = pack_bf16(acc[dt][2 * hr] * p.scale, acc[dt][2 * hr + 1] * p.scale);
  }
}

}  // namespace rt::cuda::attn
