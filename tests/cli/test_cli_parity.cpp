// Parity of the `runtime` CLI with Hugging Face transformers on the tiny fixture checkpoints made
// by tools/make_fixtures.py (Qwen2 and Qwen3): logits (relative Frobenius error < 1e-4 in float32) and greedy
// generation (identical token ids). The cases are read from each fixture's reference.json.
#include <gtest/gtest.h>

#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli_test_util.h"
#include "common/npy.h"

namespace {

using namespace rt::test;

struct LogitsCase {
  std::string model, name;
  std::vector<int64_t> ids;
  std::string attention;  // empty: the runtime's default
  int64_t window = 0;     // 0: not passed
  std::string file;       // reference logits [T, vocab]
  int64_t vocab = 0;
  double tol = 1e-4;
  std::string error;      // the fixture could not be read
};

struct GenerateCase {
  std::string model, name;
  std::vector<int64_t> prompt, expected;
  int64_t max_new = 0;
  std::string attention;
  int64_t window = 0;
  std::string error;
};

// Readable parameters in gtest/ctest output (instead of a byte dump).
void PrintTo(const LogitsCase& c, std::ostream* os) { *os << c.model << "/" << c.name; }
void PrintTo(const GenerateCase& c, std::ostream* os) { *os << c.model << "/" << c.name; }

const std::vector<std::string> kModels = {"gqa_untied_f32", "tied_bf16_theta5e6", "sharded_f16", "gqa7_hd64",
                                          "sliding_window", "sliding_mixed",      "qwen3_hd16",
                                          "qwen3_hd64_bf16"};

std::string str_or_empty(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}
int64_t int_or_zero(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number_integer() ? j[key].get<int64_t>() : 0;
}

std::vector<LogitsCase> logits_cases() {
  std::vector<LogitsCase> out;
  for (const auto& m : kModels) {
    try {
      const auto ref = read_json(fixture_model(m) / "reference.json");
      for (const auto& c : ref.at("logits")) {
        LogitsCase lc;
        lc.model = m;
        lc.name = c.at("name").get<std::string>();
        lc.ids = c.at("ids").get<std::vector<int64_t>>();
        lc.attention = str_or_empty(c, "attention");
        lc.window = int_or_zero(c, "window");
        lc.file = c.at("file").get<std::string>();
        lc.vocab = ref.at("config").at("vocab_size").get<int64_t>();
        lc.tol = ref.value("parity_tolerance", 1e-4);
        out.push_back(lc);
      }
    } catch (const std::exception& e) {
      out.push_back(LogitsCase{m, "unreadable_fixture", {}, "", 0, "", 0, 1e-4, e.what()});
    }
  }
  return out;
}

std::vector<GenerateCase> generate_cases() {
  std::vector<GenerateCase> out;
  for (const auto& m : kModels) {
    try {
      const auto ref = read_json(fixture_model(m) / "reference.json");
      for (const auto& g : ref.at("generate")) {
        GenerateCase gc;
        gc.model = m;
        gc.name = g.at("name").get<std::string>();
        gc.prompt = g.at("prompt_ids").get<std::vector<int64_t>>();
        gc.expected = g.at("new_ids").get<std::vector<int64_t>>();
        gc.max_new = g.at("max_new_tokens").get<int64_t>();
        gc.attention = str_or_empty(g, "attention");
        gc.window = int_or_zero(g, "window");
        out.push_back(gc);
      }
    } catch (const std::exception& e) {
      out.push_back(GenerateCase{m, "unreadable_fixture", {}, {}, 0, "", 0, e.what()});
    }
  }
  return out;
}

std::vector<std::string> attention_args(const std::string& attention, int64_t window) {
  std::vector<std::string> a;
  if (!attention.empty()) a.insert(a.end(), {"--attention", attention});
  if (window > 0) a.insert(a.end(), {"--window", std::to_string(window)});
  return a;
}

// Runs `runtime logits` and returns the array (fails the test on any problem).
rt::NpyArray run_logits(const std::string& model, const std::vector<int64_t>& ids, const std::string& attention,
                        int64_t window, const TempDir& tmp, const std::string& out_name) {
  const fs::path out = tmp / out_name;
  std::vector<std::string> args = {"logits", "--model", fixture_model(model).string(), "--ids", join_ids(ids),
                                   "--out", out.string()};
  const auto extra = attention_args(attention, window);
  args.insert(args.end(), extra.begin(), extra.end());
  const RunResult r = run_runtime(args);
  EXPECT_TRUE(r.ok()) << r.describe();
  if (!r.ok()) return {};
  EXPECT_TRUE(fs::exists(out)) << "no output file " << out << "\n" << r.describe();
  if (!fs::exists(out)) return {};
  return rt::read_npy(out);
}

class LogitsParity : public ::testing::TestWithParam<LogitsCase> {};

TEST_P(LogitsParity, MatchesHuggingFace) {
  const LogitsCase& c = GetParam();
  ASSERT_TRUE(c.error.empty()) << "fixture " << c.model << ": " << c.error
                               << " (regenerate with: python3 tools/make_fixtures.py)";
  ASSERT_TRUE(runtime_available());
  const rt::NpyArray ref = rt::read_npy(fixture_model(c.model) / c.file);
  const int64_t T = static_cast<int64_t>(c.ids.size());
  ASSERT_EQ(ref.shape, (std::vector<int64_t>{T, c.vocab})) << c.file;
  // The reference is not degenerate: a test against zeros or constants proves nothing.
  ASSERT_GT(rel_error(std::vector<float>(ref.data.size(), 0.0f), ref.data), 0.99);

  TempDir tmp;
  const rt::NpyArray out = run_logits(c.model, c.ids, c.attention, c.window, tmp, "logits.npy");
  ASSERT_FALSE(out.shape.empty()) << "runtime logits failed";
  ASSERT_EQ(out.shape, ref.shape) << "logits shape";
  ASSERT_EQ(out.descr, "<f4");
  const double err = rel_error(out.data, ref.data);
  std::ostringstream val;
  val << std::scientific << std::setprecision(3) << err;
  RecordProperty("rel_err", val.str());
  std::cout << "[parity] " << c.model << " " << c.name << " (T=" << T << ", attention "
            << (c.attention.empty() ? "default" : c.attention)
            << (c.window ? ", window " + std::to_string(c.window) : std::string()) << "): rel_err " << val.str()
            << " (tolerance " << c.tol << ")\n";
  EXPECT_TRUE(std::isfinite(err)) << "non-finite logits";
  EXPECT_LT(err, c.tol);
  // Per-row check too, so that one wrong position (e.g. a mask off by one at row W) is not hidden
  // by the others: every row within 10x the tolerance.
  for (int64_t t = 0; t < T && err < c.tol; ++t) {
    const auto b = static_cast<size_t>(t * c.vocab), e = b + static_cast<size_t>(c.vocab);
    const double row = rel_error(std::vector<float>(out.data.begin() + b, out.data.begin() + e),
                                 std::vector<float>(ref.data.begin() + b, ref.data.begin() + e));
    EXPECT_LT(row, 10 * c.tol) << "row " << t;
  }
}

std::string case_name(const std::string& model, const std::string& name) {
  std::string s = model + "_" + name;
  for (auto& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LogitsParity, ::testing::ValuesIn(logits_cases()),
                         [](const ::testing::TestParamInfo<LogitsCase>& i) {
                           return case_name(i.param.model, i.param.name);
                         });

class GenerateParity : public ::testing::TestWithParam<GenerateCase> {};

TEST_P(GenerateParity, GreedyIdsMatchHuggingFace) {
  const GenerateCase& c = GetParam();
  ASSERT_TRUE(c.error.empty()) << "fixture " << c.model << ": " << c.error;
  ASSERT_TRUE(runtime_available());
  ASSERT_EQ(static_cast<int64_t>(c.expected.size()), c.max_new);
  std::vector<std::string> args = {"generate", "--model", fixture_model(c.model).string(), "--ids",
                                   join_ids(c.prompt), "--max-new-tokens", std::to_string(c.max_new),
                                   "--print-ids"};
  const auto extra = attention_args(c.attention, c.window);
  args.insert(args.end(), extra.begin(), extra.end());
  const RunResult r = run_runtime(args);
  ASSERT_TRUE(r.ok()) << r.describe();

  // Exactly one line of stdout: the new ids, space-separated.
  std::string line = r.out;
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r' || line.back() == ' ')) line.pop_back();
  ASSERT_EQ(line.find('\n'), std::string::npos) << "expected one line of ids on stdout\n" << r.describe();
  std::vector<int64_t> got;
  std::istringstream is(line);
  std::string tok;
  while (is >> tok) {
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ASSERT_EQ(used, tok.size()) << "not a token id on stdout: '" << tok << "'\n" << r.describe();
    got.push_back(v);
  }
  size_t first_diff = 0;
  while (first_diff < got.size() && first_diff < c.expected.size() && got[first_diff] == c.expected[first_diff])
    ++first_diff;
  std::cout << "[generate] " << c.model << " " << c.name << ": " << first_diff << "/" << c.expected.size()
            << " ids match\n";
  RecordProperty("matching_prefix", static_cast<int>(first_diff));
  EXPECT_EQ(got, c.expected) << "first difference at new token " << first_diff << "\nstdout: " << r.out;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GenerateParity, ::testing::ValuesIn(generate_cases()),
                         [](const ::testing::TestParamInfo<GenerateCase>& i) {
                           return case_name(i.param.model, i.param.name);
                         });

// The fixtures themselves: the sliding-window references really differ from the causal ones
// (otherwise the swa parity tests would prove nothing about the mask).
TEST(SlidingWindowFixture, SlidingDiffersFromCausal) {
  const fs::path d = fixture_model("sliding_window");
  for (int T : {12, 37}) {
    const auto s = rt::read_npy(d / ("logits_sliding_T" + std::to_string(T) + ".npy"));
    const auto c = rt::read_npy(d / ("logits_causal_T" + std::to_string(T) + ".npy"));
    ASSERT_EQ(s.shape, c.shape);
    EXPECT_GT(rel_error(s.data, c.data), 1e-2) << "T=" << T;
  }
}

// swa with a window covering the whole sequence is full causal attention, in our runtime too.
TEST(SlidingWindow, WideWindowEqualsFullCausal) {
  ASSERT_TRUE(runtime_available());
  const auto ref = read_json(fixture_model("sliding_window") / "reference.json");
  std::vector<int64_t> ids;
  for (const auto& c : ref.at("logits"))
    if (c.at("ids").size() > ids.size()) ids = c.at("ids").get<std::vector<int64_t>>();
  ASSERT_GE(ids.size(), 12u);
  TempDir tmp;
  const auto causal = run_logits("sliding_window", ids, "full_causal", 0, tmp, "causal.npy");
  ASSERT_FALSE(causal.shape.empty());
  for (int64_t w : {static_cast<int64_t>(ids.size()), static_cast<int64_t>(ids.size()) + 1, int64_t{4096}}) {
    const auto swa = run_logits("sliding_window", ids, "swa", w, tmp, "swa_" + std::to_string(w) + ".npy");
    ASSERT_EQ(swa.shape, causal.shape) << "window " << w;
    const double err = rel_error(swa.data, causal.data);
    std::cout << "[parity] sliding_window swa window " << w << " vs runtime full_causal: rel_err " << err << "\n";
    EXPECT_LT(err, 1e-5) << "window " << w;
  }
  // And a narrow window is not causal attention.
  const auto narrow = run_logits("sliding_window", ids, "swa", 5, tmp, "swa_5.npy");
  ASSERT_EQ(narrow.shape, causal.shape);
  EXPECT_GT(rel_error(narrow.data, causal.data), 1e-2);
}

// Same ids, same output: the runtime is deterministic run to run.
TEST(Logits, Deterministic) {
  ASSERT_TRUE(runtime_available());
  const auto ref = read_json(fixture_model("gqa_untied_f32") / "reference.json");
  std::vector<int64_t> ids;
  for (const auto& c : ref.at("logits"))
    if (c.at("ids").size() > ids.size()) ids = c.at("ids").get<std::vector<int64_t>>();
  TempDir tmp;
  const auto a = run_logits("gqa_untied_f32", ids, "", 0, tmp, "a.npy");
  const auto b = run_logits("gqa_untied_f32", ids, "", 0, tmp, "b.npy");
  ASSERT_FALSE(a.shape.empty());
  EXPECT_EQ(a.shape, b.shape);
  EXPECT_EQ(a.data, b.data);
}

// Causality: the logits of a prefix do not depend on what follows it.
TEST(Logits, PrefixIsCausal) {
  ASSERT_TRUE(runtime_available());
  const auto ref = read_json(fixture_model("tied_bf16_theta5e6") / "reference.json");
  std::vector<int64_t> ids;
  for (const auto& c : ref.at("logits"))
    if (c.at("ids").size() > ids.size()) ids = c.at("ids").get<std::vector<int64_t>>();
  const std::vector<int64_t> prefix(ids.begin(), ids.begin() + 10);
  TempDir tmp;
  const auto full = run_logits("tied_bf16_theta5e6", ids, "", 0, tmp, "full.npy");
  const auto part = run_logits("tied_bf16_theta5e6", prefix, "", 0, tmp, "part.npy");
  ASSERT_EQ(part.shape.size(), 2u);
  ASSERT_EQ(full.shape.size(), 2u);
  const size_t n = part.data.size();
  EXPECT_LT(rel_error(std::vector<float>(full.data.begin(), full.data.begin() + n), part.data), 1e-5);
}

}  // namespace
