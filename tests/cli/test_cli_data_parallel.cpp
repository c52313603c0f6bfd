// Data-parallel training on the CPU (issue 14): `runtime launch --nproc-per-node N -- runtime train`
// against one process with the same global batch. Each rank trains batch_size / N of every step's
// sequences; gradients, losses and routing counts are summed over ranks (Gloo), so the per-step
// losses equal the single process's within reduction-order rounding, for full_causal and L2A
// (paper layout, leak and regularizer on). Only rank 0 writes; an interrupted 2-rank run resumes
// bit-identically with 2 ranks, and with 1 rank it continues with a note; the ZeRO-1 optimizer
// (state sharded over the ranks) is the unsharded one bit for bit. `runtime eval` over 2 and
// 3 ranks (each scores its share of every task's requests, windows and samples) writes the single
// process's results and samples, bit for bit. `runtime profile --train` over 2 ranks adds the
// data-parallel step and its scaling efficiency.
#include <cmath>
#include <sstream>

#include "cli_test_util.h"

namespace {

using namespace rt::test;
using json = nlohmann::json;

std::vector<json> metrics(const fs::path& out) { return read_jsonl(out / "metrics.jsonl"); }

struct Train {
  TempDir tmp;
  std::vector<std::string> args(const std::string& attention, const fs::path& out, int steps) {
    write_text(tmp / "train.toml",
               "[train]\nregime = \"attention\"\nseq_len = 16\nbatch_size = 4\nlr = 3e-3\nwarmup_steps = 1\n"
               "seed = 5\n\n[attention]\nwindow = 4\nlambda = 0.01\nleak_prob = 0.5\n");
    std::vector<std::string> a = {runtime_bin().string(), "train", "--model", (l2a_dir() / "base").string(),
                                  "--attention", attention, "--config", (tmp / "train.toml").string(), "--data",
                                  (l2a_dir() / "tokens.bin").string(), "--steps", std::to_string(steps), "--out",
                                  out.string(), "--quiet"};
    if (attention != "l2a_dense") {  // the [attention] options are L2A's
      write_text(tmp / "train.toml",
                 "[train]\nregime = \"full\"\nseq_len = 16\nbatch_size = 4\nlr = 3e-3\nwarmup_steps = 1\nseed = 5\n");
    }
    return a;
  }
  RunResult single(const std::string& attention, const fs::path& out, int steps, std::vector<std::string> extra = {}) {
    auto a = args(attention, out, steps);
    a.erase(a.begin());
    a.insert(a.end(), extra.begin(), extra.end());
    return run_runtime(a, 300);
  }
  RunResult ranks(int n, const std::string& attention, const fs::path& out, int steps,
                  std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"launch", "--nproc-per-node", std::to_string(n), "--"};
    auto t = args(attention, out, steps);
    a.insert(a.end(), t.begin(), t.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return run_runtime(a, 300);
  }
};

void expect_same_losses(const std::vector<json>& a, const std::vector<json>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    const double la = a[i]["loss"].get<double>(), lb = b[i]["loss"].get<double>();
    EXPECT_LE(std::abs(la - lb), tol * std::abs(lb)) << la << " vs " << lb;
    if (b[i]["sparsity"].is_number()) {
      EXPECT_DOUBLE_EQ(a[i]["sparsity"].get<double>(), b[i]["sparsity"].get<double>());
      EXPECT_EQ(a[i]["leak_layers"], b[i]["leak_layers"]);
    }
    EXPECT_EQ(a[i]["tokens"], b[i]["tokens"]);
  }
}

class DataParallel : public ::testing::TestWithParam<std::string> {};

TEST_P(DataParallel, TwoRanksGiveTheSingleProcessLosses) {
  ASSERT_TRUE(runtime_available());
  Train t;
  const auto one = t.single(GetParam(), t.tmp / "one", 4);
  ASSERT_TRUE(one.ok()) << one.describe();
  const auto two = t.ranks(2, GetParam(), t.tmp / "two", 4);
  ASSERT_TRUE(two.ok()) << two.describe();
  expect_same_losses(metrics(t.tmp / "two"), metrics(t.tmp / "one"), 1e-4);
  EXPECT_TRUE(fs::exists(t.tmp / "two" / "model" / "model.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(Backends, DataParallel, ::testing::Values("full_causal", "l2a_dense"));

TEST(DataParallelResume, SameWorldBitIdenticalOtherWorldContinues) {
  ASSERT_TRUE(runtime_available());
  Train t;
  const auto whole = t.ranks(2, "l2a_dense", t.tmp / "whole", 4);
  ASSERT_TRUE(whole.ok()) << whole.describe();
  const auto first = t.ranks(2, "l2a_dense", t.tmp / "cut", 4, {"--stop-at", "2"});
  ASSERT_TRUE(first.ok()) << first.describe();
  const auto rest = t.ranks(2, "l2a_dense", t.tmp / "cut", 4, {"--resume"});
  ASSERT_TRUE(rest.ok()) << rest.describe();
  const auto a = metrics(t.tmp / "whole"), b = metrics(t.tmp / "cut");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i]["loss"], b[i]["loss"]) << "step " << i + 1;

  const auto cut1 = t.ranks(2, "l2a_dense", t.tmp / "cut1", 4, {"--stop-at", "2"});
  ASSERT_TRUE(cut1.ok()) << cut1.describe();
  const auto on_one = t.single("l2a_dense", t.tmp / "cut1", 4, {"--resume"});
  ASSERT_TRUE(on_one.ok()) << on_one.describe();
  EXPECT_NE(on_one.err.find("not bit-identical"), std::string::npos) << on_one.err;
  expect_same_losses(metrics(t.tmp / "cut1"), a, 1e-4);
}

// ZeRO-1: the optimizer state split over the ranks gives the unsharded run's updates bit for bit
// (losses, the exported weights), resumes bit-identically, and holds less state per rank.
TEST(DataParallelZero, ShardedOptimizerIsTheUnshardedOneBitForBit) {
  ASSERT_TRUE(runtime_available());
  Train t;
  const auto plain = t.ranks(2, "l2a_dense", t.tmp / "plain", 4);
  ASSERT_TRUE(plain.ok()) << plain.describe();
  const auto zero = t.ranks(2, "l2a_dense", t.tmp / "zero", 4, {"--set", "train.zero_stage=1"});
  ASSERT_TRUE(zero.ok()) << zero.describe();
  EXPECT_NE(zero.err.find("sharded (zero_stage 1)"), std::string::npos) << zero.err;
  const auto a = metrics(t.tmp / "plain"), b = metrics(t.tmp / "zero");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i]["loss"], b[i]["loss"]) << "step " << i + 1;
  EXPECT_EQ(read_text(t.tmp / "plain" / "model" / "model.safetensors"),
            read_text(t.tmp / "zero" / "model" / "model.safetensors"));

  const auto cut = t.ranks(2, "l2a_dense", t.tmp / "cut", 4, {"--set", "train.zero_stage=1", "--stop-at", "2"});
  ASSERT_TRUE(cut.ok()) << cut.describe();
  const auto rest = t.ranks(2, "l2a_dense", t.tmp / "cut", 4, {"--set", "train.zero_stage=1", "--resume"});
  ASSERT_TRUE(rest.ok()) << rest.describe();
  const auto c = metrics(t.tmp / "cut");
  ASSERT_EQ(c.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i]["loss"], c[i]["loss"]) << "step " << i + 1;
}

