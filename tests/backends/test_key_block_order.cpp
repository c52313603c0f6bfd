// The order in which the Hopper backward's fused dQ adds a query tile's partials
// (flash_bwd_dkdv_hopper_tall.cuh, the default at head dim 64): the CTA of key block n waits for
// the tile's counter to reach n - first_key_block(tile), so the key blocks that process a tile
// must be exactly one run starting there, or a CTA waits for a turn that never comes (or two add
// at once). The blocks and tiles here are computed as the kernel computes them (query_range, then
// whole tiles of 128 rows), for every mask over dense rows and the unwindowed masks over routed
// rows, on random shapes, offsets and windows; and a window over routed rows, which the fused dQ
// refuses, is shown to break the run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/attention_rows.h"

namespace {

using namespace rt::attn;
constexpr int kBlockN = 128, kBlockM = 128;

// For each query tile, the key blocks that process it, in block order.
template <class Mask, class Rows>
std::vector<std::vector<int>> tile_blocks(const MaskParams& m, const Rows& rows, int Tq) {
  const int active = rows.active(Tq);
  std::vector<std::vector<int>> blocks(static_cast<size_t>((Tq + kBlockM - 1) / kBlockM));
  for (int n = 0; n * kBlockN < m.Tk; ++n) {
    int begin = 0, end = 0;
    query_range<Mask>(m, rows, active, n * kBlockN, std::min(n * kBlockN + kBlockN, m.Tk), begin, end);
    if (begin >= end) continue;
    for (int t = begin / kBlockM; t < (end + kBlockM - 1) / kBlockM; ++t) blocks[static_cast<size_t>(t)].push_back(n);
  }
  return blocks;
}

// Whether every tile's blocks are the run first_key_block, first_key_block + 1, ...
template <class Mask, class Rows>
bool runs_from_first_block(const MaskParams& m, const Rows& rows, int Tq, std::string* why) {
  const auto blocks = tile_blocks<Mask>(m, rows, Tq);
  for (size_t t = 0; t < blocks.size(); ++t) {
    if (blocks[t].empty()) continue;
    const int first = first_key_block<Mask>(m, rows, static_cast<int>(t) * kBlockM, kBlockN);
    for (size_t i = 0; i < blocks[t].size(); ++i)
      if (blocks[t][i] != first + static_cast<int>(i)) {
        *why = "tile " + std::to_string(t) + ": block " + std::to_string(i) + " of its run is " +
               std::to_string(blocks[t][i]) + ", expected " + std::to_string(first + static_cast<int>(i));
        return false;
      }
  }
  return true;
}

struct Shape {
  MaskParams m;
  int Tq = 0;
};

Shape random_shape(std::mt19937_64& rng) {
  auto pick = [&](int lo, int hi) { return static_cast<int>(lo + rng() % static_cast<uint64_t>(hi - lo + 1)); };
  Shape s;
  s.Tq = pick(1, 1500);
  s.m.Tk = pick(1, 1700);
  // Queries after the keys (a prefix in the cache), level with them, or before the first key.
  const int shift = pick(0, 2) == 0 ? -pick(0, 300) : pick(0, 400);
  s.m.k_pos0 = pick(0, 50);
  s.m.q_pos0 = std::max<int64_t>(0, s.m.k_pos0 + shift);
  static const int kWindows[] = {1, 2, 63, 128, 129, 300, 1024};
  s.m.window = kWindows[rng() % 7];
  return s;
}

template <class Mask>
void check_dense(const char* name) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 400; ++i) {
    Shape s = random_shape(rng);
    if (!Mask::windowed) s.m.window = 0;
    std::string why;
    EXPECT_TRUE(runs_from_first_block<Mask>(s.m, DenseRows{}, s.Tq, &why))
        << name << ": Tq " << s.Tq << " Tk " << s.m.Tk << " q_pos0 " << s.m.q_pos0 << " k_pos0 " << s.m.k_pos0
        << " window " << s.m.window << ": " << why;
  }
}

