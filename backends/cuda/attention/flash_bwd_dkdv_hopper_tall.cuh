// dK and dV at head dim 64 on Hopper with FlashAttention-3's tile: 128 keys x 128 queries per step
// (flash_bwd_dkdv_hopper.cuh has 128 x 64), the default there (RT_ATTN_HOPPER_BWD_TALL=0 opts out). At
// D = 64 the 64-query tile issues 16 small products per warpgroup and step (m64n64k16, both S^T
// operands read from shared memory) between three waits, and ncu finds it latency-bound (issue
// slots 37% busy). Here each warpgroup's products are m64n128k16 for S and dP, and twice as many
// k-steps for dV and dK per wait: 18.05 against 25.20 ms at 0.5B 32K causal on an H100.
//
// The products change sides, as in FlashAttention-3 (SdP_swapAB = false, dKV_swapAB = true):
//   S    = Q K^T          warpgroup w: its 64 query rows x all 128 keys (Q, K from shared memory)
//   dP   = dO V^T         the same rows
//   P    = exp2(S scale log2e - lse2[row]), 0 outside the row's key range and for inactive rows
//   dS   = P (dP - Delta[row])
//   P and dS go to shared memory (bf16, [query][key], two 64-key sub-tiles), both warpgroups'
//   rows (a barrier each), and:
//   dV^T += dO^T P        warpgroup w: D x its 64 keys, over all 128 queries (both operands
//                         transposed from shared memory), issued once P is there: it runs while
//                         dS is computed
//   dK^T += Q^T dS        likewise, once dS is there
// The row statistics and key ranges are two per thread (its two rows; the statistics from the
// stage's bulk copy), so visibility is one range test per element, for every mask. dK^T and dV^T
// stay in registers over the loop and are written once (bf16, or the split's fp32 partial), so the
// result is deterministic like the other dK/dV kernels.
#pragma once

#include "cuda/attention/flash_bwd_dkdv_hopper.cuh"

namespace rt::cuda::attn {

struct HopperBwdDkDvTallConfig {
  static constexpr int kD = 64;
  static constexpr int kConsumers = 2;
  static constexpr int kBlockN = 128;  // keys per CTA (64 per warpgroup in dK/dV)
  static constexpr int kBlockM = 128;  // queries per step (64 per warpgroup in S/dP)
  static constexpr int kStages = 2;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kKVBytes = kBlockN * kD * 2;     // K, and V
  static constexpr int kQBytes = kBlockM * kD * 2;      // one stage of Q, and of dO
  static constexpr int kStatBytes = 2 * kBlockM * 4;    // one stage of lse2 and Delta
  static constexpr int kPBytes = kBlockM * kBlockN * 2;  // P, and dS: [2 sub-tiles][128 queries][64 keys]
  static constexpr int kExtraBytes = 2 * kPBytes;
  static constexpr int kBarBytes = (1 + 2 * kStages) * 8;
  static constexpr int kSmemBytes =
      1024 + 2 * kKVBytes + kStages * (2 * kQBytes + kStatBytes) + kExtraBytes + kBarBytes;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static constexpr bool kFusedDq = false;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

// The same tile with dQ fused (the default at head dim 64; RT_ATTN_HOPPER_BWD_FUSED_DQ=0: the dQ
// pass; H100: backward 1.24x at 32K causal): each step also computes dQ = dS K for its 128
// queries (m64n64k16, dS and K from shared memory) and adds it into an fp32 accumulator
// [Hq][Tq_pad][64] with one bulk reduction from shared memory (issued by a warp of the producer
// warpgroup). Deterministic: the adds into a query tile happen in key-block order, each CTA
// waiting for its turn on the tile's counter (dq_lock), so every element sums its partials in the
// same order on every run. The query tiles run in descending order, outer to the heads
// (dkdv_detail::Work), so the CTA of key block n reaches a tile one item after the CTA of block
// n - 1 (and the dependency is always on a CTA of a lower block index: one launched earlier).
// This replaces the dQ pass, which recomputes S and dP: 5 products per (query tile, key block)
// instead of 7. Not for routed rows with a windowed mask: their key blocks need not be contiguous
// per tile.
struct HopperBwdDkDvTallDqConfig : HopperBwdDkDvTallConfig {
  static constexpr bool kFusedDq = true;
  static constexpr int kDqBytes = kBlockM * kD * 4;             // the step's dQ, fp32 [128 queries][64]
  static constexpr int kExtraBytes = 2 * kPBytes + kDqBytes + 16;  // + the dQ buffer's two mbarriers
  static constexpr int kSmemBytes =
      1024 + 2 * kKVBytes + kStages * (2 * kQBytes + kStatBytes) + kExtraBytes + kBarBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

// Where the fused dQ keeps element (query 64 cw + 16 warp + lane / 4 + 8 hr, column 8 j + 2 (lane % 4)
// + e) of a 128 x 64 tile, in floats from the tile's start (+ e): the wgmma accumulator's order,
// [warpgroup][n8 block j][hr][warp][lane][2]. The bulk reduction adds tiles element by element, so
// any fixed order serves; this one lets a warp store its fragment without bank conflicts.
__host__ __device__ __forceinline__ int dq_tile_offset(int cw, int j, int hr, int warp, int lane) {
  return ((((cw * 8 + j) * 2 + hr) * 4 + warp) * 32 + lane) * 2;
}

// Grid: as flash_bwd_dkdv_hopper_kernel's (rt::attn::dkdv_cta).
template <class Cfg, class Mask, class Rows>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    flash_bwd_dkdv_hopper_tall_kernel(const __grid_constant__ BwdParams p, const __grid_constant__ CUtensorMap tmap_k,
                                      const __grid_constant__ CUtensorMap tmap_v,
                                      const __grid_constant__ CUtensorMap tmap_q,
                                      const __grid_constant__ CUtensorMap tmap_do) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace sm90;
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  constexpr int kSubP = Cfg::kPBytes / 2;

