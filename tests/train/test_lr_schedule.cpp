// lr_at: HF get_cosine_schedule_with_warmup (values from Python's math module) with a floor;
// lambda_at: ramp and constant.
#include "train/lr_schedule.h"
#include "test_util.h"

namespace rt::test {
namespace {

TrainConfig cfg(double lr, int64_t warmup, double min_ratio) {
  TrainConfig c;
  c.lr = lr;
  c.warmup_steps = warmup;
  c.min_lr_ratio = min_ratio;
  return c;
}

TEST(LrSchedule, WarmupThenCosineAsHuggingFace) {
  const TrainConfig c = cfg(1e-3, 10, 0.0);
  const int64_t total = 110;
  EXPECT_DOUBLE_EQ(lr_at(c, 0, total), 0.0);  // HF: the first warmup step has lr 0
  EXPECT_DOUBLE_EQ(lr_at(c, 1, total), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 5, total), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 10, total), 1e-3);  // peak right after warmup
  EXPECT_NEAR(lr_at(c, 35, total), 0.0008535533905932737, 1e-18);
  EXPECT_NEAR(lr_at(c, 60, total), 0.0005, 1e-18);
  EXPECT_NEAR(lr_at(c, 85, total), 0.00014644660940672628, 1e-18);
  EXPECT_NEAR(lr_at(c, 109, total), 2.467198171342e-07, 1e-18);
  EXPECT_NEAR(lr_at(c, 110, total), 0.0, 1e-18);
}

TEST(LrSchedule, FloorAtMinLrRatio) {
  const TrainConfig c = cfg(1e-3, 10, 0.1);
  EXPECT_DOUBLE_EQ(lr_at(c, 5, 110), 5e-4);  // warmup is not floored
  EXPECT_DOUBLE_EQ(lr_at(c, 10, 110), 1e-3);
  EXPECT_NEAR(lr_at(c, 35, 110), 0.0008681980515339464, 1e-18);
  EXPECT_NEAR(lr_at(c, 60, 110), 0.00055, 1e-18);
  EXPECT_NEAR(lr_at(c, 85, 110), 0.00023180194846605365, 1e-18);
  EXPECT_NEAR(lr_at(c, 109, 110), 0.00010022204783542078, 1e-18);
  EXPECT_NEAR(lr_at(c, 110, 110), 1e-4, 1e-18);
  // The schedule is non-increasing after warmup and never below the floor.
  double prev = lr_at(c, 10, 110);
  for (int64_t k = 11; k <= 110; ++k) {
    const double v = lr_at(c, k, 110);
    EXPECT_LE(v, prev + 1e-18);
    EXPECT_GE(v, 1e-4 - 1e-18);
    prev = v;
  }
}

TEST(LrSchedule, NoWarmupAndEdgeCases) {
  const TrainConfig c = cfg(2e-4, 0, 0.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 0, 100), 2e-4);
  EXPECT_NEAR(lr_at(c, 50, 100), 1e-4, 1e-18);
  EXPECT_DOUBLE_EQ(lr_at(c, 0, 1), 2e-4);  // a one-step run trains at the peak
  // warmup >= total: all warmup (max(1, total - warmup) keeps the division defined).
  EXPECT_DOUBLE_EQ(lr_at(cfg(1e-3, 10, 0), 4, 5), 4e-4);
  EXPECT_HAS(error_of([&] { lr_at(c, -1, 10); }), "step", ">= 0");
  EXPECT_HAS(error_of([&] { lr_at(c, 0, 0); }), "total_steps", ">= 1");
}

TEST(LambdaSchedule, RampAndConstant) {
  EXPECT_DOUBLE_EQ(lambda_at(0.5, "constant", 1, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lambda_at(0.5, "constant", 110, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lambda_at(0.5, "ramp", 1, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lambda_at(0.5, "ramp", 10, 10, 110), 0.0);  // through warmup
  EXPECT_DOUBLE_EQ(lambda_at(0.5, "ramp", 11, 10, 110), 0.005);
  EXPECT_DOUBLE_EQ(lambda_at(0.5, "ramp", 60, 10, 110), 0.25);
  EXPECT_DOUBLE_EQ(lambda_at(0.5, "ramp", 110, 10, 110), 0.5);  // lambda at the last step
  EXPECT_DOUBLE_EQ(lambda_at(2.0, "ramp", 1, 0, 4), 0.5);
  EXPECT_DOUBLE_EQ(lambda_at(2.0, "ramp", 5, 5, 5), 0.0);
  EXPECT_HAS(error_of([] { lambda_at(1, "linear", 1, 0, 10); }), "lambda_schedule", "\"ramp\" or \"constant\"",
             "found \"linear\"");
}

}  // namespace
}  // namespace rt::test
