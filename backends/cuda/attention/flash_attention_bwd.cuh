// Flash attention backward (FlashAttention-2 structure), same kernel family as the forward in
// flash_attention.cuh: the same mask traits (CausalMask, SlidingWindowMask, FullMask, WindowOnlyMask),
// PTX helpers (mma.sync m16n8k16 bf16, ldmatrix, cp.async) and swizzled shared tiles.
//
//   flash_bwd_preprocess_kernel<D>   Delta_i = rowsum(dO_i * O_i) (fp32) and lse2 = lse * log2(e), both
//                                    [Hq][Tq_pad] (padding rows: Delta 0, lse2 +inf)
//   flash_bwd_kernel<Cfg, Mask, Rows, kFusedDq>
//                                    one CTA per (KV block of kBlockN keys, KV head, head split): K, V
//                                    tiles stay in shared memory; it loops over the query heads of its
//                                    share of the GQA group and, per head, over the query blocks that see
//                                    any of its keys (causal: blocks from the diagonal on; window: the
//                                    band), double-buffering Q / dO / lse2 / Delta with cp.async
//   flash_bwd_dq_kernel<Cfg, Mask, Rows> (flash_attention_bwd_dq.cuh) dQ without atomics: one CTA per
//                                    (query head, query block) walks the KV tiles its rows see, as
//                                    the forward does, recomputing P and dP (FlashAttention-2's
//                                    deterministic split of the backward)
//   flash_bwd_convert_kernel         fp32 accumulators -> bf16 (dq; dk / dv when the group is split:
//                                    the splits' partials are summed in a fixed order)
//
// Determinism: by default (and always for routed rows) nothing is accumulated with floating-point
// atomics, so two runs give the same bits and training resumes bit-identically. kFusedDq = true
// keeps the older fused dQ (atomics into an fp32 accumulator, ~1.4x fewer MMAs in total), behind
// RT_ATTENTION_DETERMINISTIC=0.
//
// Per (query block of kBlockM rows, this KV block), warp w owns the 16 keys w*16.. of the block and
// computes transposed products so that its rows are keys:
//   S^T  = K Q^T             (A: K from smem, B: Q rows)            -> registers
//   P^T  = exp2(S^T scale log2e - lse2[query]), 0 where masked (lse2 = +inf rows: 0)
//   dV  += P^T dO            (A: P^T from registers, B: dO, ldmatrix.trans)
//   dP^T = V dO^T            (A: V from smem, B: dO rows)
//   dS^T = P^T (dP^T - Delta[query])
//   dK  += dS^T Q            (A: dS^T from registers, B: Q, ldmatrix.trans)
//   kFusedDq only: dS^T -> shared (bf16), then dQ (block) = dS K, the warps splitting (16 query rows
//   x D part), added with fp32 atomics (float2, sm_90) into dq_accum [Tq][Hq][D].
// dK, dV stay in fp32 registers across the whole loop and are written once (bf16; or, when the group
// is split over CTAs to fill the GPU at short T, as fp32 partials into the split's own slice of a
// workspace, summed in split order by the convert).
// Rows (common/attention_rows.h): routed rows are a compact list with ascending positions; the
// binary searches and masks use the positions, rows past the active count are never loaded.
// Tiles: a tile inside [key_lo(last row), key_hi(first row)) is visible to every row (no per-element
// mask); rows past Tq have lse2 = +inf (P = 0) and zero Q / dO; keys past Tk are masked by key_hi.
#pragma once

#include "cuda/attention/flash_attention.cuh"

