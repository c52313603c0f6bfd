// Packed scoring on CUDA (skips without a GPU): the documents of a batch through
// AttentionBackend::forward_segments (one norm and q/k/v/o pass, the flash kernel per document)
// score as each alone on the GPU and as the CPU scores them, within bf16 tolerance, on the head-dim
// 64 checkpoint gqa7_hd64 (the tensor-core path), for full_causal and swa, shared prefix on and off.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cuda/cuda_ops.h"
#include "train_test_util.h"
#include "test_util.h"

namespace {

using namespace rt;

class CudaScorePacked : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA GPU";
  }
};

TEST_P(CudaScorePacked, MatchesAloneAndTheCpu) {
  Options o;
  if (GetParam() == "swa") o.set("window", "5");
  const std::string model = rt::test::kModelsDir + "gqa7_hd64";
  rt::test::TrainFixture gpu(model, GetParam(), o, make_cuda_ops());
  rt::test::TrainFixture cpu(model, GetParam(), o, DType::F32);
  const int64_t vocab = gpu.model->dims().vocab;
  auto tok = [&](int a, int b) { return static_cast<int32_t>((a * 977 + b * 131 + 5) % vocab); };
  std::vector<std::vector<int32_t>> ids, targets;
  for (int r = 0; r < 9; ++r) {  // three documents of three choices, ragged lengths
    std::vector<int32_t> seq;
    for (int t = 0; t < 6 + (r / 3) * 11; ++t) seq.push_back(tok(r / 3, t));  // the document's context
    for (int t = 0; t < 2 + (r * 5) % 9; ++t) seq.push_back(tok(100 + r, t));  // its choice
    const size_t n = static_cast<size_t>(2 + (r * 5) % 9);
    ids.emplace_back(seq.begin(), seq.end() - 1);
    targets.emplace_back(seq.end() - static_cast<std::ptrdiff_t>(n), seq.end());
  }
  std::vector<Qwen2Model::ScoreRequest> packed;
  for (size_t r = 0; r < ids.size(); ++r) packed.push_back({ids[r], targets[r]});
  for (bool share : {false, true}) {
    SCOPED_TRACE(share ? "shared prefix" : "no sharing");
    const auto together = gpu.model->score_targets_packed(packed, share);
    const auto on_cpu = cpu.model->score_targets_packed(packed, share);
    ASSERT_EQ(together.size(), ids.size());
    for (size_t r = 0; r < ids.size(); ++r) {
      const double alone = gpu.model->score_targets(ids[r], targets[r]).logprob;
      EXPECT_TRUE(std::isfinite(together[r].logprob)) << "request " << r;
      EXPECT_NEAR(together[r].logprob, alone, 2e-2 * std::abs(alone) + 2e-2) << "request " << r;
      EXPECT_NEAR(together[r].logprob, on_cpu[r].logprob, 3e-2 * std::abs(on_cpu[r].logprob) + 3e-2)
          << "request " << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, CudaScorePacked, ::testing::Values("full_causal", "swa"),
                         [](const auto& info) { return info.param; });

}  // namespace