  extern __shared__ uint8_t smem_raw[];
  const dkdv_detail::Smem<Cfg> sm = dkdv_detail::smem_plan<Cfg>(smem_raw);
  const uint32_t sK = sm.k, sV = sm.v;
  const uint32_t sP = sm.extra;  // sub-tile c (keys 64c..64c+63) at sP + c * kSubP
  const uint32_t sdS = sP + Cfg::kPBytes;
  const dkdv_detail::Work<Cfg, Mask, Rows> w = dkdv_detail::make_work<Cfg, Mask, Rows>(p);
  const int n0 = w.n0, hk = w.hk, Tq = w.Tq, items = w.items;
  const MaskParams& mk = p.mask;
  const Rows& rows = w.rows;
  static_assert(!Cfg::kFusedDq || rt::attn::contiguous_key_blocks<Mask, Rows>,
                "the fused dQ adds a tile's partials in key-block order: the blocks must be one run");

  // Fused dQ: the step's dQ tile, and its mbarriers (full: the consumers stored it; empty: the
  // bulk reduction has read it).
  const uint32_t sdQ = sdS + Cfg::kPBytes;
  const uint32_t dq_full = sdQ + (Cfg::kFusedDq ? HopperBwdDkDvTallDqConfig::kDqBytes : 0), dq_empty = dq_full + 8;

