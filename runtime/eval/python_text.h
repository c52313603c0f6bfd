// Python's string semantics where lm-evaluation-harness relies on them, so that our requests and
// counts are the harness's to the character: str.isspace / rstrip, str.capitalize, len (code
// points), re.sub and re.split(r"\s+") on str patterns (Unicode \s). Inputs are valid UTF-8.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace rt::eval {

bool py_isspace(char32_t c);
// Code points of `s` (Python's len of a str).
int64_t py_len(std::string_view s);
// Bytes of the trailing whitespace that str.rstrip() removes.
size_t py_rstrip_bytes(std::string_view s);
// str.strip().
std::string py_strip(std::string_view s);
// str.capitalize(): the first character title-cased, the rest lower-cased (full Unicode mappings).
std::string py_capitalize(std::string_view s);
// re.sub(pattern, repl, s) for a str pattern: every non-overlapping match replaced; \1..\9 in repl
// are groups.
std::string py_re_sub(const std::string& pattern, const std::string& repl, std::string_view s);
// str.replace(old, new) (every occurrence, left to right, non-overlapping).
std::string py_replace(std::string_view s, std::string_view old, std::string_view repl);
// len(re.split(r"\s+", s)): whitespace runs + 1 (empty leading/trailing pieces count).
int64_t py_split_ws_count(std::string_view s);
// Throws rt::Error (naming `where`) unless s is valid UTF-8.
void check_utf8(std::string_view s, const std::string& where);

}  // namespace rt::eval
