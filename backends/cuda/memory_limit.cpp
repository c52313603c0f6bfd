#include "cuda/memory_limit.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "rt/sdk/error.h"

namespace rt::cuda {

size_t parse_memory_size(std::string_view value, const char* var) {
  const auto bad = [&]() -> size_t {
    fail(var, "='", std::string(value), "': expected a memory size such as 24GiB, 1536MiB, 24GB or a byte count");
  };
  size_t i = 0;
  while (i < value.size() && (std::isdigit(static_cast<unsigned char>(value[i])) || value[i] == '.')) ++i;
  const std::string number(value.substr(0, i));
  if (number.empty() || number.find('.') != number.rfind('.') || number == ".") return bad();
  std::string unit;
  for (char c : value.substr(i))
    if (c != ' ') unit += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  double scale = 0;
  if (unit.empty() || unit == "b") scale = 1;
  else if (unit == "kib") scale = 1024.0;
  else if (unit == "mib") scale = 1024.0 * 1024;
  else if (unit == "gib") scale = 1024.0 * 1024 * 1024;
  else if (unit == "tib") scale = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "kb") scale = 1e3;
  else if (unit == "mb") scale = 1e6;
  else if (unit == "gb") scale = 1e9;
  else if (unit == "tb") scale = 1e12;
  else return bad();
  const double bytes = std::strtod(number.c_str(), nullptr) * scale;
  if (!(bytes >= 1) || bytes != std::floor(bytes) ||
      bytes >= static_cast<double>(std::numeric_limits<size_t>::max()))
    return bad();
  return static_cast<size_t>(bytes);
}

size_t memory_limit_bytes() {
  static const size_t limit = [] {
    const char* v = std::getenv("RT_CUDA_MEMORY_LIMIT");
    return v == nullptr || !*v ? size_t{0} : parse_memory_size(v, "RT_CUDA_MEMORY_LIMIT");
  }();
  return limit;
}

}  // namespace rt::cuda
