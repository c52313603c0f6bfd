// The one exception type of the project. Messages are written for the user: they name the file,
// field or value at fault and what was expected, so that the CLI can print them as they are.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace rt {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// fail("safetensors ", path, ": header length ", n, " exceeds file size ", size)
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(detail::concat(std::forward<Args>(args)...));
}

#define RT_CHECK(cond, ...)                     \
  do {                                          \
    if (!(cond)) ::rt::fail(__VA_ARGS__);       \
  } while (0)

}  // namespace rt
