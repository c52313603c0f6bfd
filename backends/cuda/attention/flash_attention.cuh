// One kernel family for flash-style attention (FlashAttention-2 design) on sm_80+ (built for sm_90).
//
//   flash_fwd_kernel<Cfg, Mask, Rows>      prefill / training forward: one CTA per (query head,
//                                          block of BlockM query rows), online softmax over KV tiles
//   flash_decode_split_kernel<D, Mask>     decode (Tq small, Tk long): flash-decoding, one warp per
//                                          (KV chunk, KV head, 16 stacked rows), partials to a workspace
//   flash_decode_combine_kernel<D>         merges the partials of all chunks
//
// Masks are trait types (no copies of the kernel per mask). A mask says which keys a query at a
// given position sees, as a key-index range [key_lo(pos), key_hi(pos)) with both ends
// non-decreasing in the position; that is what lets a query block
//   - iterate only the KV tiles intersecting [key_lo(first row), key_hi(last row)) (causal: up to
//     the diagonal, ~half the work; sliding window: the ~W/BlockN + 1 tiles of the band, O(T W)),
//   - evaluate the mask per element only on boundary tiles (a tile inside
//     [key_lo(last row), key_hi(first row)) is visible to every row of the block).
// Query rows come through a second trait (Rows, common/attention_rows.h): DenseRows is row i at
// position q_pos0 + i; RoutedRows (L2A) is row i of a compact list at position q_pos0 + index[i],
// the first *count rows active. Since the index ascends, key_lo/key_hi stay monotone in the row and
// the same tile skipping holds; blocks past the count write zeros and return.
//
// Numerics: bf16 operands, fp32 accumulation (mma.sync m16n8k16 bf16 -> f32), fp32 running max
// and sum; scores are scaled by scale * log2(e) once and exponentiated with ex2.approx. A row that
// sees no key keeps max = -inf and sum = 0 and writes zeros (the CPU reference's convention); its
// log-sum-exp is +inf.
//
// Forward kernel data path: Q tile (BlockM x D) loaded once to shared memory; K and V tiles
// (BlockN x D) streamed with cp.async into one K and one V buffer in the FlashAttention-2 order
// (V[n] loads while S = Q K[n]^T computes; K[n-1] loads while softmax and O += P V[n] compute).
// Shared tiles use a 16-byte-chunk XOR swizzle (chunk ^ (row & 7)), so ldmatrix (8 rows at one
// logical chunk) and the cp.async writes are free of bank conflicts. Each warp owns 16 * kMTiles
// query rows; its S tile and O accumulator stay in registers; P goes from the S accumulator
// registers straight into the A operand of the second MMA (no shared-memory round trip). Ragged
// tails: out-of-range rows are zero-filled by cp.async (src-size 0) and masked to -inf.
// Grid: x = query head (heads of one GQA group adjacent, so they share K/V in L2), y = query
// block, reversed: the blocks that see the most keys (latest, under a causal mask) start first.
//
// What bounds it. mma.sync keeps the B operand (K or V fragments) in registers: every warp
// reloads the whole K and V tile from shared memory with ldmatrix, 256 bytes per m16n8k16 per 16
// rows. With 32 rows per warp (kMTiles = 2) that is ~128 B/clk/SM at full tensor rate, the whole
// shared-memory bandwidth of an SM, and mma.sync itself issues at about two thirds of Hopper's
// dense bf16 rate; the exp2 (MUFU, 16/clk/SM) of the softmax is not overlapped with the MMAs.
// Measured: ~250 TFLOP/s on an H100/H200 (0.52x cuDNN). This kernel is the path of sm_80/sm_89
// (the RTX 4090 has no wgmma). On Hopper the same rows run in flash_fwd_hopper.cuh (wgmma with B
// read by the tensor cores from shared memory, TMA, warp specialization, the softmax of one tile
// under the P V of the previous one), which shares QueryBlock, softmax_tile and store_row below.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/attention_rows.h"

#ifndef RT_ATTN_KS_UNROLL
#define RT_ATTN_KS_UNROLL 1
#endif

