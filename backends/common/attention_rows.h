// Which keys each query row of an attention call sees: the one definition of the masks of
// rt::AttentionSpec, shared by the CPU reference (backends/cpu), the CUDA flash kernels (forward,
// decode, backward: backends/cuda/attention) and the materialized dense path. Plain C++ when
// compiled by a host compiler, __host__ __device__ under nvcc.
//
// Two traits describe a call:
//   Mask  which keys a query at position `qpos` sees, as a key-index range [key_lo, key_hi), both
//         ends non-decreasing in the position (that is what lets a query block skip the KV tiles
//         none of its rows sees, and run the tiles every row sees without a per-element mask);
//           causal:  key position <= query position
//           window:  key position >  query position - window (W keys including the query itself;
//                    HF `sliding_window`, cuDNN's left bound, FlashAttention's window (W-1, 0))
//   Rows  where query row i sits: DenseRows at q_pos0 + i; RoutedRows (L2A) at q_pos0 + index[i],
//         a compact list of routed rows whose positions ascend, of which the first *count are
//         active (the count lives in device memory, so no host synchronization is needed).
//         Ascending positions keep key_lo / key_hi monotone in the row, so the tile skipping above
//         holds for routed rows too.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define RT_ATTN_HD __host__ __device__ __forceinline__
#else
#define RT_ATTN_HD inline
#endif

namespace rt::attn {

// What a mask needs to know; positions are 64-bit (q_pos0 / k_pos0 may be large in decode).
struct MaskParams {
  int64_t q_pos0 = 0;
  int64_t k_pos0 = 0;
  int64_t window = 0;  // > 0 only for windowed masks
  int Tk = 0;
};

RT_ATTN_HD int clamp_key(int64_t x, int Tk) { return x < 0 ? 0 : (x > Tk ? Tk : static_cast<int>(x)); }

// The two ends of the visible key range of a query at position qpos, clamped to [0, Tk].
RT_ATTN_HD int key_lo_at(const MaskParams& m, bool windowed, int64_t qpos) {
  return windowed ? clamp_key(qpos - m.window + 1 - m.k_pos0, m.Tk) : 0;
}
RT_ATTN_HD int key_hi_at(const MaskParams& m, bool causal, int64_t qpos) {
  return causal ? clamp_key(qpos - m.k_pos0 + 1, m.Tk) : m.Tk;
}

template <bool kCausal, bool kWindow>
struct BandMask {
  static constexpr bool causal = kCausal;
  static constexpr bool windowed = kWindow;
  RT_ATTN_HD static int key_lo(const MaskParams& m, int64_t qpos) { return key_lo_at(m, kWindow, qpos); }
  RT_ATTN_HD static int key_hi(const MaskParams& m, int64_t qpos) { return key_hi_at(m, kCausal, qpos); }
};
struct FullMask : BandMask<false, false> {};          // every key (encoder-style)
struct CausalMask : BandMask<true, false> {};        // full_causal, L2A global
struct SlidingWindowMask : BandMask<true, true> {};  // swa, L2A local: (qpos - W, qpos]
struct WindowOnlyMask : BandMask<false, true> {};    // window without the causal bound

// Query rows: DenseRows, row i at q_pos0 + i, every row active.
struct DenseRows {
  static constexpr bool routed = false;
  RT_ATTN_HD int64_t pos(const MaskParams& m, int i) const { return m.q_pos0 + i; }
  RT_ATTN_HD int active(int Tq) const { return Tq; }
};
// RoutedRows: row i at q_pos0 + index[i] (ascending), rows at or past *count inactive.
struct RoutedRows {
  static constexpr bool routed = true;
  const int32_t* index = nullptr;
  const int32_t* count = nullptr;
  RT_ATTN_HD int64_t pos(const MaskParams& m, int i) const { return m.q_pos0 + index[i]; }
  RT_ATTN_HD int active(int Tq) const {
    const int n = *count;
    return n < 0 ? 0 : (n > Tq ? Tq : n);
  }
};

// The query rows [begin, end) of a call (of Tq active rows) that see at least one key of
// [n0, n1): both ends of a row's key range are monotone in the row, so two binary searches. The
// backward kernels' key blocks take their query tiles from it.
template <class Mask, class Rows>
RT_ATTN_HD void query_range(const MaskParams& mk, const Rows& rows, int Tq, int n0, int n1, int& begin, int& end) {
  // first row with key_hi > n0
  int lo = 0, hi = Tq;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (Mask::key_hi(mk, rows.pos(mk, mid)) > n0) hi = mid;
    else lo = mid + 1;
  }
  begin = lo;
  // first row with key_lo >= n1
  lo = begin, hi = Tq;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (Mask::key_lo(mk, rows.pos(mk, mid)) >= n1) hi = mid;
    else lo = mid + 1;
  }
  end = lo;
}

