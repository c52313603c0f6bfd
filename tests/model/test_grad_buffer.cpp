// GradBuffer and OverlappedGradSum (data parallelism's gradient sums): the gradients lie in the
// order backpropagation finishes them, each stage's prefix is exactly the tensors final after it,
// and the overlapped sum covers the buffer once, in the same buckets as the plain sum, never
// touching a range before the backward reported it final.
#include <gtest/gtest.h>

#include <mutex>

#include "dist/process_group.h"
#include "train/grad_buffer.h"
#include "train_test_util.h"

namespace {

using namespace rt;

// A world of two identical ranks: a sum doubles every element. Records the ranges it was given.
class DoublingGroup final : public dist::ProcessGroup {
 public:
  explicit DoublingGroup(TensorView all) : all_(all) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void allreduce_sum(TensorView t) override {
    std::lock_guard<std::mutex> lock(mu_);
    float* p = t.ptr<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] *= 2.f;
    const int64_t begin = p - all_.ptr<float>();
    ranges.emplace_back(begin, begin + t.numel());
    limits.push_back(limit);
  }
  void broadcast(TensorView, int) override {}
  void barrier() override {}
  std::mutex mu_;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  std::vector<int64_t> limits;  // what was final when each range was summed
  int64_t limit = 0;

 private:
  TensorView all_;
};

TEST(GradBuffer, BackwardOrderAndStages) {
  rt::test::TrainFixture f(rt::test::kModelsDir + "gqa_untied_f32", "full_causal", Options{}, DType::F32);
  const auto names = f.model->parameter_names();
  GradBuffer g(*f.ops, *f.model, names);
  const int L = static_cast<int>(f.model->dims().n_layers);
  auto offset = [&](const std::string& n) { return g.grads().at(n).view.ptr<float>() - g.buffer().ptr<float>(); };
  // lm_head and the final norm first, the embedding last, the last layer before the first.
  EXPECT_LT(offset("lm_head.weight"), offset("model.layers.1.mlp.down_proj.weight"));
  EXPECT_LT(offset("model.layers.1.self_attn.q_proj.weight"), offset("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_LT(offset("model.layers.0.mlp.up_proj.weight"), offset("model.embed_tokens.weight"));
  // A stage's prefix ends exactly after its own tensors.
  for (const auto& n : names) {
    const int64_t end = offset(n) + g.grads().at(n).view.numel();
    const int stage = n.rfind("model.layers.1.", 0) == 0 ? 1 : n.rfind("model.layers.0.", 0) == 0 ? 0
                      : n == "model.embed_tokens.weight"                                           ? -1
                                                                                                   : L;
    EXPECT_LE(end, g.final_after(stage)) << n;
    if (stage < L) EXPECT_GT(offset(n), g.final_after(stage + 1) - 1) << n;
  }
  EXPECT_EQ(g.final_after(-1), g.buffer().numel());
}

TEST(GradBuffer, OverlappedSumCoversOnceAfterEachStage) {
  rt::test::TrainFixture f(rt::test::kModelsDir + "gqa_untied_f32", "full_causal", Options{}, DType::F32);
  GradBuffer g(*f.ops, *f.model, f.model->parameter_names());
  float* p = g.buffer().ptr<float>();
  for (int64_t i = 0; i < g.buffer().numel(); ++i) p[i] = static_cast<float>(i % 7);
  DoublingGroup group(g.buffer());
  {
    OverlappedGradSum sum(g, group, /*bucket=*/64);  // small buckets: most are summed mid-backward
    const int L = static_cast<int>(f.model->dims().n_layers);
    for (int stage = L; stage >= -1; --stage) {
      {
        std::lock_guard<std::mutex> lock(group.mu_);
        group.limit = g.final_after(stage);
      }
      sum.stage_done(stage);
    }
    sum.finish();
  }
  for (int64_t i = 0; i < g.buffer().numel(); ++i) ASSERT_EQ(p[i], 2.f * static_cast<float>(i % 7)) << i;
  int64_t covered = 0;
  for (size_t k = 0; k < group.ranges.size(); ++k) {
    EXPECT_EQ(group.ranges[k].first, covered);
    EXPECT_LE(group.ranges[k].second, group.limits[k]);
    // The plain sum's buckets: 64 elements from 0, the tail shorter.
    EXPECT_EQ(group.ranges[k].first % 64, 0);
    EXPECT_TRUE(group.ranges[k].second - group.ranges[k].first == 64 || group.ranges[k].second == g.buffer().numel());
    covered = group.ranges[k].second;
  }
  EXPECT_EQ(covered, g.buffer().numel());
  EXPECT_GT(group.ranges.size(), 2u);
}

}  // namespace