namespace rt::cuda::attn {

using bf16 = __nv_bfloat16;
// Unrolling of the k-steps of S = Q K^T: 1 keeps the fragments' live ranges short (a full unroll
// makes ptxas hoist every ldmatrix and spill at D = 128).
constexpr int kKsUnroll = RT_ATTN_KS_UNROLL;

// The mask and rows traits of common/attention_rows.h, shared with the CPU reference.
using rt::attn::BandMask;
using rt::attn::CausalMask;
using rt::attn::clamp_key;
using rt::attn::DenseRows;
using rt::attn::FullMask;
using rt::attn::MaskParams;
using rt::attn::first_key_block;
using rt::attn::query_range;
using rt::attn::RoutedRows;
using rt::attn::SlidingWindowMask;
using rt::attn::WindowOnlyMask;

// Rows of a kernel from its params: DenseRows carries nothing, RoutedRows the index and count.
template <class Rows>
__device__ __forceinline__ Rows make_rows(const int32_t* index, const int32_t* count) {
  if constexpr (Rows::routed) return Rows{index, count};
  else return Rows{};
}

// ------------------------------------------------------------------------------------------------
// PTX helpers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte async copy; src_bytes = 0 zero-fills the destination (src must still be a valid address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// c += a * b, m16n8k16, bf16 operands, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<uint32_t*>(&v);
}
// The A operand (m16 x k16, bf16) of an MMA from two n8 fp32 accumulator tiles lo, hi: the C layout
// of two adjacent n8 tiles is the A layout of one k16 step, so P (or dS) goes from the first MMA's
// accumulators into the second MMA without a shared-memory round trip.
__device__ __forceinline__ void accum_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack_bf16(lo[0], lo[1]);
  a[1] = pack_bf16(lo[2], lo[3]);
  a[2] = pack_bf16(hi[0], hi[1]);
  a[3] = pack_bf16(hi[2], hi[3]);
}
__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx(-inf) = +0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Byte offset of (row, 16-byte chunk) in a swizzled [rows][kD] bf16 tile.
template <int kD>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  return static_cast<uint32_t>(row * (kD * 2) + ((chunk ^ (row & 7)) << 4));
}

// Async copy of rows [0, kRows) of a [rows][kD] bf16 tile: tile row r is source row r0 + r
// (global address base + (r0 + r) * row_stride), zero-filled when r0 + r >= limit. Each thread
// copies one 16-byte column chunk of every kThreads / (kD / 8)-th row, so one source pointer and
// one shared address per thread, advanced by constant steps (the swizzle term is constant when the
// row step is a multiple of 8; otherwise it is recomputed).
template <int kD, int kRows, int kThreads>
__device__ __forceinline__ void load_tile(uint32_t s_tile, const bf16* base, int64_t row_stride, int r0,
                                          int limit, int tid) {
  constexpr int kChunks = kD / 8;
  static_assert(kThreads % kChunks == 0, "threads must cover whole rows");
  constexpr int kRowStep = kThreads / kChunks;
  const int c = tid % kChunks;
  int r = tid / kChunks;
  const bf16* src = base + static_cast<int64_t>(r0 + r) * row_stride + c * 8;
  uint32_t dst = s_tile + swz<kD>(r, c);
#pragma unroll
  for (int i = 0; i < (kRows + kRowStep - 1) / kRowStep; ++i) {
    if (kRows % kRowStep == 0 || r < kRows) {
      const bool ok = r0 + r < limit;
      if constexpr (kRowStep % 8 == 0) cp_async_16(dst, ok ? src : base, ok);
      else cp_async_16(s_tile + swz<kD>(r, c), ok ? src : base, ok);
    }
    r += kRowStep;
    src += kRowStep * row_stride;
    dst += kRowStep * kD * 2;
  }
}

// ------------------------------------------------------------------------------------------------
// Forward kernel

// The key split of the Hopper forward's heavy routed query blocks (flash_fwd_split.cuh);
// max_splits <= 1: off (every CTA its block's chunk 0, the only one the other kernels know).
struct RoutedSplit {
  float* part = nullptr;  // [Hkv][blocks_max][max_splits] slots of block_m x (kD + 2) floats:
                          // the unnormalized output [block_m][kD], then (max, sum) per row
  int max_splits = 0;
  int blocks_max = 0;  // split only with at most this many active blocks per KV head
  int extra_y = 0;     // grid rows beside one per block: (max_splits - 1) * blocks_max
  int sms = 1;
  int tiles_max = 0;   // key tiles of the longest row range: ceil(Tk / BlockN)
  int min_chunk = 1;   // fewest key tiles in a chunk
  int waves = 1;       // chunks of about 1 / waves of an SM's share of the work
  int fixed_chunk = 0;  // > 0: chunks of this many key tiles, not planned (RT_ATTN_ROUTED_SPLIT=force)
};

struct FwdParams {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  bf16* o;
  float* lse;  // [Hq, Tq] or nullptr
  int64_t q_row, q_head, k_row, k_head, v_row, v_head, o_row, o_head;  // strides in elements
  int Tq, Tk, Hq, Hkv, group;                                          // group = Hq / Hkv
  int num_m_blocks;
  float scale_log2;  // scale * log2(e)
  MaskParams mask;
  const int32_t* q_index;  // RoutedRows: row positions (ascending) and the active row count
  const int32_t* q_count;
  bool q_indexed;           // RoutedRows: q holds every row, row i reads q row q_index[i] (AttentionSpec)
  bool inactive_unwritten;  // RoutedRows: rows past the count are not stored (AttentionSpec)
  RoutedSplit split;        // the Hopper forward only
};

