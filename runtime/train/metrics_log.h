// OUT/metrics.jsonl: one JSON object per line, flushed as written, so a crashed run's metrics
// survive up to its last step. On resume from step S the lines of steps after S (written after
// the checkpoint the run resumes from) are dropped first, so a resumed run's file equals that of a
// run that was never interrupted.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace rt {

class MetricsLog {
 public:
  // resume_step == nullopt: a fresh run; the file is emptied. Otherwise the file is kept up to
  // resume_step: lines whose integer "step" is greater are removed (lines without a step are
  // kept), as is a torn last line (no newline, not valid JSON) of a crash. Any other invalid
  // line is an rt::Error naming file:line. The rewrite is atomic (temp file + rename).
  MetricsLog(const std::filesystem::path& out_dir, std::optional<int64_t> resume_step);

  // One line, flushed. Records are compact JSON in the caller's key order.
  void append(const nlohmann::ordered_json& record);

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::ofstream out_;
};

// The truncation step alone (also what the constructor does on resume).
void truncate_metrics_after(const std::filesystem::path& file, int64_t step);

}  // namespace rt
