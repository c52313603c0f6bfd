// Progress line formatting, and when the bar prints on a terminal and in a log.
#include <cmath>

#include "train/progress_bar.h"
#include "test_util.h"

namespace rt::test {
namespace {

TEST(ProgressFormat, Count) {
  EXPECT_EQ(format_count(0), "0");
  EXPECT_EQ(format_count(950), "950");
  EXPECT_EQ(format_count(999.4), "999");
  EXPECT_EQ(format_count(999.6), "1.0K");
  EXPECT_EQ(format_count(12345), "12.3K");
  EXPECT_EQ(format_count(999949), "999.9K");
  EXPECT_EQ(format_count(999950), "1.0M");
  EXPECT_EQ(format_count(4.2e6), "4.2M");
  EXPECT_EQ(format_count(3e9), "3.0G");
  EXPECT_EQ(format_count(5e15), "5000.0T");
  EXPECT_EQ(format_count(-1), "--");
  EXPECT_EQ(format_count(NAN), "--");
}

TEST(ProgressFormat, Eta) {
  EXPECT_EQ(format_eta(0), "0s");
  EXPECT_EQ(format_eta(44.6), "45s");
  EXPECT_EQ(format_eta(83), "1m23s");
  EXPECT_EQ(format_eta(65), "1m05s");
  EXPECT_EQ(format_eta(3600), "1h00m");
  EXPECT_EQ(format_eta(7500), "2h05m");
  EXPECT_EQ(format_eta(3 * 86400 + 4 * 3600 + 59), "3d04h");
  EXPECT_EQ(format_eta(-1), "--");
  EXPECT_EQ(format_eta(INFINITY), "--");
  EXPECT_EQ(format_eta(NAN), "--");
}

TEST(ProgressFormat, Line) {
  ProgressState s;
  s.step = 50;
  s.total = 100;
  s.loss = 3.21449;
  s.sparsity = 0.7123;
  s.tokens_per_s = 12300;
  s.eta_s = 83;
  EXPECT_EQ(format_progress_line(s), "[#####.....] step 50/100  loss 3.214  sparsity 71.2%  12.3K tok/s  ETA 1m23s");
  s.sparsity.reset();
  s.step = 100;
  s.tokens_per_s = -1;
  s.eta_s = -1;
  EXPECT_EQ(format_progress_line(s, 4), "[####] step 100/100  loss 3.214  -- tok/s  ETA --");
}

struct Captured {
  std::FILE* f = std::tmpfile();
  ~Captured() { std::fclose(f); }
  std::string text() const {
    std::fflush(f);
    std::rewind(f);
    std::string s;
    for (int c; (c = std::fgetc(f)) != EOF;) s += static_cast<char>(c);
    return s;
  }
};

TEST(ProgressBar, LogModePrintsEveryFivePercent) {
  Captured out;
  double now = 0;
  ProgressBar::Options opt;
  opt.out = out.f;
  opt.tty = false;
  opt.clock = [&] { return now; };
  ProgressBar bar(100, 0, opt);
  for (int64_t step = 1; step <= 100; ++step) {
    now += 1.0;  // 1 s and 1000 tokens per step
    bar.update(step, 2.0, 0.5, 1000);
  }
  bar.finish();
  bar.finish();  // idempotent
  const std::string text = out.text();
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_EQ(bar.lines_printed(), 21);  // step 1, then 5, 10, ..., 100
  EXPECT_NE(text.find("[#####.....] step 50/100  loss 2.000  sparsity 50.0%  1.0K tok/s  ETA 50s\n"),
            std::string::npos);
  EXPECT_EQ(text.substr(text.rfind("[")),
            "[##########] step 100/100  loss 2.000  sparsity 50.0%  1.0K tok/s  ETA 0s\n");
}

TEST(ProgressBar, LogModeAlsoPrintsOnTime) {
  Captured out;
  double now = 0;
  ProgressBar::Options opt;
  opt.out = out.f;
  opt.tty = false;
  opt.plain_every_s = 30;
  opt.clock = [&] { return now; };
  ProgressBar bar(1000, 500, opt);  // resumed at step 500
  for (int64_t step = 501; step <= 510; ++step) {
    now += 31;
    bar.update(step, 1.0, std::nullopt, 10);
  }
  EXPECT_EQ(bar.lines_printed(), 10);  // every update: 31 s apart
  bar.finish();
  EXPECT_EQ(bar.lines_printed(), 10);  // the last state was already printed
  // Rate and ETA count this process's steps only: 10 steps in 310 s.
  EXPECT_NE(out.text().find("step 510/1000  loss 1.000  0 tok/s  ETA 4h13m"), std::string::npos);
}

// train.log_every: a log gets a line exactly every N steps (no time-based lines in between), plus
// the final state; a terminal ignores it.
TEST(ProgressBar, LogModeEveryNSteps) {
  Captured out;
  double now = 0;
  ProgressBar::Options opt;
  opt.out = out.f;
  opt.tty = false;
  opt.plain_every_s = 30;
  opt.every_steps = 3;
  opt.clock = [&] { return now; };
  ProgressBar bar(10, 0, opt);
  for (int64_t step = 1; step <= 10; ++step) {
    now += 100;  // far past plain_every_s: time does not add lines
    bar.update(step, 1.0, std::nullopt, 10);
  }
  EXPECT_EQ(bar.lines_printed(), 3);  // steps 3, 6, 9
  bar.finish();
  EXPECT_EQ(bar.lines_printed(), 4);  // and the final step 10
  const std::string text = out.text();
  for (const char* s : {"step 3/10 ", "step 6/10 ", "step 9/10 ", "step 10/10 "})
    EXPECT_NE(text.find(s), std::string::npos) << s << "\n" << text;
  for (const char* s : {"step 1/10 ", "step 2/10 ", "step 4/10 ", "step 5/10 "})
    EXPECT_EQ(text.find(s), std::string::npos) << s << "\n" << text;
}

TEST(ProgressBar, TerminalRedrawsInPlace) {
  Captured out;
  double now = 0;
  ProgressBar::Options opt;
  opt.out = out.f;
  opt.tty = true;
  opt.clock = [&] { return now; };
  ProgressBar bar(3, 0, opt);
  for (int64_t step = 1; step <= 3; ++step) {
    now += 1;
    bar.update(step, 1.5, 0.25, 100);
  }
  bar.finish();
  const std::string text = out.text();
  EXPECT_EQ(text.rfind("\r[###] step 3/3", 0), std::string::npos);  // not the first draw
  EXPECT_EQ(std::count(text.begin(), text.end(), '\r'), 4);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_NE(text.find("\r[###.......] step 1/3  loss 1.500  sparsity 25.0%  100 tok/s  ETA 2s\033[K"),
            std::string::npos);
}

// On a terminal narrower than the line, the redrawn line is cut to its width (a wrapped line
// would leave a trail of stale rows, since \r redraws only the last one).
TEST(ProgressBar, TerminalLineFitsTheWidth) {
  const char* old = std::getenv("COLUMNS");
  const std::string saved = old ? old : "";
  ::setenv("COLUMNS", "30", 1);  // the capture file is no terminal: terminal_columns falls back to $COLUMNS
  Captured out;
  double now = 0;
  ProgressBar::Options opt;
  opt.out = out.f;
  opt.tty = true;
  opt.clock = [&] { return now; };
  ProgressBar bar(3, 0, opt);
  now += 1;
  bar.update(1, 1.5, 0.25, 100);
  bar.finish();
  if (old) ::setenv("COLUMNS", saved.c_str(), 1);
  else ::unsetenv("COLUMNS");
  const std::string text = out.text();
  size_t pos = 0;
  int lines = 0;
  while ((pos = text.find('\r', pos)) != std::string::npos) {
    const size_t end = text.find("\033[K", pos);
    ASSERT_NE(end, std::string::npos) << text;
    EXPECT_LE(end - pos - 1, 30u) << text.substr(pos + 1, end - pos - 1);
    ++lines;
    pos = end;
  }
  EXPECT_EQ(lines, 2);
}

}  // namespace
}  // namespace rt::test