// Tile shape: head dim, query rows per CTA, keys per KV tile, warps. Each warp owns 16 * kMTiles rows.
template <int kD_, int kBlockM_, int kBlockN_, int kWarps_>
struct FwdConfig {
  static constexpr int kD = kD_, kBlockM = kBlockM_, kBlockN = kBlockN_, kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kBlockM / (16 * kWarps);
  static_assert(kMTiles * 16 * kWarps == kBlockM, "BlockM must be a multiple of 16 * warps");
  static_assert(kD % 64 == 0, "head dim must be a multiple of 64 (swizzle over 8 chunks)");
  static_assert(kBlockN % 16 == 0, "BlockN must be a multiple of 16");
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kD * 2;
};

// One query block of a forward call (both kernels of the family: flash_fwd_kernel here and the
// Hopper kernel, flash_fwd_hopper.cuh): its rows and the key range they see.
// Dense rows: one query head per CTA (grid x = query head), block row r is query row r. Routed
// rows: the query heads of a GQA group are stacked (x = KV head), block row r is query row
// r / group of head hk * group + r % group, so one K/V tile serves the whole group and a block's
// rows span few positions (ascending in r, as the tile skipping needs).
template <class Mask, class Rows>
struct QueryBlock {
  int group = 1, hk = 0, head = 0;
  int m0 = 0, m_end = 0, m_last = 0;  // first row; end of its rows (active or not); last active row
  int n_lo = 0, n_hi = 0;             // keys seen by any row
  int full_lo = 0, full_hi = 0;       // keys seen by every row
  Rows rows;

  __device__ __forceinline__ int qrow(int r) const { return Rows::routed ? r / group : r; }
  __device__ __forceinline__ int qhead(int r) const { return Rows::routed ? hk * group + r % group : head; }
  __device__ __forceinline__ bool empty() const { return m_last < m0 || n_lo >= n_hi; }
  // The visible key range of block row r (rows past the last active one take its range: they are
  // not stored).
  __device__ __forceinline__ int key_lo(const MaskParams& mk, int r) const {
    return Mask::key_lo(mk, rows.pos(mk, qrow(min(r, m_last))));
  }
  __device__ __forceinline__ int key_hi(const MaskParams& mk, int r) const {
    return Mask::key_hi(mk, rows.pos(mk, qrow(min(r, m_last))));
  }
};

// Block y of the grid (reversed: the blocks that see the most keys under a causal mask start first).
// P: FwdParams, or BwdParams for the dQ pass (group, q_index, q_count, Tq and mask are read).
// bx: the query head (dense) or KV head (routed); by: the block's place in the launch order.
template <class Mask, class Rows, class P>
__device__ __forceinline__ QueryBlock<Mask, Rows> make_query_block(const P& p, int block_m, int num_m_blocks, int bx,
                                                                   int by) {
  QueryBlock<Mask, Rows> b;
  b.group = p.group;
  b.hk = Rows::routed ? bx : bx / p.group;
  b.head = bx;
  b.rows = make_rows<Rows>(p.q_index, p.q_count);
  const int stack = Rows::routed ? p.group : 1;
  b.m0 = (num_m_blocks - 1 - by) * block_m;
  const int active = b.rows.active(p.Tq) * stack;  // routed: rows past the count are inactive
  b.m_end = min(b.m0 + block_m, p.Tq * stack);
  b.m_last = min(b.m0 + block_m, active) - 1;
  const MaskParams& mk = p.mask;
  const int64_t pos_first = b.rows.pos(mk, b.qrow(b.m0));
  const int64_t pos_last = b.m_last >= b.m0 ? b.rows.pos(mk, b.qrow(b.m_last)) : pos_first;
  b.n_lo = Mask::key_lo(mk, pos_first);
  b.n_hi = Mask::key_hi(mk, pos_last);
  b.full_lo = Mask::key_lo(mk, pos_last);
  b.full_hi = Mask::key_hi(mk, pos_first);
  return b;
}
template <class Mask, class Rows, class P>
__device__ __forceinline__ QueryBlock<Mask, Rows> make_query_block(const P& p, int block_m, int num_m_blocks) {
  return make_query_block<Mask, Rows>(p, block_m, num_m_blocks, static_cast<int>(blockIdx.x),
                                      static_cast<int>(blockIdx.y));
}
template <class Mask, class Rows>
__device__ __forceinline__ QueryBlock<Mask, Rows> make_query_block(const FwdParams& p, int block_m) {
  return make_query_block<Mask, Rows>(p, block_m, p.num_m_blocks);
}

