#include "eval/python_text.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/unistr.h>
#include <unicode/locid.h>
#include <unicode/stringoptions.h>

#include <memory>

#include "rt/sdk/error.h"

namespace rt::eval {
namespace {

// Decodes one code point at s[i] (valid UTF-8 assumed), advancing i.
char32_t next_cp(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  int n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  char32_t c = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < n && i + k < s.size(); ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return c;
}

}  // namespace

bool py_isspace(char32_t c) {
  // str.isspace(): bidirectional class WS, B or S, or category Zs (CPython's _PyUnicode_IsWhitespace).
  switch (c) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x1C: case 0x1D: case 0x1E: case 0x1F:
    case 0x20: case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

int64_t py_len(std::string_view s) {
  int64_t n = 0;
  for (unsigned char b : s) n += (b & 0xC0) != 0x80;
  return n;
}

size_t py_rstrip_bytes(std::string_view s) {
  size_t keep = 0, i = 0;
  while (i < s.size()) {
    const char32_t c = next_cp(s, i);
    if (!py_isspace(c)) keep = i;
  }
  return s.size() - keep;
}

std::string py_strip(std::string_view s) {
  size_t i = 0, start = s.size();
  while (i < s.size()) {
    const size_t at = i;
    if (!py_isspace(next_cp(s, i))) {
      start = at;
      break;
    }
  }
  if (start == s.size()) return "";
  const std::string_view rest = s.substr(start);
  return std::string(rest.substr(0, rest.size() - py_rstrip_bytes(rest)));
}

std::string py_capitalize(std::string_view s) {
  if (s.empty()) return "";
  size_t i = 0;
  next_cp(s, i);
  // Python 3.8+: the first character in title case, the rest lower case (full mappings, root
  // locale), the rest lower-cased in the context of the whole string: a capital sigma after a cased
  // letter and before no cased letter is the final form (so "ΌΣ x" -> "Ός x"). ICU's toLower applies
  // the same Final_Sigma rule to the whole string; the first character maps alone either way (it
  // follows nothing), so its lower-case mapping is cut off the front.
  const icu::UnicodeString whole = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  icu::UnicodeString first = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(i)));
  icu::UnicodeString first_lower = first;
  first_lower.toLower(icu::Locale::getRoot());
  icu::UnicodeString lower = whole;
  lower.toLower(icu::Locale::getRoot());
  RT_CHECK(lower.startsWith(first_lower), "eval: capitalize: the lower-case mapping of the first character is not a "
                                          "prefix of the whole string's");
  first.toTitle(nullptr, icu::Locale::getRoot(), U_TITLECASE_NO_LOWERCASE | U_TITLECASE_NO_BREAK_ADJUSTMENT);
  std::string out;
  first.toUTF8String(out);
  icu::UnicodeString(lower, first_lower.length()).toUTF8String(out);
  return out;
}

std::string py_replace(std::string_view s, std::string_view old, std::string_view repl) {
  if (old.empty()) return std::string(s);
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(old, pos)) != std::string_view::npos; pos = hit + old.size()) {
    out.append(s.substr(pos, hit - pos));
    out.append(repl);
  }
  out.append(s.substr(pos));
  return out;
}

namespace {

// Python's \s in a str pattern is str.isspace() (py_isspace), which is not PCRE2's Unicode \s:
// Python counts U+001C..U+001F, PCRE2 counts U+180E. Members of a character class.
constexpr const char* kPySpaceMembers =
    "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
    "\\x{205f}\\x{3000}";

// The pattern with every \s and \S spelled as Python's classes.
std::string python_space_classes(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kPySpaceMembers) : "[" + std::string(kPySpaceMembers) + "]";
      } else if (e == 'S') {
        RT_CHECK(!in_class, "eval: regex '", pattern, "': \\S inside a character class is not supported");
        out += "[^" + std::string(kPySpaceMembers) + "]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // a literal ] first
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

std::string py_re_sub(const std::string& python_pattern, const std::string& repl, std::string_view s) {
  const std::string pattern = python_space_classes(python_pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  std::unique_ptr<pcre2_code, void (*)(pcre2_code*)> code(
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                    &off, nullptr),
      pcre2_code_free);
  RT_CHECK(code != nullptr, "eval: bad regex '", pattern, "' at offset ", off);
  // Python's \1 is PCRE2's $1 (and a literal $ must be $$).
  std::string r;
  for (size_t i = 0; i < repl.size(); ++i) {
    if (repl[i] == '\\' && i + 1 < repl.size() && repl[i + 1] >= '1' && repl[i + 1] <= '9') {
      r += '$';
      r += repl[++i];
    } else if (repl[i] == '$') {
      r += "$$";
    } else {
      r += repl[i];
    }
  }
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(
      pcre2_match_data_create_from_pattern(code.get(), nullptr), pcre2_match_data_free);
  std::string out(s.size() * 2 + 64, '\0');
  for (;;) {
    PCRE2_SIZE len = out.size();
    const int rc = pcre2_substitute(code.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0,
                                    PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH, md.get(), nullptr,
                                    reinterpret_cast<PCRE2_SPTR>(r.data()), r.size(),
                                    reinterpret_cast<PCRE2_UCHAR*>(out.data()), &len);
    if (rc == PCRE2_ERROR_NOMEMORY) {
      out.resize(len);
      continue;
    }
    RT_CHECK(rc >= 0, "eval: regex substitution failed for '", pattern, "' (PCRE2 error ", rc, ")");
    out.resize(len);
    return out;
  }
}

int64_t py_split_ws_count(std::string_view s) {
  int64_t runs = 0;
  bool in_ws = false;
  size_t i = 0;
  while (i < s.size()) {
    const bool ws = py_isspace(next_cp(s, i));
    if (ws && !in_ws) ++runs;
    in_ws = ws;
  }
  return runs + 1;
}

void check_utf8(std::string_view s, const std::string& where) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    const int n = b < 0x80 ? 1 : (b >= 0xC2 && b < 0xE0) ? 2 : (b >= 0xE0 && b < 0xF0) ? 3 : (b >= 0xF0 && b < 0xF5) ? 4 : 0;
    RT_CHECK(n > 0 && i + n <= s.size(), where, ": invalid UTF-8 at byte ", i);
    for (int k = 1; k < n; ++k)
      RT_CHECK((static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80, where, ": invalid UTF-8 at byte ", i);
    i += n;
  }
}

}  // namespace rt::eval