// Routed rows: ascending positions, a random subset of [0, T) at a random density, count <= Tq.
template <class Mask>
void check_routed(const char* name) {
  std::mt19937_64 rng(11);
  for (int i = 0; i < 400; ++i) {
    Shape s = random_shape(rng);
    s.m.window = 0;
    s.m.q_pos0 = 0;
    const int T = s.m.Tk + static_cast<int>(s.m.k_pos0);
    const double density = 0.02 + 0.98 * static_cast<double>(rng() % 1000) / 1000.0;
    std::vector<int32_t> index;
    for (int p = 0; p < T; ++p)
      if (static_cast<double>(rng() % 1000000) / 1e6 < density) index.push_back(p);
    // The active rows are the ascending positions; the capacity runs past them (rows that hold
    // anything, here 0).
    const int32_t active = static_cast<int32_t>(index.size());
    const int Tq = std::max(active + static_cast<int>(rng() % 200), 1);
    index.resize(static_cast<size_t>(Tq), 0);
    const RoutedRows rows{index.data(), &active};
    std::string why;
    EXPECT_TRUE(runs_from_first_block<Mask>(s.m, rows, Tq, &why))
        << name << ": Tq " << Tq << " active " << active << " Tk " << s.m.Tk << " k_pos0 " << s.m.k_pos0 << ": "
        << why;
  }
}

TEST(KeyBlockOrder, DenseRowsEveryMask) {
  check_dense<CausalMask>("causal");
  check_dense<SlidingWindowMask>("sliding window");
  check_dense<FullMask>("full");
  check_dense<WindowOnlyMask>("window only");
}

TEST(KeyBlockOrder, RoutedRowsUnwindowedMasks) {
  static_assert(contiguous_key_blocks<CausalMask, RoutedRows> && contiguous_key_blocks<FullMask, RoutedRows>);
  check_routed<CausalMask>("causal");
  check_routed<FullMask>("full");
}

// Why the fused dQ refuses a window over routed rows: two routed rows of one tile far apart see
// key blocks with a gap between them.
TEST(KeyBlockOrder, WindowOverRoutedRowsCanBreakTheRun) {
  static_assert(!contiguous_key_blocks<SlidingWindowMask, RoutedRows>);
  MaskParams m;
  m.Tk = 2048;
  m.window = 128;
  std::vector<int32_t> index = {100, 1900};  // keys (-28, 100] and (1772, 1900]: blocks 0 and 13-14
  const int32_t count = 2;
  std::string why;
  EXPECT_FALSE(runs_from_first_block<SlidingWindowMask>(m, RoutedRows{index.data(), &count}, 2, &why));
  EXPECT_NE(why.find("tile 0"), std::string::npos) << why;
}

// The fused dQ's item order (dkdv_item): the CTAs of one KV head's key blocks simulated in
// lockstep (every CTA resident, an item a time unit), the CTA of block n waiting on every tile it
// shares with block n - 1 until block n - 1 has added its partial. Two properties:
// - waits do not pile up along the chain: block n finishes at most a few items after its own
//   item count plus one item per earlier block (its first tile's turn comes after theirs);
// - neighbouring blocks use a shared (head, tile) close together in time, so its Q, dO and dQ
//   tiles come from L2: what the order per mask is chosen for.
struct ChainStats {
  int max_pileup = 0;     // max over blocks of finish - items - block index
  int max_reuse_gap = 0;  // max over shared items of (time in block n) - (time in block n - 1)
};

// order(it, heads, m_steps, head, tile offset), as dkdv_item.
template <class Mask, class Order>
ChainStats simulate_chain(const MaskParams& m, int Tq, int heads, Order order) {
  ChainStats st;
  const int tiles = (Tq + kBlockM - 1) / kBlockM;
  std::vector<int> prev_done;  // when block n - 1 added (head, tile): [head * tiles + tile], -1: never
  for (int n = 0; n * kBlockN < m.Tk; ++n) {
    int begin = 0, end = 0;
    query_range<Mask>(m, DenseRows{}, Tq, n * kBlockN, std::min(n * kBlockN + kBlockN, m.Tk), begin, end);
    const int mb_first = begin / kBlockM;
    const int m_steps = begin < end ? (end + kBlockM - 1) / kBlockM - mb_first : 0;
    std::vector<int> done(static_cast<size_t>(heads * tiles), -1);
    int t = 0;
    for (int it = 0; it < m_steps * heads; ++it) {
      int h = 0, k = 0;
      order(it, heads, m_steps, h, k);
      const int tile = mb_first + k;
      const size_t key = static_cast<size_t>(h * tiles + tile);
      // Block n - 1 processes this tile too iff the tile's run of key blocks starts before n.
      if (first_key_block<Mask>(m, DenseRows{}, tile * kBlockM, kBlockN) < n) {
        EXPECT_GE(prev_done[key], 0) << "block " << n << " waits for an item block " << n - 1 << " never runs";
        t = std::max(t, prev_done[key]);
        st.max_reuse_gap = std::max(st.max_reuse_gap, t + 1 - prev_done[key]);
      }
      done[key] = ++t;
    }
    st.max_pileup = std::max(st.max_pileup, t - m_steps * heads - n);
    prev_done = std::move(done);
  }
  return st;
}

