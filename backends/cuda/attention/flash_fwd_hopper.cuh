// The flash forward of the kernel family (flash_attention.cuh) on Hopper (sm_90a), in
// FlashAttention-3's structure: warpgroup MMAs (wgmma) reading K and V straight from shared
// memory, K/V tiles brought by the bulk tensor copy engine (TMA) into a ring of shared-memory
// stages, and warp specialization.
//
//   warpgroup 0        producer: one thread issues the TMA copies of K[n] and V[n] into stage
//                      n % kStages as soon as the consumers release it (mbarriers full_* / empty_*);
//                      the warpgroup gives its registers to the consumers (setmaxnreg)
//   warpgroups 1, 2    consumers: 64 query rows each. Per KV tile: S = Q K^T (wgmma, Q and K from
//                      shared memory), the masked online softmax in registers (softmax_tile, the
//                      same code as the mma.sync kernel), O += P V (wgmma, P from registers, V read
//                      transposed from shared memory)
//
// Masks, rows, the query block and its key range, the empty-block and the store code are the
// family's (QueryBlock, softmax_tile, store_row in flash_attention.cuh; the masks in
// common/attention_rows.h, shared with the CPU reference), so this kernel computes the same rows
// as the mma.sync kernel: same tile skipping, the same unmasked inner tiles, the same routed rows
// (GQA heads stacked in a block's rows, grid x = KV head). When few routed blocks are active, the
// heavy ones' key tiles are split over several CTAs and merged after (flash_fwd_split.cuh).
//
// Q is gathered by the consumers with cp.async (routed rows are not a box TMA can describe), once
// per CTA. K and V are [Tk, Hkv, D] views described by 3-d tensor maps (D, Hkv, Tk), boxes of
// 64 head-dim values (128 bytes, the swizzle width) by kBlockN keys, one box per 64 columns.
#pragma once

#include <cuda.h>

#include "cuda/attention/flash_attention.cuh"
#include "cuda/attention/flash_fwd_split.cuh"
#include "cuda/attention/wgmma.cuh"

namespace rt::cuda::attn {

// kOverlap: FlashAttention-3's intra-warpgroup pipelining (the softmax of tile n under the
// P V of tile n - 1); false runs the two GEMMs and the softmax one after the other.
// kConsumers: warpgroups of 64 query rows. 3 (192-row blocks, FlashAttention-3's choice at head
// dim 64, where the softmax's exponentials cost as much as the GEMMs) leaves 160 registers per
// consumer thread, enough at D = 64 only.
// kPersistent: one CTA per SM walks the query blocks (heaviest first, in launch order), so the
// producer fills the K/V ring for a CTA's next block while its consumers finish the last one, and
// no CTA pays a launch and a cold pipeline per block (FlashAttention-3's persistent scheduler,
// static round robin).
template <int kD_, bool kOverlap_ = true, int kConsumers_ = 2, bool kPersistent_ = false>
struct HopperFwdConfig {
  static constexpr int kD = kD_;
  static constexpr bool kOverlap = kOverlap_;
  static constexpr int kConsumers = kConsumers_;
  static constexpr bool kPersistent = kPersistent_;
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kBlockN = 128;
  static constexpr int kStages = 2;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kSubTiles = kD / 64;          // 64-column sub-tiles of a row
  static constexpr int kQBytes = kBlockM * kD * 2;
  static constexpr int kTileBytes = kBlockN * kD * 2;  // one K or V tile
  static constexpr int kBarBytes = 4 * kStages * 8;
  // + 1024: the dynamic shared memory is aligned up to the swizzle period in the kernel.
  static constexpr int kSmemBytes = 1024 + kQBytes + 2 * kStages * kTileBytes + kBarBytes;
  static constexpr int kProducerRegs = 24, kConsumerRegs = kConsumers == 2 ? 240 : 160;
  static_assert(kD == 64 || kD == 128, "head dims 64 and 128");
  static_assert(kConsumers == 2 || (kConsumers == 3 && kD == 64), "3 consumer warpgroups at D = 64 only");
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= 65536, "register file");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace hopper_detail {
// S[64 x kBlockN] (+)= Q[64 x 16] K[kBlockN x 16]^T for one k16 step.
template <int kN>
__device__ __forceinline__ void mma_qk(float (&s)[kN / 2], uint64_t da, uint64_t db, bool zero) {
  if constexpr (kN == 128) sm90::wgmma_m64n128k16_ss(s, da, db, zero);
  else sm90::wgmma_m64n64k16_ss(s, da, db, zero);
}
// O[64 x kD] += P[64 x 16] V[16 x kD] for one k16 step.
template <int kD>
__device__ __forceinline__ void mma_pv(float (&o)[kD / 2], const uint32_t (&a)[4], uint64_t db) {
  if constexpr (kD == 128) sm90::wgmma_m64n128k16_rs_tn(o, a, db);
  else sm90::wgmma_m64n64k16_rs_tn(o, a, db);
}
// Register fences over a whole accumulator or fragment array: the registers a wgmma reads or
// writes asynchronously are neither moved nor reused across its issue and its wait.
template <int N>
__device__ __forceinline__ void fence_regs(float (&x)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) sm90::reg_fence(x[i]);
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&x)[N][4]) {
#pragma unroll
  for (int k = 0; k < N; ++k)
#pragma unroll
    for (int i = 0; i < 4; ++i) sm90::reg_fence(x[k][i]);
}
// An m64 x kN accumulator (wgmma's D layout) as bf16 A fragments of kN / 16 k16 steps: two
// adjacent n8 blocks are one k16 A fragment, so a product feeds the next GEMM from registers.
template <int kN>
__device__ __forceinline__ void pack_a(const float (&x)[kN / 2], uint32_t (&a)[kN / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kN / 16; ++kk) {
    a[kk][0] = pack_bf16(x[8 * kk + 0], x[8 * kk + 1]);
    a[kk][1] = pack_bf16(x[8 * kk + 2], x[8 * kk + 3]);
    a[kk][2] = pack_bf16(x[8 * kk + 4], x[8 * kk + 5]);
    a[kk][3] = pack_bf16(x[8 * kk + 6], x[8 * kk + 7]);
  }
}