TEST(DataParallelErrors, BatchNotDivisibleByTheRanks) {
  ASSERT_TRUE(runtime_available());
  Train t;
  const auto r = t.ranks(3, "full_causal", t.tmp / "x", 1);
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.err.find("batch_size 4 is not divisible by the 3 ranks"), std::string::npos) << r.err;
}

// Every task of runtime eval, launched over `ranks` processes (1: a plain run).
RunResult eval_over(int ranks, const fs::path& out) {
  const fs::path ev = fs::path(RT_SOURCE_DIR) / "tests" / "fixtures" / "eval";
  const fs::path shared = fs::path(RT_SHARED_DATA_DIR);
  std::vector<std::string> a = {runtime_bin().string(), "eval", "--model", (ev / "model").string(), "--tokenizer",
                                (shared / "qwen2.5-tokenizer").string(), "--tasks", "piqa,wikitext,ppl,niah",
                                "--data", "piqa=" + (ev / "data" / "piqa.jsonl").string(),
                                "--data", "wikitext=" + (ev / "data" / "wikitext.jsonl").string(),
                                "--data", "ppl=" + (ev / "data" / "ppl.txt").string(),
                                "--data", "niah=" + (shared / "wikitext-2" / "test.txt").string(),
                                "--limit", "5", "--seq", "64", "--niah-lengths", "100,150", "--niah-depths", "0,50",
                                "--niah-samples", "2", "--attention", "full_causal,swa", "--window", "8",
                                "--output", out.string()};
  if (ranks > 1) {
    a.insert(a.begin(), {"launch", "--nproc-per-node", std::to_string(ranks), "--"});
    return run_runtime(a, 300);
  }
  a.erase(a.begin());
  return run_runtime(a, 300);
}

TEST(DataParallelEval, RanksWriteTheSingleProcessResults) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const auto one = eval_over(1, tmp / "one");
  ASSERT_TRUE(one.ok()) << one.describe();
  for (int ranks : {2, 3}) {
    SCOPED_TRACE(std::to_string(ranks) + " ranks");
    const fs::path out = tmp / ("r" + std::to_string(ranks));
    const auto r = eval_over(ranks, out);
    ASSERT_TRUE(r.ok()) << r.describe();
    for (const char* backend : {"full_causal", "swa"}) {
      json a = read_json(tmp / "one" / backend / "results.json"), b = read_json(out / backend / "results.json");
      EXPECT_EQ(a["results"], b["results"]) << backend;
      EXPECT_EQ(b["config"]["ranks"], ranks);
      for (const char* task : {"piqa", "wikitext", "ppl", "niah"}) {
        const std::string f = std::string("samples_") + task + ".jsonl";
        EXPECT_EQ(read_text(tmp / "one" / backend / f), read_text(out / backend / f)) << backend << " " << f;
      }
    }
    EXPECT_EQ(read_text(tmp / "one" / "summary.csv"), read_text(out / "summary.csv"));
  }
}

TEST(DataParallelProfile, TrainingRowsReportScaling) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const fs::path json_out = tmp / "profile.json";
  const auto r = run_runtime({"launch", "--nproc-per-node", "2", "--", runtime_bin().string(), "profile", "--model",
                              (l2a_dir() / "base").string(), "--attention", "full_causal", "--seq", "16", "--repeats",
                              "1", "--decode-tokens", "2", "--train", "full", "--json", json_out.string()},
                             300);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("scaling"), std::string::npos) << r.out;
  const json row = read_json(json_out)["backends"][0]["train"][0];
  EXPECT_EQ(row["ranks"], 2);
  EXPECT_GT(row["dp_tok_s"].get<double>(), 0.0);
  const double eff = row["scaling_efficiency"].get<double>();
  EXPECT_GT(eff, 0.0);
  EXPECT_NEAR(row["dp_tok_s"].get<double>(), 2 * row["tok_s"].get<double>() * eff, 1e-6 * row["dp_tok_s"].get<double>());
}

}  // namespace
