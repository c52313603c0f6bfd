// Packed scoring (Qwen2Model::score_targets_packed, what `runtime eval` batches multiple-choice
// requests with): requests of different lengths in one forward score as each scored alone, for
// every CPU backend: full_causal, swa (a window shorter than the requests) and l2a_dense in both
// layouts with random routers, force_local and a leak-free window, so routing, windows and
// positions all restart at every request.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>

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

// The case's backend on the tiny GQA model, its routers (if any) random so that routing varies.
std::unique_ptr<rt::test::TrainFixture> make_fixture(const Case& c, uint64_t seed) {
  Options o;
  for (const auto& [k, v] : c.options) o.set(k, v);
  auto f = std::make_unique<rt::test::TrainFixture>(rt::test::kModelsDir + "gqa_untied_f32", c.backend, o, DType::F32);
  for (const auto& n : f->model->parameter_names())
    if (n.find("router.weight") != std::string::npos) rt::test::randomize_parameter(*f, n, seed++, 0.5);
  return f;
}

TEST_P(ScorePacked, EachRequestScoresAsAlone) {
  const auto fixture = make_fixture(GetParam(), 21);
  rt::test::TrainFixture& f = *fixture;
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

// Prefix sharing (a multiple-choice item's context run once): requests that start with the same
// tokens score as alone, whether the shared prefix ends before the scored positions, covers some
// of them, or is a whole request; requests sharing nothing stay alone in between.
TEST_P(ScorePacked, SharedPrefixScoresAsAlone) {
  const auto fixture = make_fixture(GetParam(), 31);
  rt::test::TrainFixture& f = *fixture;
  const int64_t vocab = f.model->dims().vocab;
  auto tok = [&](int a, int b) { return static_cast<int32_t>((a * 977 + b * 131 + 5) % vocab); };
  std::vector<int32_t> ctx1, ctx2;
  for (int t = 0; t < 11; ++t) ctx1.push_back(tok(1, t));
  for (int t = 0; t < 9; ++t) ctx2.push_back(tok(2, t));
  struct Req {
    std::vector<int32_t> ids, targets;
  };
  std::vector<Req> reqs;
  auto add = [&](const std::vector<int32_t>& ctx, int branch, int n, int salt) {
    Req r{ctx, {}};
    for (int t = 0; t < branch; ++t) r.ids.push_back(tok(10 + salt, t));
    for (int t = 0; t < n; ++t) r.targets.push_back(tok(50 + salt, t));
    reqs.push_back(std::move(r));
  };
  add(ctx1, 3, 2, 0);   // scored rows after the prefix
  add(ctx1, 5, 6, 1);   // scored rows reaching into the prefix
  add(ctx1, 0, 1, 2);   // the prefix alone: its last row is scored
  add(ctx1, 1, 2, 3);
  add({tok(7, 0), tok(7, 1), tok(7, 2)}, 0, 2, 4);  // shares nothing: alone
  add(ctx2, 4, 3, 5);
  add(ctx2, 2, 2, 6);
  std::vector<Qwen2Model::ScoreRequest> packed;
  for (const Req& r : reqs) packed.push_back({r.ids, r.targets});
  const std::vector<Qwen2Model::TargetScore> shared = f.model->score_targets_packed(packed, /*share_prefix=*/true);
  const std::vector<Qwen2Model::TargetScore> unshared = f.model->score_targets_packed(packed, false);
  ASSERT_EQ(shared.size(), reqs.size());
  for (size_t r = 0; r < reqs.size(); ++r) {
    const Qwen2Model::TargetScore alone = f.model->score_targets(reqs[r].ids, reqs[r].targets);
    EXPECT_NEAR(shared[r].logprob, alone.logprob, 1e-5 * std::abs(alone.logprob)) << "request " << r;
    EXPECT_NEAR(unshared[r].logprob, alone.logprob, 1e-5 * std::abs(alone.logprob)) << "request " << r;
    EXPECT_EQ(shared[r].greedy, alone.greedy) << "request " << r;
  }
}

// The scoring path (hidden states of packed documents through AttentionBackend::forward_segments:
// one norm and projection pass over all rows, attention per document; greedy through
// Ops::lm_head_cross_entropy's is_greedy) against the prefill path (forward with a KV cache, one document at a
// time): the log-likelihood of every document's targets and whether each target is the argmax
// agree, for documents packed together with others of other lengths. Every other document's
// targets are the prefill's own argmax, so both answers of is_greedy occur.
TEST_P(ScorePacked, SegmentsMatchThePrefillPath) {
  const auto fixture = make_fixture(GetParam(), 41);
  rt::test::TrainFixture& f = *fixture;
  Qwen2Model& m = *f.model;
  const int64_t vocab = m.dims().vocab;
  std::vector<std::vector<int32_t>> inputs, targets;
  std::vector<std::vector<double>> logits;  // the prefill's, [T * vocab] per document
  for (int r = 0; r < 6; ++r) {
    std::vector<int32_t> in;
    for (int t = 0; t < 1 + 4 * r; ++t) in.push_back(static_cast<int32_t>((r * 613 + t * 89 + 3) % vocab));
    Qwen2Model::States states = m.new_states(static_cast<int64_t>(in.size()));
    logits.push_back(rt::test::host_doubles(*f.ops, m.forward(in, &states, /*last_only=*/false)));
    ASSERT_EQ(logits.back().size(), in.size() * static_cast<size_t>(vocab));
    std::vector<int32_t> tgt;
    for (size_t t = 0; t < in.size(); ++t) {
      const double* row = logits.back().data() + t * static_cast<size_t>(vocab);
      const auto best = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
      tgt.push_back(r % 2 == 1 ? best : static_cast<int32_t>((r * 31 + t * 7 + 1) % vocab));
    }
    inputs.push_back(std::move(in));
    targets.push_back(std::move(tgt));
  }
  std::vector<Qwen2Model::ScoreRequest> packed;
  for (size_t r = 0; r < inputs.size(); ++r) packed.push_back({inputs[r], targets[r]});
  const std::vector<Qwen2Model::TargetScore> scored = m.score_targets_packed(packed, /*share_prefix=*/false);
  int greedy_docs = 0;
  for (size_t r = 0; r < inputs.size(); ++r) {
    double want = 0;
    bool greedy = true;
    for (size_t t = 0; t < inputs[r].size(); ++t) {
      const double* row = logits[r].data() + t * static_cast<size_t>(vocab);
      const double mx = *std::max_element(row, row + vocab);
      double sum = 0;
      for (int64_t j = 0; j < vocab; ++j) sum += std::exp(row[j] - mx);
      want += row[targets[r][t]] - mx - std::log(sum);
      greedy = greedy && std::max_element(row, row + vocab) - row == targets[r][t];
    }
    EXPECT_NEAR(scored[r].logprob, want, 1e-5 * std::abs(want) + 1e-6) << "document " << r;
    EXPECT_EQ(scored[r].greedy, greedy) << "document " << r;
    greedy_docs += greedy;
  }
  EXPECT_EQ(greedy_docs, 3);
}

INSTANTIATE_TEST_SUITE_P(
    Backends, ScorePacked,
    ::testing::Values(Case{"full_causal", "full_causal", {}}, Case{"swa_w3", "swa", {{"window", "3"}}},
                      Case{"l2a_paper", "l2a_dense", {{"window", "3"}, {"tau", "1"}, {"force_local", "true"}}},
                      Case{"l2a_parallel", "l2a_dense",
                           {{"window", "4"}, {"tau", "1"}, {"layout", "parallel"}, {"force_local", "true"}}}),
    [](const auto& info) { return info.param.name; });

}  // namespace
