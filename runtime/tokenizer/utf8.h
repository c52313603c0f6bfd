// Minimal UTF-8 helpers shared by the tokenizer parts. Decoding follows the Unicode "maximal
// subpart" rule for ill-formed input (one U+FFFD per maximal invalid subsequence), which is what
// Rust's String::from_utf8_lossy does and therefore what HF `tokenizers` produces on decode.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace rt::tok {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes the code point at s[i]. On success returns it and sets `len` to its byte length; on an
// ill-formed sequence returns kReplacementChar and sets `len` to the length of the maximal
// invalid subpart (>= 1), and sets *valid = false when `valid` is given.
char32_t decode_utf8(std::string_view s, size_t i, size_t& len, bool* valid = nullptr);

// Appends the UTF-8 encoding of `cp` (assumed to be a valid scalar value).
void append_utf8(std::string& out, char32_t cp);

// True when `s` is well-formed UTF-8.
bool is_valid_utf8(std::string_view s);

// Returns `s` with every maximal invalid subsequence replaced by U+FFFD.
std::string to_valid_utf8(std::string_view s);

}  // namespace rt::tok
