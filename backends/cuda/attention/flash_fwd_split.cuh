// The key split of the routed forward's heavy query blocks (Hopper forward, flash_fwd_hopper.cuh).
//
// Why: a routed query block walks every key up to its rows' positions, so under a causal mask the
// block of the latest routed rows sees all Tk keys. When few blocks are active (high sparsity,
// short T) that one block sets the kernel's time: at 95% and 32K the routed forward took 0.43 ms
// for ~0.18 ms of work, one 192-row block walking 256 key tiles while most SMs idled (tenth
// session's sweep, BENCHMARKS.md).
//
// What: such a block's key tiles are cut into chunks, each run by its own CTA, which writes its
// unnormalized output and its row max and sum (the online softmax's state) into a workspace; a
// combine kernel merges the chunks of each split block in chunk order (deterministic) and stores o
// and lse as store_row would. Blocks that are not split store directly, as before.
//
// The count of routed rows is on the device, so the plan is made there, by every CTA for itself
// from the count alone (no planning kernel, no host synchronization):
//   active  = ceil(count * group / block_m) blocks per KV head
//   split only when active * Hkv <= sms (the whole launch fits one wave: otherwise the other
//   blocks fill the SMs and the heavy one is not alone); then
//   chunk   = max(min_chunk, ceil(active * Hkv * tiles_max / 2 / (sms * waves))) key tiles
//             (the launch's work if every block saw half the keys, as causal routed rows do on
//             average, shared over the SMs `waves` times)
//   splits  = min(max_splits, ceil(tiles of the block / chunk))
// The grid holds, beside one CTA per block (its chunk 0), (max_splits - 1) * blocks_max extra CTAs
// for the chunks 1.. (split_cta orders them); one whose chunk its block does not have returns at once.
#pragma once

#include "cuda/attention/flash_attention.cuh"

