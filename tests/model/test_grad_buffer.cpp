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

// Each layer's q/k/v weight gradients (and bias gradients) lie as one stacked matrix (vector), and
// gate/up likewise, where their sizes are whole multiples of the buffer's 64-element alignment (as
// at every real Qwen shape; gqa7_hd64: head dim 64): what lets project_qkv_backward and
// mlp_backward fill them with one GEMM. A training step into the buffer gives the gradients of
// separate tensors (one GEMM per projection) up to fp32 rounding, for every parameter: with
// everything stacked (gqa7_hd64) and with the biases apart (gqa_untied_f32: head dim 16, so the
// k and v biases are padded), in both the plain and the L2A parallel sublayer.
TEST(GradBuffer, StacksProjectionGradientsAndMatchesSeparateTensors) {
  for (const char* model : {"gqa7_hd64", "gqa_untied_f32"})
    for (const char* backend : {"full_causal", "l2a_dense"}) {
      SCOPED_TRACE(std::string(model) + " " + backend);
      Options opts;
      if (std::string(backend) == "l2a_dense") {
        opts.set("layout", "parallel");
        opts.set("window", "4");
        opts.set("router", "fixed_rate");
        opts.set("sparsity", "0.5");
      }
      rt::test::TrainFixture f(rt::test::kModelsDir + model, backend, opts, DType::F32);
      const auto names = f.model->parameter_names();
      GradBuffer buf(*f.ops, *f.model, names);
      const bool all_stack = std::string(model) == "gqa7_hd64";
      for (int64_t l = 0; l < f.n_layers(); ++l) {
        const std::string pre = "model.layers." + std::to_string(l) + ".";
        auto grad = [&](const std::string& n) { return buf.grads().at(pre + n).view; };
        EXPECT_NE(stacked_rows({grad("self_attn.q_proj.weight"), grad("self_attn.k_proj.weight"),
                                grad("self_attn.v_proj.weight")}).data, nullptr) << "layer " << l;
        EXPECT_EQ(stacked_rows({grad("self_attn.q_proj.bias"), grad("self_attn.k_proj.bias"),
                                grad("self_attn.v_proj.bias")}).data != nullptr, all_stack) << "layer " << l;
        EXPECT_NE(stacked_rows({grad("mlp.gate_proj.weight"), grad("mlp.up_proj.weight")}).data, nullptr)
            << "layer " << l;
      }
      const std::vector<int32_t> ids = {3, 17, 5, 99, 42, 7, 64, 1, 50, 11, 8, 30};
      TrainContext tc;
      rt::test::run_sequence(f, ids, tc, buf.grads());
      const Qwen2Model::GradMap separate = rt::test::zero_grads(f, names);
      rt::test::run_sequence(f, ids, tc, separate);
      for (const auto& n : names) {
        const std::vector<double> a = host_doubles(*f.ops, buf.grads().at(n)), b = host_doubles(*f.ops, separate.at(n));
        double diff = 0, norm = 0;
        for (size_t i = 0; i < a.size(); ++i) {
          diff = std::max(diff, std::abs(a[i] - b[i]));
          norm = std::max(norm, std::abs(b[i]));
        }
        EXPECT_GT(norm, 0.0) << n << ": no gradient reached it";
        EXPECT_LE(diff, 1e-5 * norm) << n;
      }
    }
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
