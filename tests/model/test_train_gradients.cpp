// Whole-model gradients by finite differences in fp64 (make_cpu_ops(F64)): every parameter kind
// of the plain model (full_causal, swa) and of both L2A layouts, with the regularizer on and off,
// force_local, a rope_theta override, and gradient checkpointing giving identical gradients; the
// same on Qwen3 (QK-norm weights, local and global, and no qkv bias).
//
// The straight-through estimator: with hard decisions the loss is piecewise constant in the
// router weights, so FD cannot see the surrogate gradient. The router cases therefore wrap the
// real linear_sigmoid router so that it outputs d = p (a smooth gate): then the exact derivative
// of the loss w.r.t. every parameter is what the STE passes back (dL/dd + the regularizer's dL/dp,
// times dp/dz, and on through the router's input to everything upstream), and FD checks the
// plugin's gate gradient, masking and regularizer together with the router's own backward. With
// the hard router, the surrogate path reaches every parameter upstream of a router, so FD can
// only check those downstream of all of them (the last layer's global half, its MLP, the final
// norm and the head): d does not move under a 1e-6 perturbation.
#include <algorithm>

#include "train_test_util.h"

namespace {

using namespace rt;
using rt::test::TrainFixture;

// d = p: the real router's p, used as a smooth gate.
class SoftGate final : public rt::test::WrappedRouter {
 public:
  using WrappedRouter::WrappedRouter;

