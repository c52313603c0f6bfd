#include "eval/eval_metrics.h"

#include <algorithm>
#include <cmath>

#include "rt/sdk/error.h"

namespace rt::eval {

int argmax_first(const std::vector<double>& x) {
  int best = 0;
  for (size_t i = 1; i < x.size(); ++i)
    if (x[i] > x[static_cast<size_t>(best)]) best = static_cast<int>(i);
  return best;
}

MeanStderr mean_stderr(const std::vector<double>& x) {
  MeanStderr r;
  if (x.empty()) return r;
  const double n = static_cast<double>(x.size());
  double sum = 0;
  for (double v : x) sum += v;
  r.mean = sum / n;
  if (x.size() >= 2) {
    double ss = 0;
    for (double v : x) ss += (v - r.mean) * (v - r.mean);
    r.stderr_ = std::sqrt(ss / (n - 1)) / std::sqrt(n);
  }
  return r;
}

std::vector<PplWindow> ppl_windows(int64_t total, int64_t seq, int64_t stride) {
  RT_CHECK(seq >= 2, "ppl: --seq must be >= 2 (a window predicts its tokens after the first), found ", seq);
  RT_CHECK(stride >= 1 && stride <= seq, "ppl: --stride must be in [1, --seq = ", seq, "], found ", stride);
  std::vector<PplWindow> out;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < total; begin += stride) {
    const int64_t end = std::min(begin + seq, total);
    const int64_t scored = std::min(end - prev_end, end - begin - 1);
    if (scored > 0) out.push_back({begin, end, scored});
    prev_end = end;
    if (end == total) break;
  }
  return out;
}

}  // namespace rt::eval