  dkdv_detail::init_barriers(sm);
  if constexpr (Cfg::kFusedDq) {
    if (threadIdx.x == 0) {
      mbar_init(dq_full, 128 * Cfg::kConsumers);
      mbar_init(dq_empty, 1);
      mbar_init_fence();
    }
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0 && items > 0) dkdv_detail::produce(p, w, sm, &tmap_k, &tmap_v, &tmap_q, &tmap_do);
    if constexpr (Cfg::kFusedDq) {
      // The dQ writer (warp 1): per step, wait for the tile, then for this key block's turn on the
      // query tile's counter, add the tile into the accumulator, and pass the turn on.
      if (threadIdx.x == 32) {
        const int m_tiles = p.Tq_pad / kBlockM;
        for (int it = 0; it < items; ++it) {
          mbar_wait(dq_full, it & 1);
          const int m0 = w.m0(it), hq = w.head(it);
          // Every key block from the first that sees this tile to this one sees it
          // (contiguous_key_blocks, tested on the CPU in tests/backends/test_key_block_order.cpp).
          const int n_lo = first_key_block<Mask>(mk, rows, m0, kBlockN);
          int* lock = p.dq_lock + static_cast<int64_t>(hq) * m_tiles + m0 / kBlockM;
          const int turn = w.key_block - n_lo;
          const bool ordered = !p.dq_unordered;
          if (ordered) turn_wait(lock, turn);
          fence_proxy_async_global();
          // The first key block stores the tile, the others add to it: the accumulator needs no
          // zeroing (a tile no key block reached keeps its counter at 0, and the convert writes 0).
          float* acc = p.dq_accum + (static_cast<int64_t>(hq) * p.Tq_pad + m0) * kD;
          if (turn == 0 && ordered) bulk_store(acc, sdQ, HopperBwdDkDvTallDqConfig::kDqBytes);
          else bulk_reduce_add_f32(acc, sdQ, HopperBwdDkDvTallDqConfig::kDqBytes);
          bulk_commit();
          bulk_wait_read_all();
          mbar_arrive(dq_empty);
          if (ordered) {
            bulk_wait_all();
            fence_proxy_async_global();
          }
          turn_pass(lock);  // (unordered: only so that the convert sees the tile was reached)
        }
      }
    }
  } else {
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int cw = wg - 1;
    const int ctid = threadIdx.x - 128 * wg;
    const int warp = ctid >> 5, lane = ctid & 31, g = lane >> 2, t4 = lane & 3;

    float dkt[kD / 2], dvt[kD / 2];  // dK^T, dV^T: rows d, columns this warpgroup's 64 keys
#pragma unroll
    for (int i = 0; i < kD / 2; ++i) dkt[i] = dvt[i] = 0.f;
    float s[kBlockN / 2], dp[kBlockN / 2];

    auto release = [&](uint32_t bar) { mbar_arrive(bar); };  // every thread: see flash_bwd_dkdv_hopper.cuh
    // P or dS pair (rows hr, keys 8 j + 2 t4 + {0, 1}) into [sub-tile][query][64 keys], 128-byte
    // swizzled as TMA writes tiles: a warp's 32 stores hit 32 distinct banks.
    auto store_pair = [&](uint32_t base, int row, int j, float lo, float hi) {
      const uint32_t off = (j >> 3) * kSubP + row * 128 + ((((j & 7) ^ (row & 7))) << 4) + 4 * t4;
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(base + off), "r"(pack_bf16(lo, hi)) : "memory");
    };
    // This warpgroup's rows of s (P or dS) into base, then the fence for the tensor cores and a
    // barrier: both warpgroups' rows are there.
    auto store_rows = [&](uint32_t base) {
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
          store_pair(base, cw * 64 + warp * 16 + g + 8 * hr, j, s[4 * j + 2 * hr], s[4 * j + 2 * hr + 1]);
      fence_proxy_async();
      named_barrier_sync(2, 256);
    };
    // acc^T += A^T B over the 128 queries (k16 steps of 16 rows): A (dO or Q) [queries][D], B (P or
    // dS) this warpgroup's 64-key sub-tile, both read transposed; one commit group.
    auto issue_transposed = [&](float (&acc)[kD / 2], uint32_t a, uint32_t b) {
      hopper_detail::fence_regs(acc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk)
        wgmma_m64n64k16_ss_tt(acc, smem_desc_sw128(a + kk * 16 * 128, kBlockM * 128, 1024),
                              smem_desc_sw128(b + cw * kSubP + kk * 16 * 128, kBlockM * 128, 1024));
      wgmma_commit();
    };