// Whether the key blocks that see a query tile are one run [first_key_block, last]: so for every
// mask over dense rows (consecutive positions: consecutive rows' key ranges overlap or touch) and
// for unwindowed masks over routed rows (every row's range starts at key 0); not for a window over
// routed rows, whose positions may jump past the window. The deterministic fused dQ of the Hopper
// backward (flash_bwd_dkdv_hopper_tall.cuh) adds a tile's partials in key-block order relying on it.
template <class Mask, class Rows>
inline constexpr bool contiguous_key_blocks = !(Rows::routed && Mask::windowed);

// The first key block (of block_n keys) that sees the query tile starting at row `row0` (an active
// row): its first row's, as key_lo is monotone in the row.
template <class Mask, class Rows>
RT_ATTN_HD int first_key_block(const MaskParams& mk, const Rows& rows, int row0, int block_n) {
  return Mask::key_lo(mk, rows.pos(mk, row0)) / block_n;
}

// The order of a dK/dV CTA's items in the Hopper backward (flash_bwd_dkdv_hopper.cuh): (query
// head, query tile) pairs over its `heads` heads of the GQA group and the `m_steps` query tiles
// that see its keys, item `it` as offsets from the first head and tile. Heads outer, tiles
// ascending inner; with the fused dQ (which adds a tile's partials in key-block order, the CTA of
// key block n waiting for block n - 1's turn on every tile they share) tiles descending, and:
// - tiles outer, heads inner where a key block sees fewer tiles than the one before (causal):
//   block n then runs block n - 1's items in the same order and waits about one item for it
//   (heads outer made the wait grow by an item per head along a chain of key blocks, which held
//   their SMs for the whole chain: measured 1.3x slower than the dQ pass at 16K causal);
// - heads outer where every key block sees as many tiles (a window): block n then runs a shared
//   item one place after block n - 1, so neighbouring blocks reuse the Q, dO and dQ tiles from
//   L2 at once (tiles outer put 7 items between the reuses: ~60 MB of tiles in flight at 32K).
// tests/backends/test_key_block_order.cpp simulates both.
template <class Mask, bool kFusedDq>
inline constexpr bool dkdv_tiles_outer = kFusedDq && !Mask::windowed;

template <class Mask, bool kFusedDq>
RT_ATTN_HD void dkdv_item(int it, int heads, int m_steps, int& head, int& tile) {
  constexpr bool kTilesOuter = dkdv_tiles_outer<Mask, kFusedDq>;
  head = kTilesOuter ? it % heads : it / m_steps;
  const int k = kTilesOuter ? it / heads : it % m_steps;
  tile = kFusedDq ? m_steps - 1 - k : k;
}

// Which key block and which chain (a KV head and a share of its query heads: the CTAs whose fused
// dQ adds form one turn order) the CTA `b` of the Hopper dK/dV kernels' 1-D grid takes. Chains are
// innermost: the CTA of key block n waits for that of block n - 1 of its chain, launched `chains`
// CTAs earlier (so never for one not yet launched), and the first wave holds `chains` short turn
// orders instead of one long one (KV heads outermost made the first wave at 0.5B one order of
// 132 CTAs, each starting its turns a reduction's latency after the one before).
RT_ATTN_HD void dkdv_cta(int b, int chains, int& key_block, int& chain) {
  key_block = b / chains;
  chain = b % chains;
}

// The same mask with its kind chosen at run time (CPU loops, the materialized dense path): row i
// of the call sees keys [lo(i), hi(i)). `index` non-null: routed rows (positions q_pos0 + index[i]).
struct KeyRange {
  bool causal = true;
  MaskParams m;
  const int32_t* index = nullptr;

  RT_ATTN_HD int64_t pos(int64_t i) const { return m.q_pos0 + (index ? index[i] : i); }
  RT_ATTN_HD int64_t lo(int64_t i) const { return key_lo_at(m, m.window > 0, pos(i)); }
  RT_ATTN_HD int64_t hi(int64_t i) const { return key_hi_at(m, causal, pos(i)); }
};

}  // namespace rt::attn
