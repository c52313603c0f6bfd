// The paper's long-context settings on every command (issue 13, item 5): a RoPE base and a
// position limit for the whole model, whatever the backend. --rope-theta / --max-position and their
// unscoped --set forms (rope_theta=, max_position=) change the model, so full_causal (which takes
// no plugin options) accepts them, the logits move, and sequences past the config's limit run.
#include <cmath>

#include "cli_test_util.h"
#include "common/npy.h"

namespace {

using namespace rt::test;

const std::string kModel = "qwen3_hd16";  // max_position_embeddings 128

std::string ids(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string((i * 37 + 11) % 200);
  return s;
}

rt::NpyArray logits(const TempDir& tmp, const std::string& out, int n, std::vector<std::string> extra) {
  std::vector<std::string> args = {"logits", "--model", fixture_model(kModel).string(), "--ids", ids(n),
                                   "--out", (tmp / out).string()};
  args.insert(args.end(), extra.begin(), extra.end());
  const RunResult r = run_runtime(args);
  EXPECT_TRUE(r.ok()) << r.describe();
  return r.ok() ? rt::read_npy(tmp / out) : rt::NpyArray{};
}

double rel_diff(const rt::NpyArray& a, const rt::NpyArray& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.data.size() && i < b.data.size(); ++i) {
    num += (double(a.data[i]) - b.data[i]) * (double(a.data[i]) - b.data[i]);
    den += double(b.data[i]) * b.data[i];
  }
  return std::sqrt(num / den);
}

TEST(LongContext, RopeThetaForEveryBackend) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const auto base = logits(tmp, "base.npy", 40, {});
  const auto flag = logits(tmp, "flag.npy", 40, {"--rope-theta", "5e6"});
  const auto set = logits(tmp, "set.npy", 40, {"--attention", "full_causal", "--set", "rope_theta=5e6"});
  ASSERT_EQ(base.data.size(), flag.data.size());
  EXPECT_EQ(flag.data, set.data);         // the two spellings are the same setting
  EXPECT_GT(rel_diff(flag, base), 1e-3);  // and it reaches the RoPE of every layer
}

TEST(LongContext, MaxPositionLiftsTheConfigLimit) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const RunResult refused = run_runtime(
      {"logits", "--model", fixture_model(kModel).string(), "--ids", ids(150), "--out", (tmp / "x.npy").string()});
  EXPECT_FALSE(refused.ok());
  EXPECT_NE(refused.err.find("max_position_embeddings = 128"), std::string::npos) << refused.err;
  const auto longer = logits(tmp, "long.npy", 150, {"--max-position", "256"});
  EXPECT_EQ(longer.shape, (std::vector<int64_t>{150, 263}));
  const auto set = logits(tmp, "set.npy", 150, {"--set", "max_position=256", "--attention", "swa", "--window", "200"});
  EXPECT_EQ(longer.data, set.data);  // swa with a window past the sequence is causal attention
}

TEST(LongContext, BadValuesAreClearErrors) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp;
  const std::string model = fixture_model(kModel).string(), out = (tmp / "x.npy").string();
  const RunResult a = run_runtime({"logits", "--model", model, "--ids", "1,2", "--out", out, "--set", "rope_theta=-1"});
  EXPECT_FALSE(a.ok());
  EXPECT_NE(a.err.find("rope_theta=-1: expected a positive number"), std::string::npos) << a.err;
  const RunResult b = run_runtime({"logits", "--model", model, "--ids", "1,2", "--out", out, "--set", "max_position=1.5"});
  EXPECT_FALSE(b.ok());
  EXPECT_NE(b.err.find("expected a whole number of positions"), std::string::npos) << b.err;
  const RunResult c = run_runtime({"logits", "--model", model, "--ids", "1,2", "--out", out, "--max-position", "0"});
  EXPECT_FALSE(c.ok());
}

}  // namespace
