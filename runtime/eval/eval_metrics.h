// lm-evaluation-harness's metrics and their standard errors.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace rt::eval {

// argmax with ties to the first (numpy's argmax).
int argmax_first(const std::vector<double>& x);
// The mean and its standard error, sample_stddev / sqrt(n) (none for fewer than 2 items: the
// harness reports "N/A").
struct MeanStderr {
  double mean = 0;
  std::optional<double> stderr_;
};
MeanStderr mean_stderr(const std::vector<double>& x);

// Token perplexity of one stream (Hugging Face's "perplexity of fixed-length models"): windows of
// `seq` tokens starting every `stride`; window [begin, end) scores its last min(new, len - 1)
// tokens, new = end - (the previous window's end). Returns (context, continuation) token pairs.
struct PplWindow {
  int64_t begin = 0, end = 0, scored = 0;
};
std::vector<PplWindow> ppl_windows(int64_t total_tokens, int64_t seq, int64_t stride);

}  // namespace rt::eval