// The end of the rows a block stores: all its rows, or (inactive_unwritten) its active ones.
template <class Mask, class Rows>
__device__ __forceinline__ int stored_end(const FwdParams& p, const QueryBlock<Mask, Rows>& b) {
  return Rows::routed && p.inactive_unwritten ? min(b.m_end, b.m_last + 1) : b.m_end;
}

// The row of q that block row r reads: its own, or (q_indexed) the one the index names, clamped
// so that a bad index cannot read outside q.
template <class Mask, class Rows>
__device__ __forceinline__ int64_t q_source_row(const FwdParams& p, const QueryBlock<Mask, Rows>& b, int r) {
  const int i = b.qrow(r);
  if constexpr (Rows::routed) {
    if (p.q_indexed) return min(max(b.rows.index[i], 0), p.Tq - 1);
  }
  return i;
}

// A block no row of which sees any key (or none is active): zeros, lse = +inf.
template <int kD, class Mask, class Rows>
__device__ __forceinline__ void store_empty_block(const FwdParams& p, const QueryBlock<Mask, Rows>& b, int block_m,
                                                  int tid, int threads) {
  const int end = stored_end(p, b);
  for (int idx = tid; idx < block_m * (kD / 2); idx += threads) {
    const int r = idx / (kD / 2), c = idx % (kD / 2);
    if (b.m0 + r >= end) continue;
    reinterpret_cast<uint32_t*>(p.o + static_cast<int64_t>(b.qrow(b.m0 + r)) * p.o_row +
                                static_cast<int64_t>(b.qhead(b.m0 + r)) * p.o_head)[c] = 0u;
  }
  if (p.lse != nullptr)
    for (int r = tid; b.m0 + r < end; r += threads)
      p.lse[static_cast<int64_t>(b.qhead(b.m0 + r)) * p.Tq + b.qrow(b.m0 + r)] = __builtin_huge_valf();
}

// The online-softmax step of one KV tile for the two rows this thread holds (the layout of
// mma.sync's C and wgmma's D: row pair hr = 0, 1 at rows g, g + 8; column col0 + nt * 8 + (e & 1)
// in s(nt, e), e >> 1 = hr). Masks the raw scores on boundary tiles (keys outside
// [lo[hr], hi[hr])), updates the running max and sum (row_max in the log2 domain, scale * log2(e)
// applied), turns the scores into unnormalized probabilities, and calls rescale(hr, corr) with the
// factor that row pair's accumulators must be multiplied by. The scale is folded into the
// exponent's FFMA instead of a multiply per score first: at head dim 64 the softmax's instructions
// compete with the tensor cores for issue slots, so one fewer per score is worth it. The max is
// therefore taken on the raw scores (on their negation for a negative scale). A NaN score makes
// the row's sum NaN (store_row then writes NaN): fmaxf drops NaN from the max, but exp2 keeps it.
template <int kNT, class Score, class Rescale>
__device__ __forceinline__ void softmax_tile(Score&& s, float (&row_max)[2], float (&row_sum)[2], const int (&lo)[2],
                                             const int (&hi)[2], bool full_tile, int col0, float scale_log2,
                                             Rescale&& rescale) {
  constexpr float kInf = __builtin_huge_valf();
  const bool positive = scale_log2 > 0.f;
  if (!full_tile) {
    const float masked = positive ? -kInf : kInf;  // scales to -inf
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = col0 + nt * 8 + (e & 1);
        if (col < lo[e >> 1] || col >= hi[e >> 1]) s(nt, e) = masked;
      }
  }
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float mx = -kInf;  // the tile's max of sign(scale) * score
    if (positive) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(s(nt, 2 * hr), s(nt, 2 * hr + 1)));
    } else {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(-s(nt, 2 * hr), -s(nt, 2 * hr + 1)));
    }
    mx = fmaxf(row_max[hr], quad_max(mx) * fabsf(scale_log2));
    const float m_use = mx == -kInf ? 0.f : mx;  // all masked so far: keep exp2 finite (gives 0)
    const float corr = fast_exp2(row_max[hr] - m_use);
    row_max[hr] = mx;
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const float p0 = fast_exp2(fmaf(s(nt, 2 * hr), scale_log2, -m_use));
      const float p1 = fast_exp2(fmaf(s(nt, 2 * hr + 1), scale_log2, -m_use));
      s(nt, 2 * hr) = p0;
      s(nt, 2 * hr + 1) = p1;
      sum += p0 + p1;
    }
    row_sum[hr] = row_sum[hr] * corr + sum;
    rescale(hr, corr);
  }
}

