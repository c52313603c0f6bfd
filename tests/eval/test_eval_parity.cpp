// `runtime eval` against lm-evaluation-harness 0.4.13's own numbers (tests/fixtures/eval/
// reference.json, made by tools/make_eval_fixtures.py with lm-eval's HF backend in fp32 on a tiny
// random Qwen2 with the real Qwen2.5 vocabulary): per-choice log-likelihoods within 1e-4
// relative, acc and acc_norm identical, wikitext's metrics within 1e-4, the fixed-stride token
// perplexity against a direct transformers computation at stride = seq and stride < seq.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const fs::path kRoot = RT_SOURCE_DIR;
const fs::path kEval = kRoot / "tests" / "fixtures" / "eval";
const fs::path kTokenizer = fs::path(RT_SHARED_DATA_DIR) / "qwen2.5-tokenizer";

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

std::vector<json> read_jsonl(const fs::path& p) {
  std::ifstream in(p);
  std::vector<json> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// Runs runtime eval; returns the output directory of its (single, default) backend.
fs::path run_eval(const std::string& name, const std::string& args) {
  const fs::path out = fs::temp_directory_path() / ("rt_eval_parity_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(out);
  const std::string cmd = std::string(RT_BIN_DIR) + "/runtime eval --model '" + (kEval / "model").string() +
                          "' --tokenizer '" + kTokenizer.string() + "' --attention full_causal --output '" +
                          out.string() + "' " + args + " 2>&1";
  std::string log;
  FILE* p = ::popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  for (size_t n; p && (n = std::fread(buf.data(), 1, buf.size(), p)) > 0;) log.append(buf.data(), n);
  const int status = p ? ::pclose(p) : -1;
  EXPECT_EQ(status, 0) << cmd << "\n" << log;
  return out / "full_causal";
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); }

class ChoiceParity : public ::testing::TestWithParam<std::string> {};

TEST_P(ChoiceParity, LoglikelihoodsAndAccuracyEqualLmEval) {
  const std::string task = GetParam();
  const json ref = read_json(kEval / "reference.json")["tasks"][task];
  const fs::path dir = run_eval(task, "--tasks " + task + " --data " + task + "=" + (kRoot / ref["data"].get<std::string>()).string() +
                                          " --seq " + std::to_string(ref["max_length"].get<int64_t>()));
  const auto samples = read_jsonl(dir / ("samples_" + task + ".jsonl"));
  ASSERT_EQ(samples.size(), ref["docs"].size());
  double worst = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const json& want = ref["docs"][i];
    const json& got = samples[i];
    SCOPED_TRACE(task + " doc " + std::to_string(i));
    ASSERT_EQ(got["target"], want["target"]);
    ASSERT_EQ(got["lls"].size(), want["lls"].size());
    for (size_t c = 0; c < want["lls"].size(); ++c) {
      // The request strings the harness scored, as we built them.
      EXPECT_EQ(got["context"].get<std::string>(), want["requests"][c]["context"].get<std::string>());
      EXPECT_EQ(got["continuations"][c].get<std::string>(), want["requests"][c]["continuation"].get<std::string>());
      worst = std::max(worst, rel(got["lls"][c].get<double>(), want["lls"][c].get<double>()));
      EXPECT_EQ(got["is_greedy"][c].get<bool>(), want["is_greedy"][c].get<bool>());
    }
    EXPECT_EQ(got["acc"].get<double>(), want["acc"].get<double>());
    EXPECT_EQ(got["acc_norm"].get<double>(), want["acc_norm"].get<double>());
  }
  EXPECT_LT(worst, 1e-4) << "per-choice log-likelihood, relative";
  const json res = read_json(dir / "results.json")["results"][task];
  for (const char* m : {"acc,none", "acc_norm,none", "acc_stderr,none", "acc_norm_stderr,none"})
    EXPECT_NEAR(res[m].get<double>(), ref["metrics"][m].get<double>(), 1e-12) << m;
  fs::remove_all(dir.parent_path());
}

INSTANTIATE_TEST_SUITE_P(Tasks, ChoiceParity, ::testing::Values("hellaswag", "piqa", "arc_challenge", "arc_easy"));

TEST(WikitextParity, RollingLoglikelihoodAndMetrics) {
  const json ref = read_json(kEval / "reference.json")["tasks"]["wikitext"];
  const fs::path dir = run_eval("wikitext", "--tasks wikitext --data wikitext=" +
                                                (kRoot / ref["data"].get<std::string>()).string() + " --seq " +
                                                std::to_string(ref["max_length"].get<int64_t>()));
  const auto samples = read_jsonl(dir / "samples_wikitext.jsonl");
  ASSERT_EQ(samples.size(), ref["docs"].size());
  for (size_t i = 0; i < samples.size(); ++i) {
    SCOPED_TRACE("page " + std::to_string(i));
    EXPECT_LT(rel(samples[i]["loglikelihood"].get<double>(), ref["docs"][i]["loglikelihood"].get<double>()), 1e-4);
    EXPECT_EQ(samples[i]["words"], ref["docs"][i]["words"]);
    EXPECT_EQ(samples[i]["bytes"], ref["docs"][i]["bytes"]);
    EXPECT_EQ(samples[i]["tokens"], ref["docs"][i]["tokens"]);
  }
  const json res = read_json(dir / "results.json")["results"]["wikitext"];
  for (const char* m : {"word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"})
    EXPECT_LT(rel(res[m].get<double>(), ref["metrics"][m].get<double>()), 1e-4) << m;
  fs::remove_all(dir.parent_path());
}

TEST(PplParity, FixedStrideTokenPerplexity) {
  const json ref = read_json(kEval / "reference.json")["ppl"];
  for (const json& run : ref["runs"]) {
    const int64_t seq = run["seq"], stride = run["stride"];
    SCOPED_TRACE("seq " + std::to_string(seq) + " stride " + std::to_string(stride));
    const fs::path dir = run_eval("ppl" + std::to_string(stride), "--tasks ppl --data ppl=" +
                                                                  (kRoot / ref["data"].get<std::string>()).string() +
                                                                  " --seq " + std::to_string(seq) + " --stride " +
                                                                  std::to_string(stride));
    const json res = read_json(dir / "results.json")["results"]["ppl"];
    EXPECT_EQ(res["tokens_scored"].get<int64_t>(), run["tokens_scored"].get<int64_t>());
    EXPECT_LT(rel(res["nll_sum"].get<double>(), run["nll_sum"].get<double>()), 1e-5);
    EXPECT_LT(rel(res["token_perplexity,none"].get<double>(), run["token_perplexity"].get<double>()), 1e-4);
    fs::remove_all(dir.parent_path());
  }
}

}  // namespace