namespace rt::cuda::attn {

struct BwdParams {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const bf16* dout;
  bf16* dk;  // written directly when dkv_accum == nullptr
  bf16* dv;
  float* dq_accum;   // kFusedDq: [Tq][Hq][D] fp32, zeroed (the Hopper tall tile's fused dQ: [Hq][Tq_pad][D])
  int* dq_lock;      // the Hopper tall tile's fused dQ: [Hq][Tq_pad / 128] turn counters, zeroed
  int dq_unordered;  // that fused dQ adds without waiting for its turn (RT_ATTN_HOPPER_BWD_DQ_UNORDERED=1:
                     // a measurement of what the order costs, not deterministic; dq_accum zeroed)
  float* dkv_accum;  // nullptr, or [splits][2][Tk][Hkv][D] fp32 (dk, dv) partials: the group is split over CTAs
  const float* lse2;   // [Hq][Tq_pad], log2 units, +inf for rows that see nothing and padding
  const float* delta;  // [Hq][Tq_pad]
  int64_t q_row, q_head, k_row, k_head, v_row, v_head, do_row, do_head, dk_row, dk_head, dv_row, dv_head;
  int Tq, Tk, Hq, Hkv, group, Tq_pad;
  int heads_per_split;  // query heads of the group per CTA (blockIdx.z picks the share)
  float scale;          // softmax scale (dK is scaled here; dq in the convert)
  float scale_log2;     // scale * log2(e)
  MaskParams mask;
  const int32_t* q_index;  // RoutedRows: positions (ascending) and active row count
  const int32_t* q_count;
};

// kBlockM query rows per step, kBlockN keys per CTA (16 per warp).
template <int kD_, int kBlockM_, int kBlockN_>
struct BwdConfig {
  static constexpr int kD = kD_, kBlockM = kBlockM_, kBlockN = kBlockN_;
  static constexpr int kWarps = kBlockN / 16;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kD % 64 == 0, "head dim must be a multiple of 64 (swizzle over 8 chunks)");
  static_assert(kBlockM % 64 == 0, "BlockM must be a multiple of 64 (dS tile swizzle)");
  static_assert(kBlockN % 16 == 0, "BlockN must be a multiple of 16");
  // dQ step: warps split (m16 tile of query rows) x (part of the head dim).
  static constexpr int kQTiles = kBlockM / 16;
  static_assert(kWarps % kQTiles == 0 || kQTiles % kWarps == 0, "dQ warp split");
  static constexpr int kDParts = kWarps >= kQTiles ? kWarps / kQTiles : 1;
  static constexpr int kQTilesPerWarp = kWarps >= kQTiles ? 1 : kQTiles / kWarps;
  static constexpr int kDQ = kD / kDParts;  // head-dim columns of dQ per warp
  static_assert(kDQ % 16 == 0, "dQ part must be a multiple of 16");
  // Shared memory: K, V, 2 stages of (Q, dO), dS^T, 2 stages of (lse2, Delta).
  static constexpr int kTileQ = kBlockM * kD * 2;
  static constexpr int kTileK = kBlockN * kD * 2;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kTileK;
  static constexpr int kOffQ = 2 * kTileK;                 // + stage * kTileQ
  static constexpr int kOffdO = kOffQ + 2 * kTileQ;        // + stage * kTileQ
  static constexpr int kOffdS = kOffdO + 2 * kTileQ;       // [kBlockN][kBlockM] bf16
  static constexpr int kOffStats = kOffdS + kBlockN * kBlockM * 2;  // stage s: lse2 [kBlockM], Delta [kBlockM]
  static constexpr int kSmemBytes = kOffStats + 2 * 2 * kBlockM * 4;
};

__device__ __forceinline__ void atomic_add2(float* dst, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(dst), make_float2(a, b));
#else
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
#endif
}

