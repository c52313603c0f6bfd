// Learning-rate and regularizer-weight schedules. Pure functions of the step, so a resumed run
// gets exactly the values an uninterrupted one would.
#pragma once

#include <cstdint>
#include <string_view>

#include "train/train_config.h"

namespace rt {

// Linear warmup, then cosine decay to lr * min_lr_ratio: Hugging Face
// get_cosine_schedule_with_warmup (num_cycles = 0.5) generalized with a floor. With k = step0
// (0-based: the lr used for the k-th optimizer update), W = warmup_steps, T = total_steps:
//   k < W:  lr * k / max(1, W)
//   else:   lr * (min_lr_ratio + (1 - min_lr_ratio) * max(0, 0.5 * (1 + cos(pi * p)))),
//           p = (k - W) / max(1, T - W)
// As in HF the first warmup step uses lr 0 when W > 0. Requires step0 >= 0, total_steps >= 1.
double lr_at(const TrainConfig& cfg, int64_t step0, int64_t total_steps);

// The sparsity regularizer's weight at optimizer step `step1` (1-based):
//   "constant": lambda
//   "ramp":     0 while step1 <= warmup, then lambda * (step1 - warmup) / max(1, total - warmup),
//               which reaches lambda at the last step.
// Any other schedule name is an rt::Error.
double lambda_at(double lambda, std::string_view schedule, int64_t step1, int64_t warmup,
                 int64_t total);

}  // namespace rt
