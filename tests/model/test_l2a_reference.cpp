// L2A against the independent PyTorch implementation (tools/make_l2a_fixtures.py): for both
// layouts and every regime, the forward logits, the routing decisions, the loss with the
// regularizer, the router gradients, the grad norm and the parameters after one AdamW step (with
// the run's clipping and schedule) must match.
//   CPU, fp32: relative error < 1e-4 (per tensor, the fixture's own fp32-vs-fp64 noise widens that
//   where Adam amplifies rounding), decisions exact.
//   CUDA, bf16 weights and activations: bf16 tolerances; a decision whose z sits within bf16
//   rounding of the threshold may flip, so a few flips are allowed (skips without a GPU).
#include <cstring>
#include <map>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/npy.h"
#ifdef RT_TEST_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif
#include "train/adamw_optimizer.h"
#include "train_test_util.h"
#include "test_util.h"

namespace {

using namespace rt;
using json = nlohmann::json;
const std::string kDir = std::string(RT_FIXTURES_DIR) + "/l2a/";

json reference() {
  std::ifstream f(kDir + "reference.json");
  return json::parse(f);
}

std::vector<int32_t> tokens() {
  std::ifstream f(kDir + "tokens.bin", std::ios::binary | std::ios::ate);
  const auto n = static_cast<size_t>(f.tellg()) / 4;
  f.seekg(0);
  std::vector<uint32_t> ids(n);
  f.read(reinterpret_cast<char*>(ids.data()), static_cast<std::streamsize>(n * 4));
  return std::vector<int32_t>(ids.begin(), ids.end());
}

using rt::test::rel_err;

std::vector<float> stored_floats(const WeightInfo& w) {
  std::vector<float> v(static_cast<size_t>(w.numel()));
  std::memcpy(v.data(), w.data, v.size() * 4);
  return v;
}

struct Tolerance {
  double logits, loss, grad;
  // >= 0: relative error of the parameters after the step. < 0 (bf16): Adam's first update is
  // lr * sign(g) (+ decay), so an element whose gradient is within bf16 noise of 0 may move the
  // other way; then at most -params of each tensor's updates may point the other way.
  double params;
  double max_flipped_decisions;  // fraction
};

// backend: l2a_dense, or l2a_fused (CUDA), whose routed inference forward is checked as is and
// whose training step runs with leak_prob = 1: the PyTorch reference computes the global attention
// for every token, which is what a leak forward does.
void check_case(const std::string& name, std::unique_ptr<Ops> ops, const Tolerance& tol,
                const std::string& backend = "l2a_dense") {
  const json ref = reference();
  json c;
  for (const auto& x : ref["cases"])
    if (x["name"] == name) c = x;
  ASSERT_FALSE(c.is_null()) << name;
  const json& o = c["options"];
  const json& tr = c["training"];
  const json& v = c["values"];
  Options opts;
  opts.set("layout", o["layout"].get<std::string>());
  opts.set("window", std::to_string(o["window"].get<int64_t>()));
  opts.set("tau", o["tau"].dump());
  opts.set("threshold", o["threshold"].dump());
  opts.set("force_local", o["force_local"].get<bool>() ? "true" : "false");
  if (!o["rope_theta"].is_null()) opts.set("rope_theta", o["rope_theta"].dump());
  opts.set("lambda", tr["lambda"].dump());
  opts.set("lambda_schedule", tr["lambda_schedule"].get<std::string>());
  opts.set("reg_norm", tr["reg_norm"].get<std::string>());
  if (backend == "l2a_fused") opts.set("leak_prob", "1");
  rt::test::TrainFixture f(kDir + c["model_dir"].get<std::string>(), backend, opts, std::move(ops));
  const int64_t T = o["seq_len"], B = o["batch_size"], L = f.n_layers(), V = f.model->dims().vocab;
  const auto toks = tokens();

  // Forward logits and inference decisions.
  const NpyArray logits = read_npy(kDir + c["files"]["logits"].get<std::string>());
  const NpyArray d_ref = read_npy(kDir + c["files"]["d"].get<std::string>());  // [L, B, T]
  std::vector<std::vector<int32_t>> seqs;
  int64_t flipped = 0;
  std::vector<double> logit_errs;
  for (int64_t b = 0; b < B; ++b) {
    const auto r = c["batch"]["token_ranges"][b];
    seqs.emplace_back(toks.begin() + r[0].get<int64_t>(), toks.begin() + r[1].get<int64_t>());
    Tensor lg = f.model->forward(seqs.back(), nullptr, false);
    const auto got = rt::test::host_doubles(*f.ops, lg);
    std::vector<float> want(logits.data.begin() + b * T * V, logits.data.begin() + (b + 1) * T * V);
    logit_errs.push_back(rel_err(got, want));
    for (int64_t l = 0; l < L; ++l) {
      const auto dec = f.attention->last_decisions(static_cast<int>(l));
      ASSERT_EQ(static_cast<int64_t>(dec.size()), T);
      for (int64_t t = 0; t < T; ++t) flipped += dec[t] != d_ref.data[static_cast<size_t>((l * B + b) * T + t)];
    }
  }
  EXPECT_LE(flipped, tol.max_flipped_decisions * double(L * B * T)) << "decisions differing from PyTorch's";
  // A flipped decision (bf16 rounding of z near the threshold) changes that token's whole global
  // branch, so logits, gradients and updates then differ by more than rounding: widen.
  const double widen = flipped > 0 ? 4.0 : 1.0;
  for (size_t b = 0; b < logit_errs.size(); ++b) EXPECT_LT(logit_errs[b], widen * tol.logits) << "logits, sequence " << b;

  // Loss, router gradients, grad norm, one AdamW step.
  std::vector<std::string> trainable;
  for (const auto& n : c["trainable"]) trainable.push_back(n);
  EXPECT_EQ(trainable, trainable_parameters(c["regime"], f.model->parameter_names(), "l2a_dense"));
  AdamWOptimizer opt(*f.ops, *f.model, trainable,
                     AdamWSettings{tr["betas"][0], tr["betas"][1], tr["eps"], tr["weight_decay"]});
  TrainContext tc;
  tc.step = tr["step"];
  tc.total_steps = tr["total_steps"];
  tc.warmup_steps = tr["warmup_steps"];
  tc.loss_scale = 1.f / static_cast<float>(B);
  rt::test::LossParts total;
  for (const auto& s : seqs) {
    const auto part = rt::test::run_sequence(f, s, tc, opt.grads());
    total.lm += part.lm;
    total.reg += part.reg;
    total.routed += part.routed;
  }
  EXPECT_NEAR(total.lm, v["lm_loss"].get<double>(), tol.loss * v["lm_loss"].get<double>());
  EXPECT_NEAR(total.reg, v["reg_loss"].get<double>(), tol.loss * std::abs(v["reg_loss"].get<double>()) + 1e-9);
  EXPECT_NEAR(1.0 - total.routed / double(L * B * T), v["sparsity"].get<double>(), tol.max_flipped_decisions + 1e-12);
  const NpyArray rg = read_npy(kDir + c["files"]["router_grad"].get<std::string>());  // [L, 1, hidden]
  const int64_t H = f.model->dims().hidden;
  for (int64_t l = 0; l < L; ++l) {
    const std::string n = "model.layers." + std::to_string(l) + ".router.weight";
    if (!opt.grads().count(n)) continue;
    std::vector<float> want(rg.data.begin() + l * H, rg.data.begin() + (l + 1) * H);
    EXPECT_LT(rel_err(rt::test::host_doubles(*f.ops, opt.grads().at(n)), want), widen * tol.grad) << n;
  }
  const double gn = opt.grad_norm();
  EXPECT_NEAR(gn, v["grad_norm"].get<double>(), widen * tol.grad * v["grad_norm"].get<double>());
  const double clip = tr["clip"];
  const double scale = gn > clip ? clip / (gn + 1e-6) : 1.0;
  if (std::abs(v["grad_norm"].get<double>() - clip) > 2 * tol.grad * clip) EXPECT_EQ(scale < 1.0, v["clipped"].get<bool>());
  std::map<std::string, std::vector<double>> before;  // this backend's (bf16-rounded on CUDA)
  for (const auto& n : trainable) before[n] = rt::test::host_doubles(*f.ops, opt.master(n));
  opt.step(tr["lr_used"].get<double>(), tc.step, scale);

  WeightStore after = WeightStore::open_file(kDir + c["files"]["params_after_step"].get<std::string>());
  const json& noise = v["float64_check"]["params_after_step_rel"];
  for (const auto& n : trainable) {
    const auto got = rt::test::host_doubles(*f.ops, opt.master(n));
    const auto want = stored_floats(after.get(n));
    if (tol.params >= 0) {
      const double t = std::max(tol.params, noise.contains(n) ? 10.0 * noise[n].get<double>() : 0.0);
      EXPECT_LT(rel_err(got, want), t) << n;
      continue;
    }
    // A key bias shifts every score of a query row by the same q.b (up to RoPE), which softmax
    // ignores: its gradient is ~0 and its sign is rounding noise.
    if (n.find(".k_proj.bias") != std::string::npos) continue;
    const auto& b = before.at(n);
    const auto b_ref = stored_floats(f.store->get(n));  // the fp32 weights PyTorch started from
    int64_t opposite = 0;
    for (size_t i = 0; i < want.size(); ++i) opposite += (got[i] - b[i]) * (want[i] - b_ref[i]) < 0;
    EXPECT_LE(opposite, -widen * tol.params * double(want.size())) << n << ": updates pointing the other way";
  }
}

class L2aReference : public ::testing::TestWithParam<std::string> {};

TEST_P(L2aReference, MatchesPyTorchCpuFp32) { check_case(GetParam(), make_cpu_ops(), {1e-4, 1e-4, 1e-4, 1e-4, 0.0}); }

#ifdef RT_TEST_WITH_CUDA
TEST_P(L2aReference, MatchesPyTorchCudaBf16) {
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA GPU";
  check_case(GetParam(), make_cuda_ops(), {3e-2, 1e-2, 5e-2, -0.05, 0.03});
}
TEST_P(L2aReference, FusedMatchesPyTorchCudaBf16) {
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA GPU";
  check_case(GetParam(), make_cuda_ops(), {3e-2, 1e-2, 5e-2, -0.05, 0.03}, "l2a_fused");
}
#endif

std::vector<std::string> case_names() {
  std::vector<std::string> out;
  const json ref = reference();
  for (const auto& c : ref["cases"]) out.push_back(c["name"]);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, L2aReference, ::testing::ValuesIn(case_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