template <class Cfg, class Mask, class Rows, bool kFusedDq>
__global__ void __launch_bounds__(Cfg::kThreads) flash_bwd_kernel(const BwdParams p) {
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kThreads = Cfg::kThreads;
  constexpr int kMT = kBlockM / 8;  // n8 tiles of S^T (query columns) per warp
  constexpr int kDT = kD / 8;       // n8 tiles of dK / dV
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t s0 = smem_addr(smem);
  const uint32_t sK = s0 + Cfg::kOffK, sV = s0 + Cfg::kOffV, sdS = s0 + Cfg::kOffdS;
  float* stats = reinterpret_cast<float*>(smem + Cfg::kOffStats);
  auto sQ_stage = [](uint32_t base, int stage) { return base + Cfg::kOffQ + stage * Cfg::kTileQ; };
  auto sdO_stage = [](uint32_t base, int stage) { return base + Cfg::kOffdO + stage * Cfg::kTileQ; };

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int n_block = blockIdx.x, hk = blockIdx.y;
  const int n0 = n_block * kBlockN;
  const int n1 = min(n0 + kBlockN, p.Tk);
  const int h_first = hk * p.group + blockIdx.z * p.heads_per_split;
  const int h_end = min(h_first + p.heads_per_split, (hk + 1) * p.group);
  const MaskParams& mk = p.mask;
  const Rows rows = make_rows<Rows>(p.q_index, p.q_count);
  const int Tq = rows.active(p.Tq);  // rows at or past it are never loaded

  int q_begin, q_end;
  query_range<Mask>(mk, rows, Tq, n0, n1, q_begin, q_end);
  const int mb_first = q_begin / kBlockM;
  const int mb_end = q_begin < q_end ? (q_end + kBlockM - 1) / kBlockM : mb_first;
  const int m_steps = mb_end - mb_first;
  const int items = m_steps * (h_end - h_first);

  const int key_r0 = warp * 16;  // this warp's keys within the block

  float dk[kDT][4], dv[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.f;

  if (items > 0) {
    const bf16* kbase = p.k + static_cast<int64_t>(hk) * p.k_head;
    const bf16* vbase = p.v + static_cast<int64_t>(hk) * p.v_head;
    load_tile<kD, kBlockN, kThreads>(sK, kbase, p.k_row, n0, p.Tk, tid);
    load_tile<kD, kBlockN, kThreads>(sV, vbase, p.v_row, n0, p.Tk, tid);

    auto load_item = [&](int it, int stage) {
      const int h = h_first + it / m_steps;
      const int m0 = (mb_first + it % m_steps) * kBlockM;
      load_tile<kD, kBlockM, kThreads>(sQ_stage(s0, stage), p.q + static_cast<int64_t>(h) * p.q_head, p.q_row, m0,
                                       Tq, tid);
      load_tile<kD, kBlockM, kThreads>(sdO_stage(s0, stage), p.dout + static_cast<int64_t>(h) * p.do_head,
                                       p.do_row, m0, Tq, tid);
      // lse2 and Delta: kBlockM floats each, 16-byte chunks (rows padded to Tq_pad, always in range).
      constexpr int kChunks = kBlockM / 4;
      for (int c = tid; c < 2 * kChunks; c += kThreads) {
        const float* src = (c < kChunks ? p.lse2 : p.delta) + static_cast<int64_t>(h) * p.Tq_pad + m0 + (c % kChunks) * 4;
        const uint32_t dst = s0 + Cfg::kOffStats + (stage * 2 * kBlockM + (c / kChunks) * kBlockM + (c % kChunks) * 4) * 4;
        cp_async_16(dst, src, true);
      }
    };
    load_item(0, 0);
    cp_async_commit();

    // ldmatrix lane coordinates (see flash_attention.cuh).
    const int a_row = key_r0 + (lane & 15), a_chunk = lane >> 4;          // A, row-major [m][k]
    const int nb_row = (lane & 7) + ((lane >> 4) << 3), nb_chunk = (lane >> 3) & 1;  // B from [n][k]; A^T from [k][m]
    const int tb_row = (lane & 7) + (((lane >> 3) & 1) << 3), tb_chunk = lane >> 4;  // B from [k][n] (trans)

    for (int it = 0; it < items; ++it) {
      const int stage = it & 1;
      if (it + 1 < items) {
        load_item(it + 1, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();  // item `it` (and K, V) landed

      const int h = h_first + it / m_steps;
      const int m0 = (mb_first + it % m_steps) * kBlockM;
      const uint32_t sQ = sQ_stage(s0, stage), sdO = sdO_stage(s0, stage);
      const float* s_lse = stats + stage * 2 * kBlockM;
      const float* s_delta = s_lse + kBlockM;

      // S^T = K Q^T (16 keys x kBlockM queries per warp)
      float s[kMT][4];
#pragma unroll
      for (int nt = 0; nt < kMT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll kKsUnroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t a[4];
        ldmatrix_x4(a, sK + swz<kD>(a_row, 2 * ks + a_chunk));
#pragma unroll
        for (int np = 0; np < kBlockM / 16; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, sQ + swz<kD>(np * 16 + nb_row, 2 * ks + nb_chunk));
          mma_bf16(s[2 * np], a, b[0], b[1]);
          mma_bf16(s[2 * np + 1], a, b[2], b[3]);
        }
      }

      // P^T = exp2(S^T * scale_log2 - lse2), masked elements 0.
      const int last_row = min(m0 + kBlockM, Tq) - 1;
      const bool full_tile = Mask::key_lo(mk, rows.pos(mk, last_row)) <= n0 &&
                             Mask::key_hi(mk, rows.pos(mk, m0)) >= n0 + kBlockN;
#pragma unroll
      for (int nt = 0; nt < kMT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = nt * 8 + 2 * t4 + (e & 1);
          float pv = fast_exp2(fmaf(s[nt][e], p.scale_log2, -s_lse[col]));
          if (!full_tile) {
            const int key = n0 + key_r0 + g + 8 * (e >> 1);
            const int64_t qpos = rows.pos(mk, min(m0 + col, last_row));  // later rows: lse2 = +inf, P = 0
            if (key < Mask::key_lo(mk, qpos) || key >= Mask::key_hi(mk, qpos)) pv = 0.f;
          }
          s[nt][e] = pv;
        }

      // dV += P^T dO
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        uint32_t a[4];
        accum_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < kD / 16; ++dp) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, sdO + swz<kD>(kk * 16 + tb_row, 2 * dp + tb_chunk));
          mma_bf16(dv[2 * dp], a, b[0], b[1]);
          mma_bf16(dv[2 * dp + 1], a, b[2], b[3]);
        }
      }

      // dP^T = V dO^T
      float dpt[kMT][4];
#pragma unroll
      for (int nt = 0; nt < kMT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dpt[nt][e] = 0.f;
#pragma unroll kKsUnroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t a[4];
        ldmatrix_x4(a, sV + swz<kD>(a_row, 2 * ks + a_chunk));
#pragma unroll
        for (int np = 0; np < kBlockM / 16; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, sdO + swz<kD>(np * 16 + nb_row, 2 * ks + nb_chunk));
          mma_bf16(dpt[2 * np], a, b[0], b[1]);
          mma_bf16(dpt[2 * np + 1], a, b[2], b[3]);
        }
      }

      // dS^T = P^T (dP^T - Delta); store it (bf16) for the dQ step, [key][query] swizzled.
