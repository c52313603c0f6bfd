// Helpers for the CLI tests: run a program (fork/exec through posix_spawn, no shell), temporary
// directories, fixture copies, safetensors header surgery, and error-message checks.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"  // TempDir

namespace rt::test {

namespace fs = std::filesystem;

struct RunResult {
  std::vector<std::string> argv;
  bool exited = false;     // the process called exit(); exit_code is valid
  int exit_code = -1;
  int signal = 0;          // killed by this signal (always a failure: we never abort or crash)
  bool timed_out = false;  // we killed it after the deadline
  double seconds = 0;
  std::string out, err;

  bool ok() const { return exited && exit_code == 0; }
  std::string status() const;    // "exited with code N" / "killed by signal S (SIGSEGV)" / "timed out ..."
  std::string describe() const;  // command line, status, stdout and stderr (tails)
};

// Runs argv[0] (an absolute path) with argv, stdin from /dev/null, capturing stdout and stderr.
// The child is killed (SIGKILL) after timeout_s.
RunResult run_process(const std::vector<std::string>& argv, double timeout_s = 120);

// The runtime binary: $RT_RUNTIME_BIN if set, else RT_BIN_DIR "/runtime".
fs::path runtime_bin();
// Runs `runtime args...`.
RunResult run_runtime(const std::vector<std::string>& args, double timeout_s = 120);
// gtest assertion helper: the runtime binary exists and is executable.
::testing::AssertionResult runtime_available();

fs::path fixtures_dir();                       // RT_FIXTURES_DIR "/models"
fs::path l2a_dir();                            // RT_FIXTURES_DIR "/l2a" (tools/make_l2a_fixtures.py)
// The rows of a JSON-lines file such as a training run's metrics.jsonl.
std::vector<nlohmann::json> read_jsonl(const fs::path& path);
fs::path fixture_model(const std::string& name);
nlohmann::json read_json(const fs::path& path);
void write_text(const fs::path& path, const std::string& text);
std::string read_text(const fs::path& path);

// Copies fixture model `name` into `dir`/`name` and returns that path.
fs::path copy_fixture(const std::string& name, const TempDir& dir);

// A .safetensors file split into its parts: 8-byte header length, JSON header, data region.
struct Safetensors {
  nlohmann::json header;  // tensor name -> {dtype, shape, data_offsets}; plus "__metadata__"
  std::string data;       // the byte buffer the offsets index into
  static Safetensors load(const fs::path& path);
  // Writes the header (serialized, space-padded to 8 bytes) followed by the data.
  void save(const fs::path& path) const;
  std::vector<std::string> tensor_names() const;
  // Drops a tensor: its header entry and its bytes (later offsets shift down, so the data region
  // stays gap-free as the format requires). Returns false if there is no such tensor.
  bool remove_tensor(const std::string& name);
};

// Writes raw bytes: an 8-byte little-endian length, the header bytes, then the data, verbatim.
void write_safetensors_raw(const fs::path& path, uint64_t header_len, const std::string& header_bytes,
                           const std::string& data);

std::string join_ids(const std::vector<int64_t>& ids);
std::string lower(std::string s);

// Relative Frobenius error |out - ref| / |ref| in double; NaN if any value is not finite.
double rel_error(const std::vector<float>& out, const std::vector<float>& ref);

// The runtime failed the way every failure must: exited (no signal, no timeout) with a non-zero
// code, and stderr starts with "error: ". Each string in `all_of` must appear in stderr and, for
// each group in `any_of`, at least one of its strings (all case-insensitive).
::testing::AssertionResult is_clean_error(const RunResult& r, const std::vector<std::string>& all_of,
                                          const std::vector<std::vector<std::string>>& any_of = {});

}  // namespace rt::test
