// PCRE2 wrapper for the pre-tokenizer Split patterns. tokenizer.json patterns are written for
// Oniguruma (what HF `tokenizers` uses). With PCRE2_UTF | PCRE2_UCP the constructs these files
// use (\p{L}, \p{N}, (?i:...), look-ahead) mean the same; the escapes that differ (\s, \h) are
// rewritten to Oniguruma's meaning before compiling (see regex.cpp).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace rt::tok {

class Regex {
 public:
  // `literal`: match `pattern` as plain text (Split's {"String": ...} form). Throws rt::Error with
  // PCRE2's message and the offset of the error in the pattern.
  explicit Regex(const std::string& pattern, bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // All non-overlapping matches [begin, end) in `text` (valid UTF-8), left to right, with the
  // iteration rule of the Oniguruma binding HF uses: an empty match right where the previous
  // match ended is skipped by advancing one character. Thread-safe.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
};

}  // namespace rt::tok
