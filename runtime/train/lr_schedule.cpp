#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "rt/sdk/error.h"

namespace rt {

double lr_at(const TrainConfig& cfg, int64_t step0, int64_t total_steps) {
  RT_CHECK(step0 >= 0, "lr_at: step must be >= 0, found ", step0);
  RT_CHECK(total_steps >= 1, "lr_at: total_steps must be >= 1, found ", total_steps);
  const int64_t w = cfg.warmup_steps;
  if (step0 < w) return cfg.lr * static_cast<double>(step0) / static_cast<double>(std::max<int64_t>(1, w));
  const double progress =
      static_cast<double>(step0 - w) / static_cast<double>(std::max<int64_t>(1, total_steps - w));
  const double cosine = std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
  return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine);
}

double lambda_at(double lambda, std::string_view schedule, int64_t step1, int64_t warmup,
                 int64_t total) {
  if (schedule == "constant") return lambda;
  if (schedule != "ramp")
    fail("attention.lambda_schedule: expected \"ramp\" or \"constant\", found \"", std::string(schedule), "\"");
  if (step1 <= warmup) return 0.0;
  return lambda * static_cast<double>(step1 - warmup) /
         static_cast<double>(std::max<int64_t>(1, total - warmup));
}

}  // namespace rt
