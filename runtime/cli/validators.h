// CLI11 validators whose messages say what the flag needs, in one short line ("--steps: must be
// >= 1, found 0"), instead of CLI11's range message with a 300-digit upper bound.
#pragma once

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <thread>

namespace rt {

// An integer >= min.
inline CLI::Validator at_least(int64_t min) {
  return CLI::Validator(
      [min](std::string& v) -> std::string {
        try {
          size_t used = 0;
          const long long x = std::stoll(v, &used);
          if (used == v.size() && x >= min) return "";
        } catch (const std::exception&) {
        }
        return "must be an integer >= " + std::to_string(min) + ", found '" + v + "'";
      },
      ">=" + std::to_string(min));
}

// An integer in [min, max].
inline CLI::Validator int_in(int64_t min, int64_t max, const std::string& why_max = "") {
  return CLI::Validator(
      [min, max, why_max](std::string& v) -> std::string {
        try {
          size_t used = 0;
          const long long x = std::stoll(v, &used);
          if (used == v.size() && x >= min && x <= max) return "";
        } catch (const std::exception&) {
        }
        return "must be an integer from " + std::to_string(min) + " to " + std::to_string(max) + why_max + ", found '" +
               v + "'";
      },
      std::to_string(min) + ".." + std::to_string(max));
}

inline std::string short_number(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

// A finite number in [min, max] (NaN and infinities refused: they pass CLI11's ranges).
inline CLI::Validator finite_in(double min, double max) {
  return CLI::Validator(
      [min, max](std::string& v) -> std::string {
        try {
          size_t used = 0;
          const double x = std::stod(v, &used);
          if (used == v.size() && std::isfinite(x) && x >= min && x <= max) return "";
        } catch (const std::exception&) {
        }
        return "must be a finite number from " + short_number(min) + " to " + short_number(max) +
               ", found '" + v + "'";
      },
      "[" + short_number(min) + ", " + short_number(max) + "]");
}

// --threads: 0 (all cores) up to 4 threads per hardware thread; more only makes the OpenMP runtime
// fail to create them.
inline CLI::Validator thread_count() {
  const int64_t hw = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  return int_in(0, 4 * hw, " (4 per hardware thread of this machine)");
}

// A path that is not the empty string (which the filesystem calls would reject naming nothing).
inline CLI::Validator non_empty_path() {
  return CLI::Validator([](std::string& v) -> std::string { return v.empty() ? "must not be an empty path" : ""; },
                        "PATH");
}

}  // namespace rt