// A ring of kStages (K, V) tile stages in shared memory and its mbarriers (4 * kStages of them
// at bars): full_* completes when a tile has landed, empty_* when every consumer warp is done
// with it. Shared by the forward and the backward's dQ pass.
template <int kStages>
struct KvRing {
  uint32_t bars;
  __device__ __forceinline__ uint32_t full_k(int st) const { return bars + 8u * st; }
  __device__ __forceinline__ uint32_t full_v(int st) const { return bars + 8u * (kStages + st); }
  __device__ __forceinline__ uint32_t empty_k(int st) const { return bars + 8u * (2 * kStages + st); }
  __device__ __forceinline__ uint32_t empty_v(int st) const { return bars + 8u * (3 * kStages + st); }
  // One thread, before the CTA-wide barrier that publishes them.
  __device__ __forceinline__ void init(int consumer_warps) const {
    for (int st = 0; st < kStages; ++st) {
      sm90::mbar_init(full_k(st), 1);
      sm90::mbar_init(full_v(st), 1);
      sm90::mbar_init(empty_k(st), consumer_warps);
      sm90::mbar_init(empty_v(st), consumer_warps);
    }
    sm90::mbar_init_fence();
  }
  // The producer thread: ntiles (K, V) tiles of kBlockN keys of KV head hk, latest first (tile it
  // starts at key (nb_max - 1 - it) * kBlockN), each as kSub boxes of 64 head-dim columns.
  // base: tiles this ring carried before (a persistent CTA's earlier blocks), for the stages and phases.
  template <int kSub, int kBlockN>
  __device__ __forceinline__ void produce(int ntiles, int nb_max, int hk, uint32_t sK, uint32_t sV,
                                          const CUtensorMap* tmap_k, const CUtensorMap* tmap_v, int base = 0) const {
    constexpr int kTile = kSub * kBlockN * 128;
    if (base == 0) {
      sm90::tma_prefetch_desc(tmap_k);
      sm90::tma_prefetch_desc(tmap_v);
    }
    for (int it = 0; it < ntiles; ++it) {
      const int st = (base + it) % kStages;
      const uint32_t ph = ((base + it) / kStages) & 1;
      const int n0 = (nb_max - 1 - it) * kBlockN;
      sm90::mbar_wait(empty_k(st), ph ^ 1);  // a fresh barrier counts as released
      sm90::mbar_arrive_expect_tx(full_k(st), kTile);
#pragma unroll
      for (int j = 0; j < kSub; ++j)
        sm90::tma_load_3d(sK + st * kTile + j * kBlockN * 128, tmap_k, full_k(st), j * 64, hk, n0);
      sm90::mbar_wait(empty_v(st), ph ^ 1);
      sm90::mbar_arrive_expect_tx(full_v(st), kTile);
#pragma unroll
      for (int j = 0; j < kSub; ++j)
        sm90::tma_load_3d(sV + st * kTile + j * kBlockN * 128, tmap_v, full_v(st), j * 64, hk, n0);
    }
  }
};
}  // namespace hopper_detail
#endif

