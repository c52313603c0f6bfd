// A live training progress line on stderr:
//   [#####.....] step 12/100  loss 3.214  sparsity 71.2%  12.3K tok/s  ETA 1m23s
// On a terminal it is redrawn in place (\r); when stderr is a file or pipe (a log, CI) a plain
// line is printed every ~5% of the run or every few seconds instead (or every N steps, with
// Options::every_steps), so logs stay readable.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>

namespace rt {

// 950 -> "950", 12345 -> "12.3K", 4.2e6 -> "4.2M" (then G, T). Negative or non-finite -> "--".
std::string format_count(double v);
// Whole seconds: "45s", "1m23s", "2h05m", "3d04h". Negative or non-finite (unknown) -> "--".
std::string format_eta(double seconds);

struct ProgressState {
  int64_t step = 0;   // steps completed
  int64_t total = 0;
  double loss = 0;
  std::optional<double> sparsity;  // fraction in [0, 1]; omitted when absent
  double tokens_per_s = -1;        // < 0: unknown
  double eta_s = -1;               // < 0: unknown
};
std::string format_progress_line(const ProgressState& s, int bar_width = 10);

class ProgressBar {
 public:
  struct Options {
    std::FILE* out = stderr;
    std::optional<bool> tty;        // default: isatty(fileno(out))
    double plain_every_s = 30.0;    // non-TTY: also print when this much time has passed
    // Non-TTY: > 0 prints a line exactly every this many steps (train.log_every) instead of the
    // ~5% / plain_every_s rhythm (finish() still prints the final state). Ignored on a terminal.
    int64_t every_steps = 0;
    int bar_width = 10;
    std::function<double()> clock;  // seconds; default: steady_clock (tests inject their own)
  };

  // start_step: steps already done (a resumed run), so rate and ETA count this process's work.
  ProgressBar(int64_t total_steps, int64_t start_step, Options opt);
  explicit ProgressBar(int64_t total_steps, int64_t start_step = 0) : ProgressBar(total_steps, start_step, Options{}) {}

  // After optimizer step `step` (1-based, steps completed), which processed `tokens` tokens.
  void update(int64_t step, double loss, std::optional<double> sparsity, int64_t tokens);
  // Prints the final state as a complete line (with the newline). Idempotent.
  void finish();

  int64_t lines_printed() const { return lines_; }

 private:
  ProgressState state(double now) const;
  void print(const ProgressState& s, bool final_line);

  Options opt_;
  bool tty_;
  int64_t total_, start_step_;
  double t0_, last_print_t_ = -1e300;
  int64_t step_ = 0, tokens_ = 0, last_printed_step_ = -1, next_mark_ = 0, lines_ = 0;
  double loss_ = 0;
  std::optional<double> sparsity_;
  bool finished_ = false;
};

}  // namespace rt