// Normalizes and stores block row r from the accumulator layout of mma.sync's C (and wgmma's D):
// this thread holds columns dt * 8 + 2 * t4 + {0, 1} in acc(dt, 0..1). Rows that saw no key have
// sum 0 and write zeros (a NaN sum writes NaN); rows past the last active one write zeros and
// lse = +inf, or nothing (inactive_unwritten).
template <int kD, class Mask, class Rows, class Acc>
__device__ __forceinline__ void store_row(const FwdParams& p, const QueryBlock<Mask, Rows>& b, int r, int t4,
                                          float row_max, float sum, Acc&& acc) {
  if (r >= stored_end(p, b)) return;
  const bool seen = !(sum == 0.f);  // a key was seen, or the sum is NaN (propagated)
  const float inv = seen ? 1.f / sum : 0.f;
  const bool active = r <= b.m_last;
  bf16* dst = p.o + static_cast<int64_t>(b.qrow(r)) * p.o_row + static_cast<int64_t>(b.qhead(r)) * p.o_head + 2 * t4;
#pragma unroll
  for (int dt = 0; dt < kD / 8; ++dt)
    *reinterpret_cast<uint32_t*>(dst + dt * 8) = active ? pack_bf16(acc(dt, 0) * inv, acc(dt, 1) * inv) : 0u;
  if (p.lse != nullptr && t4 == 0)
    p.lse[static_cast<int64_t>(b.qhead(r)) * p.Tq + b.qrow(r)] =
        active && seen ? row_max * 0.69314718055994531f + logf(sum) : __builtin_huge_valf();
}

template <class Cfg, class Mask, class Rows>
__global__ void __launch_bounds__(Cfg::kThreads) flash_fwd_kernel(const FwdParams p) {
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kMT = Cfg::kMTiles;
  constexpr int kThreads = Cfg::kThreads;
  constexpr int kNT = kBlockN / 8;  // n8 tiles of S per m-tile
  constexpr int kDT = kD / 8;       // n8 tiles of O per m-tile
  constexpr float kInf = __builtin_huge_valf();

  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t sQ = smem_addr(smem);
  const uint32_t sK = sQ + kBlockM * kD * 2;
  const uint32_t sV = sK + kBlockN * kD * 2;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const QueryBlock<Mask, Rows> qb = make_query_block<Mask, Rows>(p, kBlockM);
  const int m0 = qb.m0;
  const MaskParams& mk = p.mask;
  if (qb.empty()) {
    store_empty_block<kD>(p, qb, kBlockM, tid, kThreads);
    return;
  }
  const int n_lo = qb.n_lo, n_hi = qb.n_hi, full_lo = qb.full_lo, full_hi = qb.full_hi;
  const int hk = qb.hk;
  const int nb_min = n_lo / kBlockN;
  const int nb_max = (n_hi + kBlockN - 1) / kBlockN;  // exclusive

  const bf16* kbase = p.k + static_cast<int64_t>(hk) * p.k_head;
  const bf16* vbase = p.v + static_cast<int64_t>(hk) * p.v_head;

  // Q tile: rows m0.. (routed rows are compact too: only their positions differ).
  {
    constexpr int kChunks = kD / 8;
#pragma unroll
    for (int idx = tid; idx < kBlockM * kChunks; idx += kThreads) {
      const int r = idx / kChunks, c = idx % kChunks;
      const bool ok = m0 + r <= qb.m_last;
      const bf16* src = ok ? p.q + q_source_row(p, qb, m0 + r) * p.q_row +
                                 static_cast<int64_t>(qb.qhead(m0 + r)) * p.q_head + c * 8
                           : p.q;
      cp_async_16(sQ + swz<kD>(r, c), src, ok);
    }
  }
  load_tile<kD, kBlockN, kThreads>(sK, kbase, p.k_row, (nb_max - 1) * kBlockN, p.Tk, tid);
  cp_async_commit();

  // Visible key range of each of this thread's rows (rows g and g + 8 of each m-tile).
  int row_lo[kMT][2], row_hi[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = m0 + warp * 16 * kMT + mt * 16 + g + hr * 8;
      row_lo[mt][hr] = qb.key_lo(mk, r);
      row_hi[mt][hr] = qb.key_hi(mk, r);
    }

  float acc[kMT][kDT][4];
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][dt][e] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -kInf;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }

  // Per-lane ldmatrix coordinates.
  const int a_row = warp * 16 * kMT + (lane & 15);         // Q rows (A operand), + mt * 16
  const int a_chunk = lane >> 4;                           // + 2 * k-step
  const int kb_row = (lane & 7) + ((lane >> 4) << 3);      // K rows (B operand of Q K^T), + 16 * pair
  const int kb_chunk = (lane >> 3) & 1;                    // + 2 * k-step
  const int vb_row = (lane & 7) + (((lane >> 3) & 1) << 3);  // V rows (B of P V, transposed), + 16 * k-step
  const int vb_chunk = lane >> 4;                          // + 2 * pair

  for (int nb = nb_max - 1; nb >= nb_min; --nb) {
    const int n0 = nb * kBlockN;
    cp_async_wait<0>();
    __syncthreads();  // K[nb] (and Q) landed; every warp is done with V[nb + 1]
    load_tile<kD, kBlockN, kThreads>(sV, vbase, p.v_row, n0, p.Tk, tid);
    cp_async_commit();

    // S = Q K^T
    float s[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll kKsUnroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) ldmatrix_x4(a[mt], sQ + swz<kD>(a_row + mt * 16, 2 * ks + a_chunk));
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, sK + swz<kD>(np * 16 + kb_row, 2 * ks + kb_chunk));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_bf16(s[mt][2 * np], a[mt], b[0], b[1]);
          mma_bf16(s[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }

    cp_async_wait<0>();
    __syncthreads();  // V[nb] landed; every warp is done with K[nb]
    if (nb > nb_min) {
      load_tile<kD, kBlockN, kThreads>(sK, kbase, p.k_row, n0 - kBlockN, p.Tk, tid);
      cp_async_commit();
    }

    const bool full_tile = n0 >= full_lo && n0 + kBlockN <= full_hi;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
      softmax_tile<kNT>([&](int nt, int e) -> float& { return s[mt][nt][e]; }, row_max[mt], row_sum[mt], row_lo[mt],
                        row_hi[mt], full_tile, n0 + 2 * t4, p.scale_log2, [&](int hr, float corr) {
#pragma unroll
                          for (int dt = 0; dt < kDT; ++dt) {
                            acc[mt][dt][2 * hr] *= corr;
                            acc[mt][dt][2 * hr + 1] *= corr;
                          }
                        });

    // O += P V; P comes straight from the S accumulators (C layout of two n8 tiles = A layout of k16).
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        accum_to_a(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
      }
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, sV + swz<kD>(kk * 16 + vb_row, 2 * dp + vb_chunk));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_bf16(acc[mt][2 * dp], a[mt], b[0], b[1]);
          mma_bf16(acc[mt][2 * dp + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }

  // Epilogue: normalize and store.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = m0 + warp * 16 * kMT + mt * 16 + g + hr * 8;
      store_row<kD>(p, qb, r, t4, row_max[mt][hr], quad_sum(row_sum[mt][hr]),
                    [&](int dt, int e) { return acc[mt][dt][2 * hr + e]; });
    }
}