    if (items > 0) mbar_wait(sm.kv_full(), 0);
    for (int it = 0; it < items; ++it) {
      // (dO^T P and Q^T dS read every row: begin_step zeroes inactive routed rows.)
      const auto [st, m0, last_row, sQs, sdOs] = dkdv_detail::begin_step(sm, w, it, ctid + 128 * cw);

      // S = Q K^T, then dP = dO V^T (this warpgroup's 64 rows x 128 keys), two commit groups.
      hopper_detail::fence_regs(s);
      hopper_detail::fence_regs(dp);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks)
        hopper_detail::mma_qk<kBlockN>(s, smem_desc_sw128(sQs + cw * 64 * 128 + ks * 32, 16, 1024),
                                       smem_desc_sw128(sK + ks * 32, 16, 1024), ks == 0);
      wgmma_commit();
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks)
        hopper_detail::mma_qk<kBlockN>(dp, smem_desc_sw128(sdOs + cw * 64 * 128 + ks * 32, 16, 1024),
                                       smem_desc_sw128(sV + ks * 32, 16, 1024), ks == 0);
      wgmma_commit();

      // This thread's two rows: statistics and key range (an inactive row sees no key).
      const float* stat = reinterpret_cast<const float*>(smem_raw + (sm.stat_stage(st) - smem_addr(smem_raw)));
      float lse2[2], delta[2];
      int klo[2], khi[2];
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int r = cw * 64 + warp * 16 + g + 8 * hr;
        lse2[hr] = stat[r];
        delta[hr] = stat[kBlockM + r];
        const bool active = m0 + r <= last_row;
        const int64_t qpos = rows.pos(mk, min(m0 + r, last_row));
        klo[hr] = active ? Mask::key_lo(mk, qpos) : 0;
        khi[hr] = active ? Mask::key_hi(mk, qpos) : 0;
      }
      // Keys relative to n0: one range test per element, the same for every mask and tile.
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        klo[hr] -= n0;
        khi[hr] -= n0;
      }

      wgmma_wait<1>();
      hopper_detail::fence_regs(s);
      uint64_t vis = 0;  // a bit per element of s
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 4 * j + e, hr = e >> 1, key = 8 * j + 2 * t4 + (e & 1);
          const bool v = key >= klo[hr] && key < khi[hr];
          s[i] = v ? fast_exp2(fmaf(s[i], p.scale_log2, -lse2[hr])) : 0.f;
          vis |= static_cast<uint64_t>(v) << i;
        }
      // Both warpgroups' products of the previous step have read sP and sdS (each waited for its
      // own before this step): only then may they be overwritten.
      named_barrier_sync(2, 256);
      store_rows(sP);
      issue_transposed(dvt, sdOs, sP);  // dV^T += dO^T P, running while dS is computed
      wgmma_wait<1>();                  // dP (dV^T may still run)
      hopper_detail::fence_regs(dp);
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 4 * j + e;
          s[i] = (vis >> i) & 1u ? s[i] * (dp[i] - delta[e >> 1]) : 0.f;
        }
      store_rows(sdS);
      issue_transposed(dkt, sQs, sdS);  // dK^T += Q^T dS
      [[maybe_unused]] float dq[kD / 2];  // fused dQ: this warpgroup's 64 queries x D
      if constexpr (Cfg::kFusedDq) {
        // dQ = dS K: A = dS (this warpgroup's rows, keys in two 64-key sub-tiles), B = K read
        // transposed (stored [key][d]).
        hopper_detail::fence_regs(dq);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk)
          wgmma_m64n64k16_ss_nt(dq,
                                smem_desc_sw128(sdS + (kk / 4) * kSubP + cw * 64 * 128 + (kk % 4) * 32, 16, 1024),
                                smem_desc_sw128(sK + kk * 16 * 128, kBlockN * 128, 1024), kk == 0);
        wgmma_commit();
      }
      wgmma_wait<0>();
      hopper_detail::fence_regs(dvt);
      hopper_detail::fence_regs(dkt);
      if constexpr (Cfg::kFusedDq) {
        hopper_detail::fence_regs(dq);
        mbar_wait(dq_empty, (it & 1) ^ 1);  // the previous step's tile has been read
        // The tile in the accumulator's fragment order (dq_tile_offset): a warp's 32 pairs for one
        // (j, hr) are 256 contiguous bytes, so the stores meet no bank conflict.
#pragma unroll
        for (int j = 0; j < kD / 8; ++j)
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            const uint32_t a = sdQ + static_cast<uint32_t>(dq_tile_offset(cw, j, hr, warp, lane) * 4);
            asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(a), "f"(dq[4 * j + 2 * hr]),
                         "f"(dq[4 * j + 2 * hr + 1])
                         : "memory");
          }
        fence_proxy_async();
        mbar_arrive(dq_full);
      }
      release(sm.q_empty(st));
    }

    // Epilogue: dvt[4 j + 2 hr + e] is dV[key 64 cw + 8 j + 2 t4 + e][d = 16 warp + g + 8 hr].
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int kr = n0 + cw * 64 + 8 * j + 2 * t4 + e;
        if (kr >= p.Tk) continue;
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int dcol = warp * 16 + g + 8 * hr, i = 4 * j + 2 * hr + e;
          if (p.dkv_accum == nullptr) {
            p.dk[static_cast<int64_t>(kr) * p.dk_row + static_cast<int64_t>(hk) * p.dk_head + dcol] =
                __float2bfloat16_rn(dkt[i] * p.scale);
            p.dv[static_cast<int64_t>(kr) * p.dv_row + static_cast<int64_t>(hk) * p.dv_head + dcol] =
                __float2bfloat16_rn(dvt[i]);
          } else {
            const int64_t plane = static_cast<int64_t>(p.Tk) * p.Hkv * kD;
            float* dkr = p.dkv_accum + w.split * 2 * plane + (static_cast<int64_t>(kr) * p.Hkv + hk) * kD + dcol;
            dkr[0] = dkt[i] * p.scale;
            dkr[plane] = dvt[i];
          }
        }
      }
  }
