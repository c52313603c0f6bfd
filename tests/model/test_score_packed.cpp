// Packed scoring (Qwen2Model::score_targets_packed, what `runtime eval` batches multiple-choice
// requests with): requests of different lengths in one forward score as each scored alone, for
// every CPU backend: full_causal, swa (a window shorter than the requests) and l2a_dense in both
// layouts with random routers, force_local and a leak-free window, so routing, windows and
// positions all restart at every request.
#include <gtest/gtest.h>

#include <cmath>

#include "train_test_util.h"
#include "test_util.h"

namespace {

using namespace rt;

struct Case {
  std::string name, backend;
  std::vector<std::pair<std::string, std::string>> options;
};
std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

class ScorePacked : public ::testing::TestWithParam<Case> {};

TEST_P(ScorePacked, EachRequestScoresAsAlone) {
  const Case& c = GetParam();
  Options o;
  for (const auto& [k, v] : c.options) o.set(k, v);
  rt::test::TrainFixture f(rt::test::kModelsDir + "gqa_untied_f32", c.backend, o, DType::F32);
  uint64_t seed = 21;
  for (const auto& n : f.model->parameter_names())
    if (n.find("router.weight") != std::string::npos) rt::test::randomize_parameter(f, n, seed++, 0.5);
  const int64_t vocab = f.model->dims().vocab;
  std::vector<std::vector<int32_t>> ids, targets;
  for (int r = 0; r < 6; ++r) {
    const int len = 1 + (r * 7) % 13;  // 1 .. 13 tokens
    std::vector<int32_t> seq;
    for (int t = 0; t < len + 1; ++t) seq.push_back(static_cast<int32_t>((r * 977 + t * 131 + 5) % vocab));
    const int n = 1 + r % std::max(1, len);
    ids.emplace_back(seq.begin(), seq.end() - 1);
    targets.emplace_back(seq.end() - std::min<int>(n, len), seq.end());
  }
  std::vector<Qwen2Model::ScoreRequest> packed;
  for (size_t r = 0; r < ids.size(); ++r) packed.push_back({ids[r], targets[r]});
  const std::vector<Qwen2Model::TargetScore> together = f.model->score_targets_packed(packed);
  ASSERT_EQ(together.size(), ids.size());
  for (size_t r = 0; r < ids.size(); ++r) {
    const Qwen2Model::TargetScore alone = f.model->score_targets(ids[r], targets[r]);
    EXPECT_NEAR(together[r].logprob, alone.logprob, 1e-5 * std::abs(alone.logprob)) << "request " << r;
    EXPECT_EQ(together[r].greedy, alone.greedy) << "request " << r;
  }
  // A request whose targets exceed its input, and an empty batch.
  std::vector<int32_t> one = {1}, two = {1, 2};
  const std::vector<Qwen2Model::ScoreRequest> bad = {{one, two}};
  EXPECT_THROW(f.model->score_targets_packed(bad), Error);
  EXPECT_TRUE(f.model->score_targets_packed({}).empty());
}

INSTANTIATE_TEST_SUITE_P(
    Backends, ScorePacked,
    ::testing::Values(Case{"full_causal", "full_causal", {}}, Case{"swa_w3", "swa", {{"window", "3"}}},
                      Case{"l2a_paper", "l2a_dense", {{"window", "3"}, {"tau", "1"}, {"force_local", "true"}}},
                      Case{"l2a_parallel", "l2a_dense",
                           {{"window", "4"}, {"tau", "1"}, {"layout", "parallel"}, {"force_local", "true"}}}),
    [](const auto& info) { return info.param.name; });

}  // namespace