// ------------------------------------------------------------------------------------------------
// Decode (flash-decoding): split along the keys.
//
// Rows: the Tq queries of every query head of one GQA group are stacked (row r = head r / Tq of the
// group, query r % Tq), so one pass over a KV head's keys serves the whole group; 16 rows per warp
// (one m16 tile), R = group * Tq rows in ceil(R / 16) row blocks. The keys the Tq queries can see,
// [kb, ke), are cut into chunks of `chunk` keys; one warp (= one CTA) per (chunk, KV head, row
// block) runs the online softmax over its chunk with a 2-stage cp.async ring of K/V tiles and writes
// its unnormalized partial (max in log2 units, sum, accumulator) to the workspace. The mask is
// evaluated per element (decode is bound by reading K/V, not by arithmetic).

struct DecodeParams {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  int64_t q_row, q_head, k_row, k_head, v_row, v_head;
  int Tq, Tk, Hq, Hkv, group, rows;  // rows = group * Tq
  int kb, ke, chunk, num_splits;     // visible key range of the queries, keys per split
  float scale_log2;
  MaskParams mask;
  // Decode at a device-held position (Tq = 1): the query's position is *pos and kb, ke, mask are
  // found from it; k, v are then a KV cache with position p in row p, or p % ring (ring > 0: every
  // filled row visible, mask.Tk = min(p + 1, ring)). nullptr: everything as given.
  const int32_t* pos;
  int ring;
  const float* gate;  // decode_attention_gated_at: *gate == 0 sees no key (nullptr: no gate)
  float* part_acc;  // [num_splits][Hkv][rows][D]
  float* part_ml;   // [num_splits][Hkv][rows][2]: max (log2 units), sum
};

template <int kD>
struct DecodeConfig {
  static constexpr int kN = kD == 64 ? 64 : 32;  // keys per tile: 16 KB of K+V per stage
  static constexpr int kStages = 2;
  static constexpr int kSmemBytes = (16 + 2 * kStages * kN) * kD * 2;
};

