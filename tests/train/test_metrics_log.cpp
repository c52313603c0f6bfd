// metrics.jsonl: fresh runs start empty, lines are flushed as written, and a resumed run's file
// equals an uninterrupted run's.
#include "train/metrics_log.h"
#include "test_util.h"

namespace rt::test {
namespace {

nlohmann::ordered_json record(int64_t step) {
  return {{"step", step}, {"loss", 10.0 / static_cast<double>(step)}, {"lr", 1e-4}};
}

TEST(MetricsLog, FreshRunWritesFlushedLines) {
  TempDir out;
  {
    MetricsLog log(out.path(), std::nullopt);
    log.append(record(1));
    // Flushed: visible before the log is closed.
    EXPECT_EQ(read_file(out / "metrics.jsonl"), "{\"step\":1,\"loss\":10.0,\"lr\":0.0001}\n");
    log.append({{"step", 2}, {"note", "caf\xc3\xa9"}});
  }
  EXPECT_EQ(read_file(out / "metrics.jsonl"),
            "{\"step\":1,\"loss\":10.0,\"lr\":0.0001}\n{\"step\":2,\"note\":\"caf\xc3\xa9\"}\n");
  // A fresh run in the same directory starts over.
  MetricsLog again(out.path(), std::nullopt);
  EXPECT_EQ(read_file(out / "metrics.jsonl"), "");
}

TEST(MetricsLog, ResumedRunEqualsUninterruptedRun) {
  TempDir a, b;
  {  // uninterrupted
    MetricsLog log(a.path(), std::nullopt);
    log.append({{"event", "start"}});
    for (int64_t s = 1; s <= 10; ++s) log.append(record(s));
  }
  {  // crashed after step 8, with a torn ninth line; the last checkpoint is step 6
    MetricsLog log(b.path(), std::nullopt);
    log.append({{"event", "start"}});
    for (int64_t s = 1; s <= 8; ++s) log.append(record(s));
  }
  {
    std::ofstream f(b / "metrics.jsonl", std::ios::app | std::ios::binary);
    f << "{\"step\":9,\"lo";
  }
  {
    MetricsLog log(b.path(), int64_t{6});
    std::string kept = read_file(b / "metrics.jsonl");
    EXPECT_EQ(std::count(kept.begin(), kept.end(), '\n'), 7);  // start + steps 1..6
    for (int64_t s = 7; s <= 10; ++s) log.append(record(s));
  }
  EXPECT_EQ(read_file(b / "metrics.jsonl"), read_file(a / "metrics.jsonl"));
}

TEST(MetricsLog, ResumeWithoutFileAndAtStepZero) {
  TempDir out;
  {
    MetricsLog log(out.path(), int64_t{5});  // no file yet: fine
    log.append(record(6));
  }
  EXPECT_EQ(read_file(out / "metrics.jsonl"), record(6).dump() + "\n");
  truncate_metrics_after(out / "metrics.jsonl", 0);
  EXPECT_EQ(read_file(out / "metrics.jsonl"), "");
}

TEST(MetricsLog, CorruptMiddleLineIsAnError) {
  TempDir out;
  write_file(out / "metrics.jsonl", "{\"step\":1}\nnot json\n{\"step\":2}\n");
  EXPECT_HAS(error_of([&] { MetricsLog(out.path(), int64_t{1}); }), "metrics.jsonl:2", "invalid JSON");
}

}  // namespace
}  // namespace rt::test