#pragma unroll
      for (int nt = 0; nt < kMT; ++nt) {
        const int col = nt * 8 + 2 * t4;
        const float d0 = s_delta[col], d1 = s_delta[col + 1];
        s[nt][0] *= dpt[nt][0] - d0;
        s[nt][1] *= dpt[nt][1] - d1;
        s[nt][2] *= dpt[nt][2] - d0;
        s[nt][3] *= dpt[nt][3] - d1;
      }
      if constexpr (kFusedDq) {
#pragma unroll
        for (int nt = 0; nt < kMT; ++nt)
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            const int key = key_r0 + g + 8 * hr;
            const uint32_t addr = sdS + swz<kBlockM>(key, nt) + 4 * t4;
            const uint32_t val = pack_bf16(s[nt][2 * hr], s[nt][2 * hr + 1]);
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(val) : "memory");
          }
      }

      // dK += dS^T Q
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        uint32_t a[4];
        accum_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < kD / 16; ++dp) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, sQ + swz<kD>(kk * 16 + tb_row, 2 * dp + tb_chunk));
          mma_bf16(dk[2 * dp], a, b[0], b[1]);
          mma_bf16(dk[2 * dp + 1], a, b[2], b[3]);
        }
      }
      __syncthreads();  // dS^T complete; every warp is done with Q / dO / stats of this stage

      // dQ (block) = dS K: warp -> (query tiles, head-dim part); fp32 atomics into dq_accum.
      if constexpr (kFusedDq) {
        constexpr int kQDT = Cfg::kDQ / 8;
        constexpr int kQGroups = Cfg::kQTiles / Cfg::kQTilesPerWarp;  // warps along the query tiles
        const int dpart = warp / kQGroups;
        const int qt0 = (warp % kQGroups) * Cfg::kQTilesPerWarp;
#pragma unroll
        for (int qi = 0; qi < Cfg::kQTilesPerWarp; ++qi) {
          const int qt = qt0 + qi;
          float acc[kQDT][4];
#pragma unroll
          for (int dt = 0; dt < kQDT; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;
#pragma unroll
          for (int ks = 0; ks < kBlockN / 16; ++ks) {
            uint32_t a[4];
            ldmatrix_x4_trans(a, sdS + swz<kBlockM>(ks * 16 + nb_row, 2 * qt + nb_chunk));
#pragma unroll
            for (int dp = 0; dp < Cfg::kDQ / 16; ++dp) {
              uint32_t b[4];
              ldmatrix_x4_trans(b, sK + swz<kD>(ks * 16 + tb_row, 2 * (dpart * (Cfg::kDQ / 16) + dp) + tb_chunk));
              mma_bf16(acc[2 * dp], a, b[0], b[1]);
              mma_bf16(acc[2 * dp + 1], a, b[2], b[3]);
            }
          }
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            const int row = m0 + qt * 16 + g + 8 * hr;
            if (row >= p.Tq) continue;
            float* dst = p.dq_accum + (static_cast<int64_t>(row) * p.Hq + h) * kD + dpart * Cfg::kDQ + 2 * t4;
#pragma unroll
            for (int dt = 0; dt < kQDT; ++dt) atomic_add2(dst + dt * 8, acc[dt][2 * hr], acc[dt][2 * hr + 1]);
          }
        }
      }
      // The next iteration's __syncthreads orders this step's dS reads before the next dS writes.
    }
  }

  // Epilogue: dK (scaled), dV.
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int key = n0 + key_r0 + g + 8 * hr;
    if (key >= p.Tk) continue;
    if (p.dkv_accum == nullptr) {
      bf16* dkr = p.dk + static_cast<int64_t>(key) * p.dk_row + static_cast<int64_t>(hk) * p.dk_head + 2 * t4;
      bf16* dvr = p.dv + static_cast<int64_t>(key) * p.dv_row + static_cast<int64_t>(hk) * p.dv_head + 2 * t4;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        *reinterpret_cast<uint32_t*>(dkr + dt * 8) = pack_bf16(dk[dt][2 * hr] * p.scale, dk[dt][2 * hr + 1] * p.scale);
        *reinterpret_cast<uint32_t*>(dvr + dt * 8) = pack_bf16(dv[dt][2 * hr], dv[dt][2 * hr + 1]);
      }
    } else {  // this split's own partial (zeros when it saw no query), summed in split order later
      const int64_t plane = static_cast<int64_t>(p.Tk) * p.Hkv * kD;
      float* dkr = p.dkv_accum + blockIdx.z * 2 * plane + (static_cast<int64_t>(key) * p.Hkv + hk) * kD + 2 * t4;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        *reinterpret_cast<float2*>(dkr + dt * 8) = make_float2(dk[dt][2 * hr] * p.scale, dk[dt][2 * hr + 1] * p.scale);
        *reinterpret_cast<float2*>(dkr + plane + dt * 8) = make_float2(dv[dt][2 * hr], dv[dt][2 * hr + 1]);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Preprocess: Delta = rowsum(dO * O), lse2 = lse * log2(e), for every padded row of every head.
// A lane takes 8 elements of a row (16-byte loads where the rows allow), kD / 8 lanes a row, and a
// warp 4 passes of rows with all its loads issued before the first sum: a warp per row reading 4
// bytes a lane (the kernel before) left the memory system idle, 98 us for 117 MB at 0.5B 32K on an
// H100 (~37 us at DRAM bandwidth). The sums are in the same order with or without vector loads.

struct BwdPreParams {
  const bf16* o;
  const bf16* dout;
  const float* lse;  // [Hq][Tq]
  float* lse2;       // [Hq][Tq_pad]
  float* delta;      // [Hq][Tq_pad]
  int64_t o_row, o_head, do_row, do_head;
  int Tq, Hq, Tq_pad;
  const int32_t* q_count;  // routed rows: rows at or past *q_count are inactive (Delta 0, lse2 +inf)
};

template <int kD>
struct BwdPreShape {
  static constexpr int kLanesPerRow = kD / 8;
  static constexpr int kRowsPerPass = 32 / kLanesPerRow;
  static constexpr int kPasses = 4;
  static constexpr int kWarps = 8;
  static constexpr int kRowsPerBlock = kWarps * kPasses * kRowsPerPass;  // grid x: Tq_pad / this, y: Hq
  static_assert(kD % 8 == 0 && 32 % kLanesPerRow == 0, "head dim");
};

// 8 consecutive bf16 from `src` as floats: one 16-byte load (kVec: the caller checked alignment) or 8.
template <bool kVec>
__device__ __forceinline__ void load_bf16x8(const bf16* src, float (&v)[8]) {
  if constexpr (kVec) {
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(h[k]);
      v[2 * k] = f.x;
      v[2 * k + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = __bfloat162float(src[k]);
  }
}

template <int kD, bool kVec>
__global__ void __launch_bounds__(32 * BwdPreShape<kD>::kWarps) flash_bwd_preprocess_kernel(const BwdPreParams p) {
  using S = BwdPreShape<kD>;
  const int h = blockIdx.y;
  const int lane = threadIdx.x & 31, sub = lane / S::kLanesPerRow, part = lane % S::kLanesPerRow;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * S::kRowsPerBlock +
                       static_cast<int64_t>(threadIdx.x >> 5) * (S::kPasses * S::kRowsPerPass) + sub;
  const int Tq = p.q_count != nullptr ? max(0, min(p.Tq, *p.q_count)) : p.Tq;
  float o[S::kPasses][8], d[S::kPasses][8];
#pragma unroll
  for (int k = 0; k < S::kPasses; ++k) {
    const int64_t i = row0 + k * S::kRowsPerPass;
    if (i < Tq) {
      load_bf16x8<kVec>(p.o + i * p.o_row + static_cast<int64_t>(h) * p.o_head + part * 8, o[k]);
      load_bf16x8<kVec>(p.dout + i * p.do_row + static_cast<int64_t>(h) * p.do_head + part * 8, d[k]);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) o[k][e] = d[k][e] = 0.f;
    }
  }
#pragma unroll
  for (int k = 0; k < S::kPasses; ++k) {
    float acc = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(o[k][e], d[k][e], acc);
#pragma unroll
    for (int off = S::kLanesPerRow / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    const int64_t i = row0 + k * S::kRowsPerPass;
    if (part == 0 && i < p.Tq_pad) {
      const int64_t idx = static_cast<int64_t>(h) * p.Tq_pad + i;
      p.delta[idx] = acc;
      p.lse2[idx] = i < Tq ? p.lse[static_cast<int64_t>(h) * p.Tq + i] * 1.4426950408889634f : __builtin_huge_valf();
    }
  }
}

// dst[t][h][d] (bf16, strided) = src[t][h][d] (fp32, contiguous [T][H][D]) * mul.
struct BwdConvertParams {
  const float* src;
  bf16* dst;
  int64_t dst_row, dst_head;
  int T, H, D;
  float mul;
  int parts;            // partials summed in order (1: a plain conversion)
  int64_t part_stride;  // floats between partials
};

// static: this header is included by more than one translation unit (the sm_90a dQ pass too).
static __global__ void __launch_bounds__(256) flash_bwd_convert_kernel(const BwdConvertParams p) {
  const int64_t pairs = static_cast<int64_t>(p.T) * p.H * (p.D / 2);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < pairs;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(idx % (p.D / 2)) * 2;
    const int64_t th = idx / (p.D / 2);
    const int h = static_cast<int>(th % p.H);
    const int64_t t = th / p.H;
    float2 x = *reinterpret_cast<const float2*>(p.src + th * p.D + d);
    for (int k = 1; k < p.parts; ++k) {
      const float2 y = *reinterpret_cast<const float2*>(p.src + k * p.part_stride + th * p.D + d);
      x.x += y.x;
      x.y += y.y;
    }
    *reinterpret_cast<uint32_t*>(p.dst + t * p.dst_row + static_cast<int64_t>(h) * p.dst_head + d) =
        pack_bf16(x.x * p.mul, x.y * p.mul);
  }
}

}  // namespace rt::cuda::attn
