// CLI11 validators whose messages say what the flag needs, in one short line ("--steps: must be
// >= 1, found 0"), instead of CLI11's range message with a 300-digit upper bound.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

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

}  // namespace rt
