// l2a_fused against l2a_dense on the same L2A model, on CUDA (skips without a GPU): the tiny Qwen2
// checkpoint gqa7_hd64 (7 query heads on 1 KV head, head dim 64: the bf16 flash kernels, routed
// rows included) with two layers of random routers, so that part of the tokens is routed.
//   - inference: logits within bf16 tolerance and the same decisions, both layouts, with and
//     without a KV cache (prefill then token by token);
//   - training with leak on every forward: loss and every gradient within bf16 tolerance;
//   - training without leak: the loss matches, and so do the gradients of everything the unrouted
//     gates cannot reach (weights used by routed rows only differ through the router's weight);
//   - a step where no token is routed does no global work and fails nothing;
//   - two runs of a training step give the same bits;
//   - on the CPU, l2a_fused is refused naming l2a_dense.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "cuda/cuda_ops.h"
#include "train_test_util.h"
#include "test_util.h"

namespace {

using namespace rt;
// Test parameter "<layout>" runs on gqa7_hd64 (Qwen2), "qwen3_<layout>" on qwen3_hd64_bf16 (Qwen3:
// QK-norm on the routed rows' q and every token's k, no qkv bias).
std::string model_of(const std::string& param) {
  return rt::test::kModelsDir + (param.rfind("qwen3_", 0) == 0 ? "qwen3_hd64_bf16" : "gqa7_hd64");
}
std::string layout_of(const std::string& param) {
  return param.rfind("qwen3_", 0) == 0 ? param.substr(6) : param;
}

using rt::test::rel_err;

Options l2a_options(const std::string& layout, double leak, bool fixed_rate = false) {
  Options o;
  o.set("layout", layout);
  o.set("window", "8");
  o.set("leak_prob", std::to_string(leak));
  o.set("tau", "1");
  if (fixed_rate) {  // decisions from the position alone: no bf16 rounding can flip one
    o.set("router", "fixed_rate");
    o.set("sparsity", "0.6");
  }
  return o;
}

// The same random router weights in both fixtures (zero-init routers would route every token).
void randomize_routers(rt::test::TrainFixture& f, uint64_t seed) {
  for (const auto& n : f.model->parameter_names()) {
    if (n.find("router.weight") == std::string::npos) continue;
    TensorView p = f.model->parameter(n);
    std::vector<float> h = rt::test::randn(static_cast<size_t>(p.numel()), seed++, 0.3f);
    f.ops->copy(TensorView::contiguous(h.data(), DType::F32, Device::CPU, {p.shape[0], p.shape[1]}), p);
  }
}

std::vector<int32_t> tokens(int64_t T, uint64_t seed, int64_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (auto& t : ids) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return ids;
}

struct Pair {
  rt::test::TrainFixture dense, fused;
  Pair(const std::string& param, double leak, bool fixed_rate = false)
      : dense(model_of(param), "l2a_dense", l2a_options(layout_of(param), leak, fixed_rate), make_cuda_ops()),
        fused(model_of(param), "l2a_fused", l2a_options(layout_of(param), leak, fixed_rate), make_cuda_ops()) {
    randomize_routers(dense, 7);
    randomize_routers(fused, 7);
  }
};

class L2aFused : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA GPU";
  }
};

TEST_P(L2aFused, InferenceMatchesDense) {
  Pair p(GetParam(), 0.1);
  const auto ids = tokens(100, 1, p.dense.model->dims().vocab);
  const auto want = rt::test::host_doubles(*p.dense.ops, p.dense.model->forward(ids, nullptr, false));
  const auto got = rt::test::host_doubles(*p.fused.ops, p.fused.model->forward(ids, nullptr, false));
  EXPECT_LT(rel_err(got, want), 2e-2);
  int64_t routed = 0, differ = 0;
  for (int l = 0; l < p.dense.n_layers(); ++l) {
    const auto a = p.dense.attention->last_decisions(l), b = p.fused.attention->last_decisions(l);
    ASSERT_EQ(a.size(), b.size());
    for (size_t t = 0; t < a.size(); ++t) {
      routed += b[t] != 0.f;
      differ += a[t] != b[t];
    }
  }
  EXPECT_LE(differ, 2) << "decisions differing (bf16 rounding near the threshold may flip one)";
  EXPECT_GT(routed, 10) << "too few tokens routed for the test to mean anything";
  EXPECT_LT(routed, static_cast<int64_t>(ids.size()) * p.dense.n_layers()) << "every token routed";
}

// One training forward+backward of the same sequence through both plugins, every gradient kept.
struct BothSteps {
  std::vector<std::string> names;
  Qwen2Model::GradMap gd, gf;
  rt::test::LossParts ld, lf;
  BothSteps(Pair& p, uint64_t seed) : names(p.dense.model->parameter_names()) {
    const auto ids = tokens(96, seed, p.dense.model->dims().vocab);
    gd = rt::test::zero_grads(p.dense, names);
    gf = rt::test::zero_grads(p.fused, names);
    ld = rt::test::run_sequence(p.dense, ids, TrainContext{}, gd);
    lf = rt::test::run_sequence(p.fused, ids, TrainContext{}, gf);
  }
};

// A second run of the fused step (sequence `seed`, as BothSteps ran it) gives the same bits:
// deterministic kernels, no atomics.
void expect_fused_step_repeats(Pair& p, const BothSteps& r, uint64_t seed) {
  const auto ids = tokens(96, seed, p.dense.model->dims().vocab);
  auto g2 = rt::test::zero_grads(p.fused, r.names);
  rt::test::run_sequence(p.fused, ids, TrainContext{}, g2);
  for (const auto& n : r.names) {
    const auto a = rt::test::host_doubles(*p.fused.ops, r.gf.at(n)), b = rt::test::host_doubles(*p.fused.ops, g2.at(n));
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(double))) << n << " differs between two runs";
  }
}