template <int kD, class Mask>
__global__ void __launch_bounds__(32) flash_decode_split_kernel(const DecodeParams p) {
  constexpr int kN = DecodeConfig<kD>::kN, kStages = DecodeConfig<kD>::kStages;
  constexpr int kNT = kN / 8, kDT = kD / 8;
  constexpr float kInf = __builtin_huge_valf();
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t sQ = smem_addr(smem);
  const uint32_t sKV = sQ + 16 * kD * 2;  // stage s: K at sKV + s * 2 * kN * kD * 2, V after it
  constexpr uint32_t kTileBytes = kN * kD * 2;

  const int lane = threadIdx.x, g = lane >> 2, t4 = lane & 3;
  const int split = blockIdx.x, hk = blockIdx.y, r0 = blockIdx.z * 16;
  MaskParams mask = p.mask;
  int kb = p.kb, ke = p.ke;
  if (p.pos != nullptr) {
    const int64_t pos = *p.pos;
    if (p.ring > 0) {
      mask.Tk = static_cast<int>(min(pos + 1, static_cast<int64_t>(p.ring)));
    } else {
      mask.q_pos0 = pos;
    }
    kb = Mask::key_lo(mask, mask.q_pos0);
    ke = Mask::key_hi(mask, mask.q_pos0);
  }
  if (p.gate != nullptr && *p.gate == 0.f) ke = kb;  // an unrouted token: no tile is loaded
  const int c0 = kb + split * p.chunk;
  const int c1 = min(ke, c0 + p.chunk);
  const int ntiles = (c1 - c0 + kN - 1) / kN;

  // Q rows (zero-filled past the last row).
  {
    constexpr int kChunks = kD / 8;
#pragma unroll
    for (int idx = lane; idx < 16 * kChunks; idx += 32) {
      const int r = idx / kChunks, c = idx % kChunks;
      const int row = r0 + r;
      const bool ok = row < p.rows;
      const bf16* src = p.q;
      if (ok) {
        const int hq = hk * p.group + row / p.Tq, i = row % p.Tq;
        src = p.q + static_cast<int64_t>(i) * p.q_row + static_cast<int64_t>(hq) * p.q_head + c * 8;
      }
      cp_async_16(sQ + swz<kD>(r, c), src, ok);
    }
  }
  const bf16* kbase = p.k + static_cast<int64_t>(hk) * p.k_head;
  const bf16* vbase = p.v + static_cast<int64_t>(hk) * p.v_head;
  auto load_stage = [&](int tile, int stage) {
    const uint32_t sk = sKV + stage * 2 * kTileBytes;
    load_tile<kD, kN, 32>(sk, kbase, p.k_row, c0 + tile * kN, c1, lane);
    load_tile<kD, kN, 32>(sk + kTileBytes, vbase, p.v_row, c0 + tile * kN, c1, lane);
  };
  if (ntiles > 0) load_stage(0, 0);
  cp_async_commit();

  int row_lo[2], row_hi[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int row = r0 + g + hr * 8;
    const int64_t pos = mask.q_pos0 + (row < p.rows ? row % p.Tq : 0);
    row_lo[hr] = max(Mask::key_lo(mask, pos), c0);
    row_hi[hr] = min(Mask::key_hi(mask, pos), c1);
  }

  float acc[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;
  float row_max[2] = {-kInf, -kInf}, row_sum[2] = {0.f, 0.f};

  uint32_t qa[kD / 16][4];
  for (int tile = 0; tile < ntiles; ++tile) {
    if (tile + 1 < ntiles) {
      load_stage(tile + 1, (tile + 1) % kStages);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) ldmatrix_x4(qa[ks], sQ + swz<kD>(lane & 15, 2 * ks + (lane >> 4)));
    }
    const uint32_t sK = sKV + (tile % kStages) * 2 * kTileBytes, sV = sK + kTileBytes;
    const int n0 = c0 + tile * kN;

    float s[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks)
#pragma unroll
      for (int np = 0; np < kN / 16; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, sK + swz<kD>(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * ks + ((lane >> 3) & 1)));
        mma_bf16(s[2 * np], qa[ks], b[0], b[1]);
        mma_bf16(s[2 * np + 1], qa[ks], b[2], b[3]);
      }
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n0 + nt * 8 + 2 * t4 + (e & 1), hr = e >> 1;
        s[nt][e] = (col < row_lo[hr] || col >= row_hi[hr]) ? -kInf : s[nt][e] * p.scale_log2;
      }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = row_max[hr];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * hr], s[nt][2 * hr + 1]));
      mx = quad_max(mx);
      const float m_use = mx == -kInf ? 0.f : mx;
      const float corr = fast_exp2(row_max[hr] - m_use);
      row_max[hr] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        s[nt][2 * hr] = fast_exp2(s[nt][2 * hr] - m_use);
        s[nt][2 * hr + 1] = fast_exp2(s[nt][2 * hr + 1] - m_use);
        sum += s[nt][2 * hr] + s[nt][2 * hr + 1];
      }
      row_sum[hr] = row_sum[hr] * corr + sum;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        acc[dt][2 * hr] *= corr;
        acc[dt][2 * hr + 1] *= corr;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk) {
      uint32_t a[4];
      accum_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, sV + swz<kD>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4)));
        mma_bf16(acc[2 * dp], a, b[0], b[1]);
        mma_bf16(acc[2 * dp + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // this stage is refilled two tiles later
  }
  cp_async_wait<0>();

  // Partials: unnormalized accumulator, max (log2 units; -inf when nothing was visible), sum.
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int row = r0 + g + hr * 8;
    const float sum = quad_sum(row_sum[hr]);
    if (row >= p.rows) continue;
    const int64_t slot = (static_cast<int64_t>(split) * p.Hkv + hk) * p.rows + row;
    float* dst = p.part_acc + slot * kD + 2 * t4;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
      *reinterpret_cast<float2*>(dst + dt * 8) = make_float2(acc[dt][2 * hr], acc[dt][2 * hr + 1]);
    if (t4 == 0) *reinterpret_cast<float2*>(p.part_ml + slot * 2) = make_float2(row_max[hr], sum);
  }
}