 protected:
  void adjust(const LayerContext& ctx, TensorView p, TensorView d) override { ctx.ops->copy(p, d); }
};

struct Case {
  std::string name, backend;
  std::vector<std::pair<std::string, std::string>> options;
  bool soft_router = false;
  bool recompute = false;
  std::string model = "gqa_untied_f32";  // qwen3_hd16: QK-norm (its weights and backward), no qkv bias
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

// Parameters no router's decision depends on: FD sees exactly the analytic gradient for them
// even with hard decisions.
bool downstream_of_routers(const std::string& n, int64_t layers,
                           const std::vector<std::pair<std::string, std::string>>& options) {
  bool parallel = false;
  for (const auto& [k, v] : options) parallel = parallel || (k == "layout" && v == "parallel");
  const std::string last = "model.layers." + std::to_string(layers - 1) + ".";
  if (n == "model.norm.weight" || n == "lm_head.weight") return true;
  if (n.rfind(last, 0) != 0) return false;
  const std::string rest = n.substr(last.size());
  return rest.rfind("mlp.", 0) == 0 || rest == "post_attention_layernorm.weight" ||
         rest.rfind(parallel ? "self_attn." : "global_attn.", 0) == 0;
}

class TrainGradients : public ::testing::TestWithParam<Case> {};

TEST_P(TrainGradients, MatchFiniteDifferences) {
  const Case& c = GetParam();
  Options opts;
  for (const auto& [k, v] : c.options) opts.set(k, v);
  std::function<std::unique_ptr<Router>(Router*)> wrap;
  if (c.soft_router) wrap = [](Router* r) { return std::make_unique<SoftGate>(r); };
  TrainFixture f(rt::test::kModelsDir + c.model, c.backend, opts, DType::F64, wrap);
  const auto names = f.model->parameter_names();
  for (const auto& n : names)
    if (n.find("router.weight") != std::string::npos)  // decisions mixed, z away from the threshold
      rt::test::randomize_parameter(f, n, std::hash<std::string>{}(n), 0.15);

  const std::vector<int32_t> ids = {5, 77, 3, 250, 18, 18, 140, 9, 201, 66, 31};
  TrainContext tc;
  tc.step = 4;
  tc.total_steps = 10;
  tc.warmup_steps = 2;
  tc.loss_scale = 0.5f;
  auto grads = rt::test::zero_grads(f, names);
  const auto base = rt::test::run_sequence(f, ids, tc, grads, c.recompute);
  ASSERT_TRUE(std::isfinite(base.total()));

  std::mt19937_64 rng(7);
  std::vector<double> analytic, numeric;
  Qwen2Model::GradMap none;
  for (const auto& n : names) {
    const bool is_router = n.find("router.weight") != std::string::npos;
    if (!c.soft_router && c.backend == "l2a_dense" && !downstream_of_routers(n, f.n_layers(), c.options)) continue;
    if (is_router && !c.soft_router) continue;
    TensorView p = f.model->parameter(n);
    const auto g = rt::test::host_doubles(*f.ops, grads.at(n));
    for (int k = 0; k < 3; ++k) {
      const int64_t i = static_cast<int64_t>(rng() % static_cast<uint64_t>(p.numel()));
      const double x0 = rt::test::read_elem(p, i), h = 1e-6 * std::max(1.0, std::abs(x0));
      rt::test::write_elem(p, i, x0 + h);
      const double up = rt::test::run_sequence(f, ids, tc, none).total();
      rt::test::write_elem(p, i, x0 - h);
      const double down = rt::test::run_sequence(f, ids, tc, none).total();
      rt::test::write_elem(p, i, x0);
      analytic.push_back(g[static_cast<size_t>(i)]);
      numeric.push_back((up - down) / (2 * h));
    }
  }
  double num = 0, den = 0;
  for (size_t i = 0; i < analytic.size(); ++i) {
    num += (analytic[i] - numeric[i]) * (analytic[i] - numeric[i]);
    den += numeric[i] * numeric[i];
  }
  const double rel = std::sqrt(num / den);
  EXPECT_LT(rel, 1e-6) << c.name << ": " << analytic.size() << " coordinates";
  EXPECT_GT(den, 0.0);
  if (c.backend == "l2a_dense") EXPECT_GT(base.reg, 0.0);
}

const std::vector<std::pair<std::string, std::string>> kPaper = {
    {"layout", "paper"}, {"window", "3"}, {"lambda", "0.3"}, {"lambda_schedule", "ramp"}};
const std::vector<std::pair<std::string, std::string>> kParallel = {
    {"layout", "parallel"}, {"window", "3"}, {"lambda", "0.3"}, {"lambda_schedule", "constant"}, {"reg_norm", "mean"}};

auto with(std::vector<std::pair<std::string, std::string>> base, std::pair<std::string, std::string> extra) {
  base.push_back(std::move(extra));
  return base;
}

INSTANTIATE_TEST_SUITE_P(
    Fp64, TrainGradients,
    ::testing::Values(Case{"full_causal", "full_causal", {}},
                      Case{"full_causal_recompute", "full_causal", {}, false, true},
                      Case{"swa_w4", "swa", {{"window", "4"}}},
                      Case{"paper_hard", "l2a_dense", kPaper},
                      Case{"paper_soft", "l2a_dense", kPaper, true},
                      Case{"paper_soft_force_local_theta", "l2a_dense",
                           with(with(kPaper, {"force_local", "true"}), {"rope_theta", "5e6"}), true},
                      Case{"parallel_hard", "l2a_dense", kParallel},
                      Case{"parallel_soft", "l2a_dense", kParallel, true},
                      Case{"parallel_soft_no_force_recompute", "l2a_dense", with(kParallel, {"force_local", "false"}),
                           true, true},
                      Case{"qwen3_full_causal", "full_causal", {}, false, false, "qwen3_hd16"},
                      Case{"qwen3_swa_w4", "swa", {{"window", "4"}}, false, true, "qwen3_hd16"},
                      Case{"qwen3_paper_soft", "l2a_dense", kPaper, true, false, "qwen3_hd16"},
                      Case{"qwen3_parallel_soft", "l2a_dense", kParallel, true, false, "qwen3_hd16"}),
    [](const auto& info) { return info.param.name; });

// Gradient checkpointing replays the forward exactly: identical gradients and loss.
TEST(TrainRecompute, IdenticalGradients) {
  Options opts;
  for (const auto& [k, v] : kPaper) opts.set(k, v);
  TrainFixture f(rt::test::kModelsDir + "gqa_untied_f32", "l2a_dense", opts, DType::F32);
  const auto names = f.model->parameter_names();
  for (const auto& n : names)
    if (n.find("router.weight") != std::string::npos) rt::test::randomize_parameter(f, n, 11, 0.15);
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 200};
  TrainContext tc;
  tc.step = 5;
  tc.total_steps = 5;
  auto a = rt::test::zero_grads(f, names), b = rt::test::zero_grads(f, names);
  const auto la = rt::test::run_sequence(f, ids, tc, a, false);
  const auto lb = rt::test::run_sequence(f, ids, tc, b, true);
  EXPECT_EQ(la.lm, lb.lm);
  EXPECT_EQ(la.reg, lb.reg);
  EXPECT_EQ(la.routed, lb.routed);
  for (const auto& n : names) EXPECT_EQ(rt::test::host_doubles(*f.ops, a.at(n)), rt::test::host_doubles(*f.ops, b.at(n))) << n;
}

// Frozen parameters (absent from the grad map) get nothing, and the trainable ones get the same
// gradients as when everything trains.
TEST(TrainFrozen, SubsetGradientsUnchanged) {
  TrainFixture f(rt::test::kModelsDir + "gqa_untied_f32", "full_causal", Options{}, DType::F64);
  const auto names = f.model->parameter_names();
  std::vector<std::string> some;
  for (const auto& n : names)
    if (n.find("layers.0.self_attn") != std::string::npos) some.push_back(n);
  ASSERT_FALSE(some.empty());
  const std::vector<int32_t> ids = {9, 8, 7, 6, 5, 4, 3};
  auto all = rt::test::zero_grads(f, names), sub = rt::test::zero_grads(f, some);
  TrainContext tc;
  rt::test::run_sequence(f, ids, tc, all);
  rt::test::run_sequence(f, ids, tc, sub);
  for (const auto& n : some) {
    const auto x = rt::test::host_doubles(*f.ops, all.at(n)), y = rt::test::host_doubles(*f.ops, sub.at(n));
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-12 * (1 + std::abs(x[i]))) << n;
  }
}

}  // namespace
