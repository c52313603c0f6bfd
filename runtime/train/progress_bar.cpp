#include "train/progress_bar.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common/text_table.h"
#include "rt/sdk/error.h"

namespace rt {

std::string format_count(double v) {
  if (!std::isfinite(v) || v < 0) return "--";
  char buf[32];
  if (v < 999.5) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  static const char kUnits[] = {'K', 'M', 'G', 'T'};
  double scaled = v;
  for (size_t u = 0; u < sizeof kUnits; ++u) {
    scaled /= 1000.0;
    // Move on when rounding to one decimal would print 1000.0 of this unit.
    if (scaled < 999.95 || u + 1 == sizeof kUnits) {
      std::snprintf(buf, sizeof buf, "%.1f%c", scaled, kUnits[u]);
      return buf;
    }
  }
  return "--";
}

std::string format_eta(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--";
  const long long s = std::llround(seconds);
  char buf[48];
  if (s < 60) std::snprintf(buf, sizeof buf, "%llds", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else if (s < 86400) std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, s % 3600 / 60);
  else std::snprintf(buf, sizeof buf, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
  return buf;
}

std::string format_progress_line(const ProgressState& s, int bar_width) {
  const int64_t total = std::max<int64_t>(1, s.total);
  const int filled = static_cast<int>(std::clamp<int64_t>(bar_width * s.step / total, 0, bar_width));
  std::string line = "[" + std::string(static_cast<size_t>(filled), '#') +
                     std::string(static_cast<size_t>(bar_width - filled), '.') + "]";
  char buf[160];
  std::snprintf(buf, sizeof buf, " step %lld/%lld  loss %.3f", static_cast<long long>(s.step),
                static_cast<long long>(s.total), s.loss);
  line += buf;
  if (s.sparsity) {
    std::snprintf(buf, sizeof buf, "  sparsity %.1f%%", 100.0 * *s.sparsity);
    line += buf;
  }
  line += "  " + format_count(s.tokens_per_s) + " tok/s  ETA " + format_eta(s.eta_s);
  return line;
}

namespace {
double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

ProgressBar::ProgressBar(int64_t total_steps, int64_t start_step, Options opt)
    : opt_(std::move(opt)), total_(total_steps), start_step_(start_step) {
  RT_CHECK(total_steps >= 1, "ProgressBar: total_steps must be >= 1, found ", total_steps);
  if (!opt_.out) opt_.out = stderr;
  if (!opt_.clock) opt_.clock = steady_seconds;
  tty_ = opt_.tty ? *opt_.tty : ::isatty(::fileno(opt_.out)) != 0;
  t0_ = opt_.clock();
  step_ = start_step;
  next_mark_ = start_step + 1;
}

ProgressState ProgressBar::state(double now) const {
  ProgressState s;
  s.step = step_;
  s.total = total_;
  s.loss = loss_;
  s.sparsity = sparsity_;
  const double elapsed = now - t0_;
  const int64_t done = step_ - start_step_;
  if (elapsed > 0 && done > 0) {
    s.tokens_per_s = static_cast<double>(tokens_) / elapsed;
    s.eta_s = elapsed / static_cast<double>(done) * static_cast<double>(std::max<int64_t>(0, total_ - step_));
  }
  return s;
}

void ProgressBar::print(const ProgressState& s, bool final_line) {
  std::string line = format_progress_line(s, opt_.bar_width);
  // Redrawn in place: a line longer than the terminal would wrap, and \r would then redraw only
  // its last row, leaving a trail of stale ones.
  if (tty_) line = fit_to_width(line, terminal_columns(fileno(opt_.out)));
  if (tty_) std::fprintf(opt_.out, "\r%s\033[K%s", line.c_str(), final_line ? "\n" : "");
  else std::fprintf(opt_.out, "%s\n", line.c_str());
  std::fflush(opt_.out);
  last_printed_step_ = s.step;
  ++lines_;
}

void ProgressBar::update(int64_t step, double loss, std::optional<double> sparsity, int64_t tokens) {
  if (finished_) return;
  const double now = opt_.clock();
  step_ = step;
  loss_ = loss;
  sparsity_ = sparsity;
  tokens_ += tokens;
  if (tty_) {
    // ~10 redraws a second at most: tiny models step faster than a terminal should scroll.
    if (now - last_print_t_ < 0.1 && step < total_) return;
  } else if (opt_.every_steps > 0) {
    if (step % opt_.every_steps != 0) return;
  } else {
    const bool mark = step >= next_mark_;
    if (!mark && now - last_print_t_ < opt_.plain_every_s) return;
    // Next print at the next multiple of 5% of the run.
    const int64_t k = (step * 20) / total_ + 1;
    next_mark_ = std::max(step + 1, (k * total_ + 19) / 20);
  }
  last_print_t_ = now;
  print(state(now), false);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  // A TTY's in-place line gets its newline; a log gets the final state unless already there.
  if (tty_ || last_printed_step_ != step_) print(state(opt_.clock()), true);
}

}  // namespace rt
