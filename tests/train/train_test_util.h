// Helpers for the trainer-infrastructure tests: temp dirs, files, error-message assertions.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>

#include "rt/sdk/error.h"

namespace rt::test {

namespace fs = std::filesystem;

// A fresh directory under $TMPDIR, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "rt_train_XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& s) const { return path_ / s; }

 private:
  fs::path path_;
};

inline void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The rt::Error message `fn` throws; a test failure (and "") when it throws nothing.
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const rt::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an rt::Error";
  return "";
}

// Asserts that `msg` contains every one of `parts`.
#define EXPECT_HAS(msg, ...)                                                               \
  do {                                                                                     \
    const std::string m_ = (msg);                                                          \
    for (const std::string& p_ : std::initializer_list<std::string>{__VA_ARGS__})          \
      EXPECT_NE(m_.find(p_), std::string::npos) << "message: " << m_ << "\nmissing: " << p_; \
  } while (0)

}  // namespace rt::test
