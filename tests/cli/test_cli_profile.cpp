// `runtime profile` on a tiny fixture (CPU): the table, JSON and CSV carry every measurement for
// every backend and length, with sane values; and bad arguments fail cleanly.
#include <gtest/gtest.h>

#include <algorithm>

#include "cli_test_util.h"

namespace {

using namespace rt::test;

TEST(CliProfile, WritesTableJsonAndCsv) {
  TempDir dir("rt_profile");
  const auto json = dir / "p.json", csv = dir / "p.csv";
  RunResult r = run_runtime({"profile", "--model", fixture_model("tied_bf16_theta5e6").string(), "--init", "checkpoint",
                             "--attention", "full_causal,swa", "--seq", "16,40", "--window", "8", "--repeats", "2",
                             "--decode-tokens", "4", "--json", json.string(), "--csv", csv.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("Attention kernels"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("window 8"), std::string::npos) << r.out;

  const auto j = read_json(json);
  ASSERT_EQ(j["kernels"].size(), 4u);  // {causal, window} x {16, 40}
  ASSERT_EQ(j["backends"].size(), 4u);  // {full_causal, swa} x {16, 40}
  for (const auto& k : j["kernels"]) {
    EXPECT_GT(k["fwd_ms"].get<double>(), 0.0);
    EXPECT_GT(k["fwd_bwd_ms"].get<double>(), 0.0);  // the training pair
    EXPECT_GT(k["fwd_bwd_tflops"].get<double>(), 0.0);
  }
  for (const auto& b : j["backends"]) {
    EXPECT_GT(b["sublayer_fwd_ms"].get<double>(), 0.0);
    EXPECT_GT(b["sublayer_fwd_tflops"].get<double>(), 0.0);
    EXPECT_GT(b["prefill_ms"].get<double>(), 0.0);
    EXPECT_GT(b["decode_tok_s"].get<double>(), 0.0);
    EXPECT_GT(b["peak_memory_bytes"].get<double>(), 0.0);
  }
  // KV cache: 3 layers x 2 kv heads x 16 dims x (K and V) x f32, full vs a ring of 8.
  const int64_t per_pos = 3 * 2 * 16 * 2 * 4;
  for (const auto& b : j["backends"]) {
    const int64_t positions = b["seq"].get<int64_t>() + 4 + 4;  // + warm-up steps + timed steps
    const int64_t want = b["backend"] == "swa" ? per_pos * 8 : per_pos * positions;
    EXPECT_EQ(b["kv_cache_bytes"].get<int64_t>(), want) << b.dump();
  }
  const std::string c = read_text(csv);
  EXPECT_EQ(std::count(c.begin(), c.end(), '\n'), 9) << c;  // header + 8 rows

  // The A/B ratios against the first backend at the same length, in the JSON and the table.
  EXPECT_EQ(j["ab_baseline"], "full_causal");
  for (const auto& b : j["backends"]) {
    const nlohmann::json* base = nullptr;
    for (const auto& f : j["backends"])
      if (f["backend"] == "full_causal" && f["seq"] == b["seq"]) base = &f;
    ASSERT_NE(base, nullptr);
    EXPECT_DOUBLE_EQ(b["prefill_speedup"].get<double>(),
                     (*base)["prefill_ms"].get<double>() / b["prefill_ms"].get<double>());
    EXPECT_DOUBLE_EQ(b["decode_speedup"].get<double>(),
                     b["decode_tok_s"].get<double>() / (*base)["decode_tok_s"].get<double>());
  }
  EXPECT_NE(r.out.find("prefill x"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("speedup against full_causal"), std::string::npos) << r.out;
}

// One backend: no baseline to compare with, so no ratio fields or columns.
TEST(CliProfile, OneBackendHasNoRatios) {
  TempDir dir("rt_profile");
  const auto json = dir / "p.json";
  RunResult r = run_runtime({"profile", "--model", fixture_model("tied_bf16_theta5e6").string(), "--init", "checkpoint",
                             "--attention", "full_causal", "--seq", "16", "--repeats", "1", "--decode-tokens", "2",
                             "--train", "attention", "--json", json.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto j = read_json(json);
  EXPECT_FALSE(j.contains("ab_baseline"));
  for (const auto& b : j["backends"]) EXPECT_FALSE(b.contains("prefill_speedup")) << b.dump();
  EXPECT_EQ(r.out.find(" x "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("step x"), std::string::npos) << r.out;
}

// An A/B run where only one backend takes the router options: `--set l2a_dense.key=value` reaches
// l2a_dense alone (unscoped, full_causal would refuse them), and each row records its options.
TEST(CliProfile, ScopedSetReachesOneBackend) {
  TempDir dir("rt_profile");
  const auto json = dir / "p.json";
  const std::vector<std::string> base = {"profile", "--model", fixture_model("tied_bf16_theta5e6").string(), "--init",
                                         "checkpoint", "--attention", "full_causal,l2a_dense", "--seq", "12",
                                         "--window", "4", "--repeats", "1", "--decode-tokens", "2"};
  // Unscoped, the router options go to every backend, and full_causal refuses them.
  auto args = base;
  for (const char* a : {"--set", "router=fixed_rate", "--set", "sparsity=0.8"}) args.push_back(a);
  RunResult bad = run_runtime(args);
  EXPECT_TRUE(is_clean_error(bad, {"full_causal: unknown option 'router'"})) << bad.describe();

  // Scoped, only l2a_dense gets them.
  args = base;
  for (const char* a : {"--set", "l2a_dense.router=fixed_rate", "--set", "l2a_dense.sparsity=0.8", "--json"})
    args.push_back(a);
  args.push_back(json.string());
  RunResult r = run_runtime(args);
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto j = read_json(json);
  ASSERT_EQ(j["backends"].size(), 2u);
  for (const auto& b : j["backends"]) {
    EXPECT_GT(b["prefill_ms"].get<double>(), 0.0) << b.dump();
    if (b["backend"] == "full_causal") {
      EXPECT_TRUE(b["options"].empty()) << b.dump();
    } else {
      EXPECT_EQ(b["backend"], "l2a_dense");
      EXPECT_EQ(b["options"]["router"], "fixed_rate") << b.dump();
      EXPECT_EQ(b["options"]["sparsity"], "0.8") << b.dump();
      EXPECT_EQ(b["options"]["window"], "4") << b.dump();
    }
  }
}

// --sparsity adds routed kernel rows (and the whole L2A attention against causal); --train times a
// training forward+backward per regime, null where the regime trains nothing (router_only without a
// router).
TEST(CliProfile, RoutedKernelsAndTrainingSteps) {
  TempDir dir("rt_profile");
  const auto json = dir / "p.json";
  RunResult r = run_runtime({"profile", "--model", fixture_model("tied_bf16_theta5e6").string(), "--init", "checkpoint",
                             "--attention", "full_causal,l2a_dense", "--seq", "24", "--window", "4", "--repeats", "1",
                             "--decode-tokens", "2", "--sparsity", "0.5", "--train", "router_only,attention", "--json",
                             json.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("L2A attention"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Training step"), std::string::npos) << r.out;
  const auto j = read_json(json);
  int routed = 0;
  for (const auto& k : j["kernels"]) {
    if (k["mask"] != "routed") continue;
    ++routed;
    EXPECT_GT(k["routed_rows"].get<int64_t>(), 0);
    EXPECT_LT(k["routed_rows"].get<int64_t>(), 24);
    EXPECT_GT(k["l2a_fwd_bwd_ms"].get<double>(), 0.0);
  }
  EXPECT_EQ(routed, 1);
  const nlohmann::json* full = nullptr;
  for (const auto& b : j["backends"])
    if (b["backend"] == "full_causal") full = &b;
  ASSERT_NE(full, nullptr);
  for (const auto& b : j["backends"]) {
    ASSERT_EQ(b["train"].size(), 2u) << b.dump();
    EXPECT_EQ(b["train"][0].is_null(), b["backend"] == "full_causal") << b.dump();
    EXPECT_GT(b["train"][1]["tok_s"].get<double>(), 0.0) << b.dump();
    // the attention regime against full_causal's; router_only has no full_causal step to compare
    EXPECT_DOUBLE_EQ(b["train"][1]["step_speedup"].get<double>(),
                     (*full)["train"][1]["step_ms"].get<double>() / b["train"][1]["step_ms"].get<double>());
    if (!b["train"][0].is_null()) EXPECT_FALSE(b["train"][0].contains("step_speedup")) << b.dump();
  }
}

// The kernel study of BENCHMARKS.md: one backend without a window, --window for the kernel rows
// (the window mask and the L2A attention's window sublayer). The backend runs without the window;
// the window rows are still measured.
TEST(CliProfile, KernelsOnlyWindowWithAnUnwindowedBackend) {
  TempDir dir("rt_profile");
  const auto json = dir / "p.json";
  RunResult r = run_runtime({"profile", "--model", fixture_model("tied_bf16_theta5e6").string(), "--init", "checkpoint",
                             "--attention", "full_causal", "--seq", "24", "--window", "4", "--sparsity", "0.5",
                             "--kernels-only", "--repeats", "1", "--json", json.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto j = read_json(json);
  std::vector<std::string> masks;
  for (const auto& k : j["kernels"]) masks.push_back(k["mask"].get<std::string>());
  EXPECT_EQ(masks, (std::vector<std::string>{"causal", "window", "routed"})) << j["kernels"].dump();
  for (const auto& k : j["kernels"])
    if (k["mask"] != "causal") EXPECT_EQ(k["window"].get<int64_t>(), 4) << k.dump();
  ASSERT_EQ(j["backends"].size(), 1u);
  EXPECT_FALSE(j["backends"][0]["options"].contains("window")) << j["backends"][0].dump();
}

// A scope that is not a backend of the run (here a typo of l2a_dense) is refused up front, naming
// the argument, the scope and the run's backends.
TEST(CliProfile, UnknownScopeFailsClearly) {
  TempDir dir("rt_profile");
  RunResult r = run_runtime({"profile", "--model", fixture_model("tied_bf16_theta5e6").string(), "--init", "checkpoint",
                             "--attention", "full_causal,l2a_dense", "--seq", "12", "--window", "4", "--repeats", "1",
                             "--set", "l2a_dense.router=fixed_rate", "--set", "l2a_dens.sparsity=0.8", "--json",
                             (dir / "p.json").string()});
  EXPECT_TRUE(is_clean_error(r, {"--set l2a_dens.sparsity=0.8: 'l2a_dens' is not one of the backends of this run "
                                 "(full_causal, l2a_dense)"}))
      << r.describe();
  EXPECT_FALSE(fs::exists(dir / "p.json"));
}

TEST(CliProfile, SwaWithoutWindowFailsClearly) {
  RunResult r = run_runtime({"profile", "--model", fixture_model("tied_bf16_theta5e6").string(), "--init",
                             "checkpoint", "--attention", "swa", "--seq", "16"});
  EXPECT_TRUE(r.exited && r.exit_code != 0) << r.describe();
  EXPECT_NE(r.err.find("error: swa: the window size is required"), std::string::npos) << r.err;
}

TEST(CliProfile, BadSeqFailsClearly) {
  RunResult r = run_runtime({"profile", "--model", fixture_model("tied_bf16_theta5e6").string(), "--init",
                             "checkpoint", "--seq", "16,abc"});
  EXPECT_TRUE(r.exited && r.exit_code != 0) << r.describe();
  EXPECT_NE(r.err.find("'abc'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("sequence length"), std::string::npos) << r.err;  // not "token id"
  EXPECT_EQ(r.err.find("token id"), std::string::npos) << r.err;
}

}  // namespace
