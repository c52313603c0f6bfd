// AdamWOptimizer::first_nonfinite_grad: which tensor a skipped (non-finite) training step names. The
// gradients are checked in the order backpropagation produces them (lm_head, final norm, layers from
// the last to the first, embedding), so the tensor named is where the NaN/Inf appeared.
#include <limits>

#include "train/adamw_optimizer.h"
#include "train_test_util.h"

namespace {

using namespace rt;
using namespace rt::test;

TEST(NonFiniteGrad, NamesTheFirstInBackwardOrder) {
  TrainFixture f(kModelsDir + "gqa_untied_f32", "full_causal", Options{}, DType::F32);
  AdamWOptimizer opt(*f.ops, *f.model, f.model->parameter_names(), AdamWSettings{});
  EXPECT_FALSE(opt.first_nonfinite_grad().has_value());
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  auto set = [&](const std::string& name, int64_t i, double v) { write_elem(opt.grads().at(name).view, i, v); };
  auto first = [&] {
    const auto b = opt.first_nonfinite_grad();
    return b ? b->name + "[" + std::to_string(b->index) + "]" : std::string("none");
  };
  set("model.layers.0.mlp.up_proj.weight", 5, nan);
  EXPECT_EQ(first(), "model.layers.0.mlp.up_proj.weight[5]");
  EXPECT_FALSE(std::isfinite(opt.grad_norm()));
  set("model.embed_tokens.weight", 0, nan);  // the embedding's gradient comes last
  EXPECT_EQ(first(), "model.layers.0.mlp.up_proj.weight[5]");
  set("model.layers.1.self_attn.q_proj.weight", 3, inf);  // a later layer's comes first
  EXPECT_EQ(first(), "model.layers.1.self_attn.q_proj.weight[3]");
  set("model.norm.weight", 2, -inf);
  EXPECT_EQ(first(), "model.norm.weight[2]");
  set("lm_head.weight", 7, nan);
  EXPECT_EQ(first(), "lm_head.weight[7]");
  EXPECT_FALSE(opt.first_nonfinite_grad()->norm_overflow);

  // Finite elements whose squares overflow float: the global norm is inf, and the tensor is named.
  opt.zero_grad();
  EXPECT_FALSE(opt.first_nonfinite_grad().has_value());
  set("model.layers.0.input_layernorm.weight", 1, 3e19);
  set("model.layers.0.input_layernorm.weight", 4, -3e19);
  EXPECT_FALSE(std::isfinite(opt.grad_norm()));
  const auto b = opt.first_nonfinite_grad();
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->name, "model.layers.0.input_layernorm.weight");
  EXPECT_TRUE(b->norm_overflow);
  EXPECT_EQ(b->index, 1);
}

}  // namespace
