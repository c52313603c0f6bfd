#include "train/metrics_log.h"

#include "common/durable_file.h"

#include <cerrno>
#include <cstring>
#include <sstream>
#include <vector>

#include "loader/json_util.h"
#include "rt/sdk/error.h"

namespace rt {

namespace fs = std::filesystem;

void truncate_metrics_after(const fs::path& file, int64_t step) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return;
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string(), ": cannot open: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();

  std::string kept;
  size_t pos = 0;
  for (int64_t line_no = 1; pos < text.size(); ++line_no) {
    size_t end = text.find('\n', pos);
    const bool torn = end == std::string::npos;  // the crash came before the newline
    if (torn) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    nlohmann::json j;
    try {
      j = parse_json_strict(line, file.string() + ":" + std::to_string(line_no));
    } catch (const Error&) {
      if (torn) break;
      throw;
    }
    if (j.is_object()) {
      const auto it = j.find("step");
      if (it != j.end() && json_is_integer(*it) && it->get<int64_t>() > step) continue;
    }
    kept.append(line);
    kept += '\n';
  }

  write_file_atomic(file, kept);
}

MetricsLog::MetricsLog(const fs::path& out_dir, std::optional<int64_t> resume_step)
    : path_(out_dir / "metrics.jsonl") {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail("cannot create ", out_dir.string(), ": ", ec.message());
  if (resume_step) truncate_metrics_after(path_, *resume_step);
  out_.open(path_, std::ios::binary | (resume_step ? std::ios::app : std::ios::trunc));
  if (!out_) fail("cannot open ", path_.string(), " for writing: ", std::strerror(errno));
}

void MetricsLog::append(const nlohmann::ordered_json& record) {
  out_ << record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  out_.flush();
  if (!out_) fail("error writing ", path_.string(), " (disk full?)");
}

}  // namespace rt
