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

TEST(TensorView, ColsSlicesTheLastDimension) {
  std::vector<float> buf(6 * 10);
  TensorView all = TensorView::contiguous(buf.data(), DType::F32, Device::CPU, {6, 10});
  TensorView right = all.cols(4, 10);
  EXPECT_EQ(right.data, buf.data() + 4);
  EXPECT_EQ(right.shape[0], 6);
  EXPECT_EQ(right.shape[1], 6);
  EXPECT_EQ(right.stride[0], 10);
  EXPECT_FALSE(right.is_contiguous());
  EXPECT_FALSE(rt::views_overlap(all.cols(0, 4), right));
  EXPECT_THROW(all.cols(4, 11), std::out_of_range);
  EXPECT_THROW(all.cols(5, 4), std::out_of_range);
}

// q/k/v (and gate/up) weights stored as consecutive rows are seen as one matrix; anything else
// (a gap, another width, another dtype, the wrong order) is not.
TEST(StackedRows, ConsecutiveRowsOnly) {
  std::vector<float> buf(20 * 8);
  TensorView all = TensorView::contiguous(buf.data(), DType::F32, Device::CPU, {20, 8});
  TensorView q = all.rows(0, 14), k = all.rows(14, 16), v = all.rows(16, 18);
  TensorView qkv = rt::stacked_rows({q, k, v});
  EXPECT_EQ(qkv.data, buf.data());
  EXPECT_EQ(qkv.shape[0], 18);
  EXPECT_EQ(qkv.shape[1], 8);
  EXPECT_EQ(qkv.stride[0], 8);
  EXPECT_EQ(rt::stacked_rows({q, v}).data, nullptr);     // a gap
  EXPECT_EQ(rt::stacked_rows({k, q}).data, nullptr);     // wrong order
  EXPECT_EQ(rt::stacked_rows({q, TensorView{}}).data, nullptr);
  TensorView narrow = TensorView::contiguous(buf.data() + 14 * 8, DType::F32, Device::CPU, {2, 4});
  EXPECT_EQ(rt::stacked_rows({q, narrow}).data, nullptr);  // another width
  TensorView other = k;
  other.dtype = DType::I32;
  EXPECT_EQ(rt::stacked_rows({q, other}).data, nullptr);
  // Biases: 1-D pieces.
  std::vector<float> b(18);
  TensorView ball = TensorView::contiguous(b.data(), DType::F32, Device::CPU, {18});
  EXPECT_EQ(rt::stacked_rows({ball.rows(0, 14), ball.rows(14, 16), ball.rows(16, 18)}).shape[0], 18);
}

}  // namespace
