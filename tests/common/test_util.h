// Helpers every test area shares (tests/CMakeLists.txt puts tests/common on every test's include
// path): seeded random inputs, relative errors, rounding through a 16-bit dtype, NaN poisoning,
// wall-clock timing, temporary directories and files, EXPECT_THROW_MSG, EXPECT_HAS and error_of.
// Header-only, host-only (no CUDA header), namespace
// rt::test. The per-area headers (backends/cpu_test_util.h, cuda/cuda_test_util.h, ...) build on it.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "rt/sdk/error.h"
#include "rt/sdk/ops.h"
#include "rt/sdk/half.h"
#include "rt/sdk/tensor.h"

namespace rt::test {

namespace fs = std::filesystem;

// ---- Random inputs ------------------------------------------------------------------------------
// Two streams, both from std::mt19937_64(seed), so that existing tests keep their numbers:
//   randn      f32 draws (std::normal_distribution<float>), the CUDA tests' inputs;
//   randn_f64  f64 draws rounded to f32, returned as doubles: f32 and f64 buffers filled from one
//              seed hold the same numbers (the CPU f32-vs-f64 and finite-difference tests).
inline std::vector<float> randn(size_t n, uint64_t seed, float sd = 1.f, float mean = 0.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> x(n);
  for (float& v : x) v = nd(rng) + mean;
  return x;
}
inline std::vector<double> randn_f64(size_t n, uint64_t seed, double sd = 1.0, double mean = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(mean, sd);
  std::vector<double> x(n);
  for (double& v : x) v = static_cast<float>(nd(rng));
  return x;
}

// ---- Errors -------------------------------------------------------------------------------------
// |got - want|_F / |want|_F, in double (absolute |got - want|_F where want is all zero). +inf when
// got holds a non-finite value that want does not (equal infinities count as agreement), so a NaN
// never passes a tolerance. Element types may differ (float, double).
template <class G, class W>
double rel_err(const std::vector<G>& got, const std::vector<W>& want) {
  EXPECT_EQ(got.size(), want.size()) << "rel_err: sizes differ";
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    if (!std::isfinite(g)) {
      if (g == w) continue;
      return std::numeric_limits<double>::infinity();
    }
    num += (g - w) * (g - w);
    den += w * w;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}
// The same, skipping the non-finite entries of got and counting them in `bad` (for tests that
// report unwritten outputs separately from the error).
template <class G, class W>
double rel_err(const std::vector<G>& got, const std::vector<W>& want, size_t& bad) {
  double num = 0, den = 0;
  bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    if (!std::isfinite(g)) {
      ++bad;
      continue;
    }
    const double d = g - static_cast<double>(want[i]);
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

template <class T>
size_t count_nonfinite(const std::vector<T>& v) {
  return static_cast<size_t>(std::count_if(v.begin(), v.end(), [](T x) { return !std::isfinite(x); }));
}

// ---- Dtypes -------------------------------------------------------------------------------------
// v rounded through dt (identity for f32 and f64): the values a tensor of dtype dt holds.
inline std::vector<float> rounded(std::vector<float> v, DType dt) {
  if (dt == DType::BF16)
    for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
  else if (dt == DType::F16)
    for (float& x : v) x = f16_to_f32(f32_to_f16(x));
  return v;
}

// Fills a contiguous host view with NaN (f64, f32; all-ones bits, NaN in bf16 and f16, -1 in i32):
// an output a kernel forgets to write stays NaN.
inline void poison_host(const TensorView& v) {
  const int64_t n = v.numel();
  if (v.dtype == DType::F64)
    for (int64_t i = 0; i < n; ++i) static_cast<double*>(v.data)[i] = std::numeric_limits<double>::quiet_NaN();
  else if (v.dtype == DType::F32)
    for (int64_t i = 0; i < n; ++i) static_cast<float*>(v.data)[i] = std::numeric_limits<float>::quiet_NaN();
  else
    std::memset(v.data, 0xff, v.nbytes());
}

// ---- Timing -------------------------------------------------------------------------------------
// Wall-clock time since construction (or reset()). Device work must be synchronized before
// reading it (Ops::synchronize()).
struct Stopwatch {
  using Clock = std::chrono::steady_clock;
  Clock::time_point t0 = Clock::now();
  void reset() { t0 = Clock::now(); }
  double ms() const { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }
  double seconds() const { return ms() / 1e3; }
};

// Median wall time in ms of `repeats` calls of f, after `warmup` untimed calls; sync() runs after
// each call, inside the timed region (pass [&] { ops.synchronize(); } for device work).
template <class F, class S>
double median_ms(F&& f, S&& sync, int repeats = 5, int warmup = 1) {
  for (int i = 0; i < warmup; ++i) {
    f();
    sync();
  }
  std::vector<double> t;
  for (int i = 0; i < std::max(repeats, 1); ++i) {
    Stopwatch w;
    f();
    sync();
    t.push_back(w.ms());
  }
  std::sort(t.begin(), t.end());
  return t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
}


// The message of the rt::Error that f throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ::rt::Error& e) {
    return e.what();
  }
  return "";
}


// ---- Files -------------------------------------------------------------------------------------
// A fresh directory under $TMPDIR, removed with everything in it at scope exit.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "rt_test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (tag + "_XXXXXX")).string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}
inline void write_file(const std::filesystem::path& p, const std::vector<uint8_t>& bytes) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                           static_cast<std::streamsize>(bytes.size()));
}
inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// An AttentionSpec from the four fields the attention tests vary.
inline ::rt::AttentionSpec attention_spec(bool causal, int64_t window, int64_t q_pos0, int64_t k_pos0) {
  ::rt::AttentionSpec s;
  s.causal = causal;
  s.window = window;
  s.q_pos0 = q_pos0;
  s.k_pos0 = k_pos0;
  return s;
}

}  // namespace rt::test

// The statement throws rt::Error whose message contains every given string.
#define EXPECT_THROW_MSG(stmt, ...)                                                                  \
  do {                                                                                               \
    try {                                                                                            \
      stmt;                                                                                          \
      ADD_FAILURE() << "no rt::Error from " #stmt;                                                   \
    } catch (const rt::Error& e) {                                                                   \
      const std::string msg = e.what();                                                              \
      for (const char* want : {__VA_ARGS__})                                                         \
        EXPECT_NE(msg.find(want), std::string::npos) << "message: " << msg << "\nmissing: " << want; \
    }                                                                                                \
  } while (0)

// `msg` contains every one of the given strings.
#define EXPECT_HAS(msg, ...)                                                                   \
  do {                                                                                         \
    const std::string m_ = (msg);                                                              \
    for (const std::string& p_ : std::initializer_list<std::string>{__VA_ARGS__})              \
      EXPECT_NE(m_.find(p_), std::string::npos) << "message: " << m_ << "\nmissing: " << p_;   \
  } while (0)