template <class Cfg, class Mask, class Rows>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    flash_fwd_hopper_kernel(const __grid_constant__ FwdParams p, const __grid_constant__ CUtensorMap tmap_k,
                            const __grid_constant__ CUtensorMap tmap_v) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace sm90;
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kStages = Cfg::kStages;
  constexpr int kSub = Cfg::kSubTiles, kTile = Cfg::kTileBytes;
  constexpr int kNT = kBlockN / 8;
  constexpr float kInf = __builtin_huge_valf();

  extern __shared__ uint8_t smem_raw[];
  const uint32_t sQ = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sK = sQ + Cfg::kQBytes;           // stage st at sK + st * kTile
  const uint32_t sV = sK + kStages * kTile;
  const hopper_detail::KvRing<kStages> ring{sV + kStages * kTile};

  // The query blocks of this CTA: its grid cell, or (persistent) every gridDim.x-th block of the
  // launch order, which runs the heads fastest and the blocks that see the most keys first.
  const int heads = Rows::routed ? p.Hkv : p.Hq;
  const int n_blocks = Cfg::kPersistent ? heads * p.num_m_blocks : 1;
  const int first = Cfg::kPersistent ? static_cast<int>(blockIdx.x) : 0;
  const int step = Cfg::kPersistent ? static_cast<int>(gridDim.x) : 1;
  // Not persistent: the grid cell's block, and which chunk of its key tiles this CTA runs when
  // heavy routed blocks are split (flash_fwd_split.cuh; `splits` chunks, 1: the whole block).
  int by = static_cast<int>(blockIdx.y), chunk = 0, splits = 1;
  const int active = p.split.max_splits > 1 ? active_query_blocks<Rows>(p, kBlockM) : 0;
  if constexpr (!Cfg::kPersistent) {
    if (p.split.max_splits > 1) {
      const SplitCta cta = split_cta(p, by, active);
      if (cta.by < 0) return;
      by = cta.by;
      chunk = cta.chunk;
    }
  }
  auto block_at = [&](int b) {
    return Cfg::kPersistent ? make_query_block<Mask, Rows>(p, kBlockM, p.num_m_blocks, b % heads, b / heads)
                            : make_query_block<Mask, Rows>(p, kBlockM, p.num_m_blocks, static_cast<int>(blockIdx.x), by);
  };
  // This CTA's key tiles of block qb, latest first: all of them, or its chunk's.
  auto key_tiles = [&](const QueryBlock<Mask, Rows>& qb, int& nb_max) {
    KeyTiles t = block_key_tiles(qb, kBlockN);
    if (splits > 1) t = chunk_tiles(t, chunk, splits);
    nb_max = t.nb_max;
    return t.ntiles;
  };
  if constexpr (!Cfg::kPersistent) {
    const QueryBlock<Mask, Rows> qb = block_at(0);
    if (!qb.empty()) splits = split_count<Rows>(p, active, block_key_tiles(qb, kBlockN).ntiles);
    if (chunk >= splits) return;  // an extra CTA of a block cut into fewer chunks (or empty)
    if (qb.empty()) {
      store_empty_block<kD>(p, qb, kBlockM, threadIdx.x, Cfg::kThreads);
      return;
    }
  }

  if (threadIdx.x == 0) ring.init(4 * Cfg::kConsumers);  // one arrival per consumer warp
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    // Producer.
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) {
      int carried = 0;  // K/V tiles through the ring so far
      for (int b = first; b < n_blocks; b += step) {
        const QueryBlock<Mask, Rows> qb = block_at(b);
        if (qb.empty()) continue;
        int nb_max;
        const int ntiles = key_tiles(qb, nb_max);
        ring.template produce<kSub, kBlockN>(ntiles, nb_max, qb.hk, sK, sV, &tmap_k, &tmap_v, carried);
        carried += ntiles;
      }
    }
  } else {
    // Consumers.
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int cw = wg - 1;                      // consumer warpgroup
    const int ctid = threadIdx.x - 128 * wg;    // thread in the warpgroup
    const int warp = ctid >> 5, lane = ctid & 31, g = lane >> 2, t4 = lane & 3;
    const uint32_t sQw = sQ + cw * 64 * kD * 2;
    int carried = 0;  // K/V tiles consumed so far, as the producer counts them
    for (int b = first; b < n_blocks; b += step) {
      const QueryBlock<Mask, Rows> qb = block_at(b);
      if (qb.empty()) {
        store_empty_block<kD>(p, qb, kBlockM, threadIdx.x - 128, 128 * Cfg::kConsumers);
        continue;
      }
      int nb_max;
      const int ntiles = key_tiles(qb, nb_max);
      const int r_base = qb.m0 + cw * 64;  // this warpgroup's first block row

      // Q: 64 rows, 128-byte swizzled sub-tiles [kSub][64][64]. A persistent CTA's warpgroup first
      // waits until all its warps are past the last block (their wgmma reads of Q have completed).
      if (Cfg::kPersistent && carried > 0) named_barrier_sync(1 + cw, 128);
      {
        constexpr int kChunks = kD / 8;
#pragma unroll
        for (int idx = ctid; idx < 64 * kChunks; idx += 128) {
          const int r = idx / kChunks, c = idx % kChunks;
          const int row = r_base + r;
          const bool ok = row <= qb.m_last;
          const bf16* src = ok ? p.q + q_source_row(p, qb, row) * p.q_row +
                                     static_cast<int64_t>(qb.qhead(row)) * p.q_head + c * 8
                               : p.q;
          cp_async_16(sQw + (c >> 3) * (64 * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4), src, ok);
        }
        cp_async_commit();
        cp_async_wait<0>();
        fence_proxy_async();  // Q is read by wgmma (the async proxy)
        named_barrier_sync(1 + cw, 128);
      }

      const MaskParams& mk = p.mask;
      int row_lo[2], row_hi[2];
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int r = r_base + warp * 16 + g + hr * 8;
        row_lo[hr] = qb.key_lo(mk, r);
        row_hi[hr] = qb.key_hi(mk, r);
      }
      // The keys every row of this warp (16 rows) sees: a tile inside them skips the per-score
      // compare-and-select. Per warp, not per block: ~5 of a window's ~17 tiles touch an edge of a
      // 192-row block, ~2 of a warp's. The window forward got 1.5-4% faster, causal unchanged (H100).
      const int warp_full_lo = __reduce_max_sync(0xffffffffu, max(row_lo[0], row_lo[1]));
      const int warp_full_hi = __reduce_min_sync(0xffffffffu, min(row_hi[0], row_hi[1]));
      float o[kD / 2];
#pragma unroll
      for (int i = 0; i < kD / 2; ++i) o[i] = 0.f;
      float row_max[2] = {-kInf, -kInf}, row_sum[2] = {0.f, 0.f};
      float s[kBlockN / 2];        // scores, then probabilities, of the current tile
      uint32_t pa[kBlockN / 16][4];  // P in bf16: the A operand of O += P V
      float corr[2];

      // S = Q K[st]^T, issued (not waited for).
      auto issue_qk = [&](int st) {
        hopper_detail::fence_regs(s);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks) {
          const uint64_t da = smem_desc_sw128(sQw + (ks >> 2) * (64 * 128) + (ks & 3) * 32, 16, 1024);
          const uint64_t db =
              smem_desc_sw128(sK + st * kTile + (ks >> 2) * (kBlockN * 128) + (ks & 3) * 32, 16, 1024);
          hopper_detail::mma_qk<kBlockN>(s, da, db, ks == 0);
        }
        wgmma_commit();
      };
      // O += P V[st], issued. P and O must stay untouched until the wait.
      auto issue_pv = [&](int st) {
        hopper_detail::fence_regs(o);
        hopper_detail::fence_regs(pa);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          const uint64_t db = smem_desc_sw128(sV + st * kTile + kk * 16 * 128, kBlockN * 128, 1024);
          hopper_detail::mma_pv<kD>(o, pa[kk], db);
        }
        wgmma_commit();
      };
      // After a wait: the results are in registers again (orders later uses after the wait).
      auto s_landed = [&] { hopper_detail::fence_regs(s); };
      auto o_landed = [&] {
        hopper_detail::fence_regs(o);
        hopper_detail::fence_regs(pa);
      };
      auto release = [&](uint32_t bar) {
        __syncwarp();
        if (lane == 0) mbar_arrive(bar);
      };
      // Masked online softmax of tile n0; the accumulator correction is kept in corr[] (applied by
      // rescale_o, which must wait for any O += P V still in flight).
      auto softmax = [&](int n0) {
        const bool full_tile = n0 >= warp_full_lo && n0 + kBlockN <= warp_full_hi;
        softmax_tile<kNT>([&](int nt, int e) -> float& { return s[4 * nt + e]; }, row_max, row_sum, row_lo, row_hi,
                          full_tile, n0 + 2 * t4, p.scale_log2, [&](int hr, float c) { corr[hr] = c; });
      };
      auto rescale_o = [&] {
#pragma unroll
        for (int dt = 0; dt < kD / 8; ++dt) {
          o[4 * dt + 0] *= corr[0];
          o[4 * dt + 1] *= corr[0];
          o[4 * dt + 2] *= corr[1];
          o[4 * dt + 3] *= corr[1];
        }
      };
      // P (bf16) from the probabilities: two adjacent n8 blocks are one k16 A fragment.
      auto pack_p = [&] { hopper_detail::pack_a<kBlockN>(s, pa); };
      auto tile_n0 = [&](int it) { return (nb_max - 1 - it) * kBlockN; };

      if constexpr (!Cfg::kOverlap) {
        // Serial: S(n), softmax(n), O += P(n) V(n).
        for (int it = 0; it < ntiles; ++it) {
          const int st = (carried + it) % kStages;
          const uint32_t ph = ((carried + it) / kStages) & 1;
          mbar_wait(ring.full_k(st), ph);
          issue_qk(st);
          wgmma_wait<0>();
          s_landed();
          release(ring.empty_k(st));
          softmax(tile_n0(it));
          rescale_o();
          pack_p();
          mbar_wait(ring.full_v(st), ph);
          issue_pv(st);
          wgmma_wait<0>();
          o_landed();
          release(ring.empty_v(st));
        }
      } else {
        // FlashAttention-3's intra-warpgroup overlap: S(n) = Q K(n)^T and O += P(n-1) V(n-1) are
        // issued together, and the softmax of tile n runs on the CUDA cores while the tensor cores
        // finish P(n-1) V(n-1).
        const int st0 = carried % kStages;
        mbar_wait(ring.full_k(st0), (carried / kStages) & 1);
        issue_qk(st0);
        wgmma_wait<0>();
        s_landed();
        release(ring.empty_k(st0));
        softmax(tile_n0(0));
        pack_p();  // O is still zero: no rescale
        for (int it = 1; it < ntiles; ++it) {
          const int c = carried + it;
          const int st = c % kStages, pst = (c - 1) % kStages;
          const uint32_t ph = (c / kStages) & 1, pph = ((c - 1) / kStages) & 1;
          mbar_wait(ring.full_k(st), ph);
          issue_qk(st);
          mbar_wait(ring.full_v(pst), pph);
          issue_pv(pst);
          wgmma_wait<1>();  // S(n) landed; P(n-1) V(n-1) may still run
          s_landed();
          release(ring.empty_k(st));
          softmax(tile_n0(it));
          wgmma_wait<0>();
          o_landed();
          release(ring.empty_v(pst));
          rescale_o();
          pack_p();
        }
        const int lst = (carried + ntiles - 1) % kStages;
        mbar_wait(ring.full_v(lst), ((carried + ntiles - 1) / kStages) & 1);
        issue_pv(lst);
        wgmma_wait<0>();
        o_landed();
        release(ring.empty_v(lst));
      }

#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int r = r_base + warp * 16 + g + hr * 8;
        auto acc = [&](int dt, int e) { return o[4 * dt + 2 * hr + e]; };
        if (splits > 1)  // a chunk: the softmax's state, for the combine
          store_partial_row<kD>(split_slot<kD>(p, qb.hk, qb.m0 / kBlockM, chunk, kBlockM), kBlockM, r - qb.m0, t4,
                                row_max[hr], quad_sum(row_sum[hr]), acc);
        else
          store_row<kD>(p, qb, r, t4, row_max[hr], quad_sum(row_sum[hr]), acc);
      }
      carried += ntiles;
    }
  }
#endif
}

}  // namespace rt::cuda::attn
