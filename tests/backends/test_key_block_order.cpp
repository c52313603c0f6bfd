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

}  // namespace