TEST(KeyBlockOrder, FusedDqOrderNeitherPilesUpNorSpreadsReuse) {
  const int Tq = 16384, heads = 7;  // Qwen2.5-0.5B's GQA group
  MaskParams m;
  m.Tk = Tq;
  auto heads_outer = [](int it, int hs, int steps, int& h, int& k) { h = it / steps, k = steps - 1 - it % steps; };
  auto tiles_outer = [](int it, int hs, int, int& h, int& k) { h = it % hs, k = -1 - it / hs; };
  auto descending = [&](auto inner) {  // k above counts from the last tile: k = m_steps + k
    return [inner](int it, int hs, int steps, int& h, int& k) {
      inner(it, hs, steps, h, k);
      if (k < 0) k += steps;
    };
  };

  const ChainStats causal = simulate_chain<CausalMask>(m, Tq, heads, dkdv_item<CausalMask, true>);
  EXPECT_LE(causal.max_pileup, 1);
  EXPECT_LE(causal.max_reuse_gap, 1);
  // heads outer, as the first version ran it: waits pile up along the chain
  EXPECT_GT(simulate_chain<CausalMask>(m, Tq, heads, descending(heads_outer)).max_pileup, 100);

  for (int window : {2048, 2000, 300}) {
    SCOPED_TRACE("window " + std::to_string(window));
    m.window = window;
    const ChainStats band = simulate_chain<SlidingWindowMask>(m, Tq, heads, dkdv_item<SlidingWindowMask, true>);
    EXPECT_LE(band.max_pileup, heads);
    EXPECT_LE(band.max_reuse_gap, window % kBlockN == 0 ? 1 : heads);
    // tiles outer: a window's shared items a GQA group apart
    EXPECT_GE(simulate_chain<SlidingWindowMask>(m, Tq, heads, descending(tiles_outer)).max_reuse_gap, heads);
  }
}

// The Hopper dK/dV kernels' grid (dkdv_cta): every (key block, chain) exactly once, the CTA a
// block waits for (block n - 1 of its chain) launched earlier, and the first wave split into
// `chains` short turn orders. In a wave of CTAs that start together, the k-th CTA of a turn order
// starts its turns k reductions late; with KV heads outermost, as the first version launched, the
// first wave at 0.5B (2 KV heads, 132 SMs) was one order of 132.
TEST(KeyBlockOrder, DkDvGridInterleavesTheTurnOrders) {
  for (int chains : {1, 2, 7, 14}) {
    SCOPED_TRACE("chains " + std::to_string(chains));
    const int n_blocks = 37, ctas = n_blocks * chains;
    std::vector<int> launched_at(static_cast<size_t>(ctas), -1);  // per (key block, chain)
    for (int b = 0; b < ctas; ++b) {
      int n = -1, c = -1;
      dkdv_cta(b, chains, n, c);
      ASSERT_TRUE(n >= 0 && n < n_blocks && c >= 0 && c < chains);
      int& at = launched_at[static_cast<size_t>(n * chains + c)];
      EXPECT_EQ(at, -1) << "block " << n << " of chain " << c << " taken twice";
      at = b;
      if (n > 0) {  // the block it waits for was launched before
        const int pred = launched_at[static_cast<size_t>((n - 1) * chains + c)];
        EXPECT_TRUE(pred >= 0 && pred < b) << "block " << n << " of chain " << c;
      }
    }
    for (int at : launched_at) EXPECT_GE(at, 0);  // every (key block, chain) taken
    // the longest turn order among the first 132 CTAs
    const int wave = std::min(132, ctas);
    std::vector<int> per_chain(static_cast<size_t>(chains), 0);
    for (int b = 0; b < wave; ++b) {
      int n = 0, c = 0;
      dkdv_cta(b, chains, n, c);
      ++per_chain[static_cast<size_t>(c)];
    }
    EXPECT_EQ(*std::max_element(per_chain.begin(), per_chain.end()), (wave + chains - 1) / chains);
  }
}

}  // namespace