struct CombineParams {
  const float* part_acc;
  const float* part_ml;
  bf16* o;
  float* lse;  // [Hq, Tq] or nullptr
  int64_t o_row, o_head;
  int Tq, Hkv, group, rows, num_splits;
};

// Block-wide reduction of one float per thread (blockDim.x = kThreads, a multiple of 32), the
// result in every thread. Op: max or sum.
template <int kThreads, bool kMax>
__device__ __forceinline__ float combine_block_reduce(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, u) : v + u;
  }
  constexpr int kWarps = kThreads / 32;
  if constexpr (kWarps > 1) {
    __syncthreads();  // scratch may still be read by a previous reduction
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    v = scratch[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) v = kMax ? fmaxf(v, scratch[w]) : v + scratch[w];
  }
  return v;
}

// Threads of the combine CTA: kD columns times combine_groups<kD> groups of splits.
template <int kD>
constexpr int combine_groups() {
  return 512 / kD;
}

// One CTA per (KV head, stacked row): o = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s.
// Everything is spread over the splits, which number up to a few hundred at long contexts: the
// split statistics are read by all threads at once, the weights kept in shared memory (num_splits
// floats, dynamic), and group j of kD threads accumulates splits j, j + groups, ... before the
// groups' sums are added in a fixed order (deterministic). A decode step's combine is latency-bound;
// one thread walking every split was slower than the split kernel itself.
template <int kD>
__global__ void __launch_bounds__(kD * combine_groups<kD>()) flash_decode_combine_kernel(const CombineParams p) {
  constexpr float kInf = __builtin_huge_valf();
  constexpr int kGroups = combine_groups<kD>(), kThreads = kD * kGroups;
  extern __shared__ float weight[];  // [num_splits]
  __shared__ float scratch[kThreads / 32];
  __shared__ float partial[kGroups][kD];
  const int hk = blockIdx.x / p.rows, row = blockIdx.x % p.rows;
  const int tid = threadIdx.x, d = tid % kD, grp = tid / kD;
  const int hq = hk * p.group + row / p.Tq, i = row % p.Tq;
  const int64_t stride = static_cast<int64_t>(p.Hkv) * p.rows;  // between splits
  const int64_t slot0 = static_cast<int64_t>(hk) * p.rows + row;
  float m = -kInf;
  for (int s = tid; s < p.num_splits; s += kThreads) m = fmaxf(m, p.part_ml[(slot0 + s * stride) * 2]);
  const float M = combine_block_reduce<kThreads, true>(m, scratch);
  float l = 0.f;
  for (int s = tid; s < p.num_splits; s += kThreads) {
    const int64_t slot = slot0 + s * stride;
    const float w = M != -kInf ? exp2f(p.part_ml[slot * 2] - M) : 0.f;  // 0 for splits that saw nothing
    weight[s] = w;
    l += w * p.part_ml[slot * 2 + 1];
  }
  const float L = combine_block_reduce<kThreads, false>(l, scratch);
  __syncthreads();  // weight[] complete
  float a = 0.f;
#pragma unroll 4
  for (int s = grp; s < p.num_splits; s += kGroups) a += weight[s] * p.part_acc[(slot0 + s * stride) * kD + d];
  partial[grp][d] = a;
  __syncthreads();
  if (grp != 0) return;
  a = 0.f;
#pragma unroll
  for (int j = 0; j < kGroups; ++j) a += partial[j][d];
  const bool seen = !(L == 0.f);  // a key was seen, or NaN (propagated)
  const float out = seen ? a / L : 0.f;
  p.o[static_cast<int64_t>(i) * p.o_row + static_cast<int64_t>(hq) * p.o_head + d] = __float2bfloat16_rn(out);
  if (p.lse != nullptr && d == 0)
    p.lse[static_cast<int64_t>(hq) * p.Tq + i] = seen ? M * 0.69314718055994531f + logf(L) : kInf;
}

}  // namespace rt::cuda::attn