#endif
}

// The fused dQ's accumulator [Hq][Tq_pad][64] into dq [Tq][Hq][64] (bf16, strided): scale * acc,
// 0 for inactive routed rows and for tiles no key block reached (their turn counter, dq_lock
// [Hq][Tq_pad / 128], is 0, and their accumulator was never written). A thread per 4 columns of a
// (row, head). Within a 128-row tile the accumulator is in fragment order (dq_tile_offset).
template <class Rows>
__global__ void flash_bwd_dq_accum_convert_kernel(const float* acc, const int* dq_lock, bf16* dq, int64_t dq_row,
                                                  int64_t dq_head, int Tq, int Hq, int Tq_pad, float scale,
                                                  const int32_t* q_index, const int32_t* q_count) {
  constexpr int kD = 64, kQuads = kD / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(Tq) * Hq * kQuads) return;
  const int c = static_cast<int>(i % kQuads) * 4;
  const int h = static_cast<int>((i / kQuads) % Hq);
  const int r = static_cast<int>(i / (static_cast<int64_t>(kQuads) * Hq));
  const int active = make_rows<Rows>(q_index, q_count).active(Tq);
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
  constexpr int kTile = HopperBwdDkDvTallDqConfig::kBlockM;
  if (r < active && dq_lock[static_cast<int64_t>(h) * (Tq_pad / kTile) + r / kTile] != 0) {
    // Row r % 128 of its tile is 64 cw + 16 warp + g + 8 hr; columns c..c+3 are pairs (t4, t4 + 1)
    // of n8 block j, lanes 4 g + t4 and the next: 16 contiguous bytes.
    const int rr = r % kTile, within = rr % 16, j = c / 8, t4 = (c % 8) / 2;
    const int lane = (within % 8) * 4 + t4;
    const int64_t tile = (static_cast<int64_t>(h) * Tq_pad + (r - rr)) * kD;
    v = *reinterpret_cast<const float4*>(acc + tile + dq_tile_offset(rr / 64, j, within / 8, (rr % 64) / 16, lane));
  }
  bf16* out = dq + static_cast<int64_t>(r) * dq_row + static_cast<int64_t>(h) * dq_head + c;
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x * scale, v.y * scale);
  const __nv_bfloat162 hi = __floats2bfloat162_rn(v.z * scale, v.w * scale);
  if ((reinterpret_cast<uintptr_t>(out) & 7) == 0) {  // one 8-byte store (dq's usual layout)
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(out) = packed;
  } else {
    out[0] = lo.x;
    out[1] = lo.y;
    out[2] = hi.x;
    out[3] = hi.y;
  }
}

}  // namespace rt::cuda::attn
