// SDK tensor views: row slicing, reshaping, and the overlap test ops use to refuse aliasing.
#include <gtest/gtest.h>

#include <vector>

#include "rt/sdk/tensor.h"

namespace {

using rt::DType;
using rt::Device;
using rt::TensorView;

// [T, H, D] view of heads [h0, h0 + H) inside a fused [T, total, D] buffer.
TensorView heads(std::vector<float>& buf, int64_t T, int64_t total, int64_t h0, int64_t H, int64_t D) {
  TensorView v = TensorView::contiguous(buf.data() + h0 * D, DType::F32, Device::CPU, {T, H, D});
  v.stride = {total * D, D, 1, 0};
  return v;
}

TEST(ViewsOverlap, FusedQkvSlicesAreDisjoint) {
  std::vector<float> buf(10 * 18 * 8);
  TensorView q = heads(buf, 10, 18, 0, 14, 8), k = heads(buf, 10, 18, 14, 2, 8), v = heads(buf, 10, 18, 16, 2, 8);
  EXPECT_FALSE(rt::views_overlap(q, k));
  EXPECT_FALSE(rt::views_overlap(k, v));
  EXPECT_FALSE(rt::views_overlap(v, q));
  EXPECT_TRUE(rt::views_overlap(q, q));
  TensorView q_shifted = heads(buf, 10, 18, 13, 2, 8);  // shares head 13 with q
  EXPECT_TRUE(rt::views_overlap(q, q_shifted));
}

TEST(ViewsOverlap, RowsAndBuffers) {
  std::vector<float> buf(64);
  TensorView all = TensorView::contiguous(buf.data(), DType::F32, Device::CPU, {8, 8});
  EXPECT_FALSE(rt::views_overlap(all.rows(0, 4), all.rows(4, 8)));
  EXPECT_TRUE(rt::views_overlap(all.rows(0, 5), all.rows(4, 8)));
  std::vector<float> other(64);
  EXPECT_FALSE(rt::views_overlap(all, TensorView::contiguous(other.data(), DType::F32, Device::CPU, {8, 8})));
  EXPECT_FALSE(rt::views_overlap(all.rows(3, 3), all));  // empty views overlap nothing
}

TEST(TensorView, ReshapeAndRowsCheckBounds) {
  std::vector<float> buf(24);
  TensorView t = TensorView::contiguous(buf.data(), DType::F32, Device::CPU, {2, 3, 4});
  EXPECT_EQ(t.reshaped({6, 4}).shape[0], 6);
  EXPECT_THROW(t.reshaped({5, 4}), std::invalid_argument);
  EXPECT_THROW(t.rows(1, 3), std::out_of_range);
  EXPECT_EQ(t.rows(1, 2).ptr<float>(), buf.data() + 12);
}

}  // namespace