namespace rt::cuda::attn {

// Active query blocks of a routed launch per KV head.
template <class Rows>
__device__ __forceinline__ int active_query_blocks(const FwdParams& p, int block_m) {
  if constexpr (Rows::routed) {
    return (make_rows<Rows>(p.q_index, p.q_count).active(p.Tq) * p.group + block_m - 1) / block_m;
  } else {
    return p.num_m_blocks;
  }
}

// Key tiles of a query block, latest first: tiles nb_max - 1 down to nb_max - ntiles.
struct KeyTiles {
  int nb_max = 0, ntiles = 0;
};
template <class Mask, class Rows>
__device__ __forceinline__ KeyTiles block_key_tiles(const QueryBlock<Mask, Rows>& qb, int block_n) {
  KeyTiles t;
  t.nb_max = (qb.n_hi + block_n - 1) / block_n;  // exclusive
  t.ntiles = t.nb_max - qb.n_lo / block_n;
  return t;
}

// How many chunks the block's key tiles are cut into (1: not split).
template <class Rows>
__device__ __forceinline__ int split_count(const FwdParams& p, int active_blocks, int ntiles) {
  const RoutedSplit& sp = p.split;
  if (!Rows::routed || sp.max_splits <= 1 || active_blocks > sp.blocks_max || ntiles <= 1) return 1;
  const int64_t work = static_cast<int64_t>(active_blocks) * p.Hkv * sp.tiles_max;  // 2x the estimate
  const int64_t share = 2 * static_cast<int64_t>(sp.sms) * sp.waves;
  const int chunk =
      sp.fixed_chunk > 0 ? sp.fixed_chunk : max(sp.min_chunk, static_cast<int>((work + share - 1) / share));
  return min(sp.max_splits, (ntiles + chunk - 1) / chunk);
}

// Chunk c of s: its tiles, latest first, as a KeyTiles of its own.
__device__ __forceinline__ KeyTiles chunk_tiles(const KeyTiles& all, int c, int s) {
  const int lo = static_cast<int>(static_cast<int64_t>(c) * all.ntiles / s);
  const int hi = static_cast<int>(static_cast<int64_t>(c + 1) * all.ntiles / s);
  return KeyTiles{all.nb_max - lo, hi - lo};
}

// The block (its place in the launch order, as make_query_block's `by`) and the chunk a CTA runs
// from its grid row y, in this order: chunk 0 of the active blocks, heaviest first; when the blocks
// are split, their chunks 1.., heaviest first; the blocks past the count (which store zeros or
// nothing); then rows no work is left for (by < 0), which return at once at the tail, where the SMs
// are draining anyway.
struct SplitCta {
  int by = 0, chunk = 0;
};
__device__ __forceinline__ SplitCta split_cta(const FwdParams& p, int y, int active_blocks) {
  const RoutedSplit& sp = p.split;
  const int per = sp.max_splits - 1;
  const int extras = active_blocks <= sp.blocks_max ? per * active_blocks : 0;
  int j = -1, chunk = 0;  // block index from the top (m0 = j * block_m)
  if (y < active_blocks) {
    j = active_blocks - 1 - y;
  } else if (y < active_blocks + extras) {
    const int e = y - active_blocks;
    j = active_blocks - 1 - e / per;
    chunk = 1 + e % per;
  } else if (y < p.num_m_blocks + extras) {
    j = y - extras;
  }
  return SplitCta{j < 0 ? -1 : p.num_m_blocks - 1 - j, chunk};
}

// The workspace slot of (KV head, block index j = m0 / block_m, chunk).
template <int kD>
__device__ __forceinline__ float* split_slot(const FwdParams& p, int hk, int j, int chunk, int block_m) {
  const RoutedSplit& sp = p.split;
  const int64_t slot = (static_cast<int64_t>(hk) * sp.blocks_max + j) * sp.max_splits + chunk;
  return sp.part + slot * block_m * (kD + 2);
}

// A chunk's row r (block row, m0 <= r < m0 + block_m) in the accumulator layout of store_row: this
// thread's columns dt * 8 + 2 * t4 + {0, 1}; the max (log2 units, scaled) and the row's full sum.
template <int kD, class Acc>
__device__ __forceinline__ void store_partial_row(float* slot, int block_m, int rr, int t4, float row_max, float sum,
                                                  Acc&& acc) {
  float* dst = slot + static_cast<int64_t>(rr) * kD + 2 * t4;
#pragma unroll
  for (int dt = 0; dt < kD / 8; ++dt) *reinterpret_cast<float2*>(dst + dt * 8) = make_float2(acc(dt, 0), acc(dt, 1));
  if (t4 == 0) *reinterpret_cast<float2*>(slot + static_cast<int64_t>(block_m) * kD + 2 * rr) = make_float2(row_max, sum);
}

// Merges the chunks of every split block: grid (Hkv, blocks_max), any block size. Row by row in
// chunk order, o = sum_c w_c acc_c / L and lse = M ln 2 + ln L, with M the largest chunk max,
// w_c = 2^(m_c - M) and L = sum_c w_c l_c: the rows store_row would write from one pass over all
// the keys (up to the order of the sums), with the same conventions (a row that saw no key: zeros,
// lse = +inf; rows past the count: zeros and +inf, or nothing when inactive_unwritten).
template <int kD, int kBlockM, int kBlockN, class Mask, class Rows>
__global__ void flash_fwd_split_combine_kernel(const FwdParams p) {
  constexpr float kInf = __builtin_huge_valf();
  const int active = active_query_blocks<Rows>(p, kBlockM);
  const int j = static_cast<int>(blockIdx.y);
  if (j >= active) return;
  const QueryBlock<Mask, Rows> qb =
      make_query_block<Mask, Rows>(p, kBlockM, p.num_m_blocks, static_cast<int>(blockIdx.x), p.num_m_blocks - 1 - j);
  if (qb.empty()) return;
  const int s = split_count<Rows>(p, active, block_key_tiles(qb, kBlockN).ntiles);
  if (s <= 1) return;
  const int end = stored_end(p, qb);
  constexpr int kQuads = kD / 4;
  for (int idx = threadIdx.x; idx < kBlockM * kQuads; idx += blockDim.x) {
    const int rr = idx / kQuads, c = (idx % kQuads) * 4, r = qb.m0 + rr;
    if (r >= end) continue;
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
    float M = -kInf, L = 0.f;
    if (r <= qb.m_last) {
      for (int ch = 0; ch < s; ++ch) M = fmaxf(M, split_slot<kD>(p, qb.hk, j, ch, kBlockM)[kBlockM * kD + 2 * rr]);
      for (int ch = 0; ch < s; ++ch) {
        const float* slot = split_slot<kD>(p, qb.hk, j, ch, kBlockM);
        const float m = slot[kBlockM * kD + 2 * rr], l = slot[kBlockM * kD + 2 * rr + 1];
        const float w = M == -kInf ? (isnan(l) ? 1.f : 0.f) : exp2f(m - M);  // NaN sums propagate
        const float4 x = *reinterpret_cast<const float4*>(slot + rr * kD + c);
        L += w * l;
        a.x += w * x.x, a.y += w * x.y, a.z += w * x.z, a.w += w * x.w;
      }
    }
    const bool seen = !(L == 0.f);
    const float inv = seen ? 1.f / L : 0.f;
    bf16* dst = p.o + static_cast<int64_t>(qb.qrow(r)) * p.o_row + static_cast<int64_t>(qb.qhead(r)) * p.o_head + c;
    reinterpret_cast<uint32_t*>(dst)[0] = pack_bf16(a.x * inv, a.y * inv);  // (o's rows: 4-byte aligned, as store_row's)
    reinterpret_cast<uint32_t*>(dst)[1] = pack_bf16(a.z * inv, a.w * inv);
    if (p.lse != nullptr && c == 0)
      p.lse[static_cast<int64_t>(qb.qhead(r)) * p.Tq + qb.qrow(r)] =
          r <= qb.m_last && seen ? M * 0.69314718055994531f + logf(L) : kInf;
  }
}

}  // namespace rt::cuda::attn