// On a leak the fused backward is the routed rows' (gathered from the dense forward) while
// l2a_dense runs the dense backward with d = 0 rows: the same gradients, every one compared.
TEST_P(L2aFused, TrainingWithLeakMatchesDenseEverywhere) {
  Pair p(GetParam(), 1.0);
  BothSteps r(p, 2);
  const auto& names = r.names;
  const auto &gd = r.gd, &gf = r.gf;
  const auto &ld = r.ld, &lf = r.lf;
  EXPECT_NEAR(lf.lm, ld.lm, 1e-2 * std::abs(ld.lm));
  EXPECT_EQ(lf.routed, ld.routed);
  for (const auto& n : names) {
    const auto a = rt::test::host_doubles(*p.fused.ops, gf.at(n)), b = rt::test::host_doubles(*p.dense.ops, gd.at(n));
    EXPECT_LT(rel_err(a, b), 5e-2) << n;
  }
  expect_fused_step_repeats(p, r, 2);
}

// With the learned router a decision near the threshold may flip between the two plugins (bf16
// rounding of the router's input), and one flipped row moves the global weights' gradients by its
// whole contribution; fixed_rate routes the same rows in both, so only rounding differs.
TEST_P(L2aFused, TrainingWithoutLeakMatchesDenseOnRoutedPaths) {
  Pair p(GetParam(), 0.0, /*fixed_rate=*/true);
  BothSteps r(p, 3);
  const auto& names = r.names;
  const auto &gd = r.gd, &gf = r.gf;
  const auto &ld = r.ld, &lf = r.lf;
  EXPECT_NEAR(lf.lm, ld.lm, 1e-2 * std::abs(ld.lm));
  EXPECT_EQ(lf.routed, ld.routed) << "the two plugins routed different tokens";
  // The global sublayer's weights are reached only through routed rows (d = 1), in both.
  for (const auto& n : names) {
    if (n.find("global_attn.") == std::string::npos) continue;
    const auto a = rt::test::host_doubles(*p.fused.ops, gf.at(n)), b = rt::test::host_doubles(*p.dense.ops, gd.at(n));
    EXPECT_LT(rel_err(a, b), 5e-2) << n;
  }
  expect_fused_step_repeats(p, r, 3);
}

// Also on a leak: the dense forward runs, and the routed backward has no row (q_proj and o_proj
// are reached only through d = 1 rows, so their gradients are exact zeros in l2a_dense too).
TEST_P(L2aFused, NoTokenRoutedIsTheLocalSublayerOnly) {
  for (const double leak : {0.0, 1.0}) {
    SCOPED_TRACE("leak_prob " + std::to_string(leak));
    Options o = l2a_options(layout_of(GetParam()), leak);
    o.set("router", "fixed_rate");
    o.set("sparsity", "1");
    rt::test::TrainFixture fused(model_of(GetParam()), "l2a_fused", o, make_cuda_ops());
    const auto ids = tokens(50, 4, fused.model->dims().vocab);
    const auto got = rt::test::host_doubles(*fused.ops, fused.model->forward(ids, nullptr, false));
    for (double x : got) ASSERT_TRUE(std::isfinite(x));
    auto g = rt::test::zero_grads(fused, fused.model->parameter_names());
    const auto r = rt::test::run_sequence(fused, ids, TrainContext{}, g);
    EXPECT_TRUE(std::isfinite(r.lm));
    EXPECT_EQ(r.routed, 0.0);
    for (const auto& n : fused.model->parameter_names())
      if (n.find("global_attn.q_proj") != std::string::npos || n.find("global_attn.o_proj") != std::string::npos)
        for (double x : rt::test::host_doubles(*fused.ops, g.at(n))) ASSERT_EQ(x, 0.0) << n;
  }
}

TEST_P(L2aFused, CachedDecodeMatchesFullForward) {
  Pair p(GetParam(), 0.0);
  const auto ids = tokens(40, 5, p.fused.model->dims().vocab);
  const auto full = rt::test::host_doubles(*p.fused.ops, p.fused.model->forward(ids, nullptr, false));
  const int64_t V = p.fused.model->dims().vocab;
  auto states = p.fused.model->new_states(static_cast<int64_t>(ids.size()));
  std::vector<int32_t> prefix(ids.begin(), ids.begin() + 30);
  p.fused.model->forward(prefix, &states, false);
  std::vector<double> last;
  for (size_t t = 30; t < ids.size(); ++t) {
    const std::vector<int32_t> one = {ids[t]};
    last = rt::test::host_doubles(*p.fused.ops, p.fused.model->forward(one, &states, false));
  }
  std::vector<double> want(full.end() - V, full.end());
  std::vector<double> got(last.end() - V, last.end());
  EXPECT_LT(rel_err(got, want), 2e-2);
}

INSTANTIATE_TEST_SUITE_P(Layouts, L2aFused, ::testing::Values("paper", "parallel", "qwen3_paper", "qwen3_parallel"),
                         [](const auto& info) { return info.param; });

TEST(L2aFusedCpu, RefusedNamingL2aDense) {
  PluginRegistry registry;
  registry.scan_directory(RT_BIN_DIR);
  try {
    registry.create_attention("l2a_fused", Device::CPU);
    FAIL() << "l2a_fused was created on the CPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("l2a_dense"), std::string::npos) << e.what();
  }
}

}  // namespace
