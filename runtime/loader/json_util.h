// Strict JSON helpers shared by the safetensors header, config.json and the shard index parsers.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace rt {

// Parses `text` as one JSON value. Unlike plain nlohmann::json::parse it rejects duplicate object
// keys (nlohmann silently keeps the last one, which would let two entries for one tensor pass) and
// nesting deeper than `max_depth`. Errors name `what` and, for syntax errors, the byte position.
nlohmann::json parse_json_strict(std::string_view text, const std::string& what, int max_depth = 64);

// "null", "boolean", "integer", "number", "string", "array", "object": for "expected X, found Y".
std::string json_type_name(const nlohmann::json& j);

// The value as compact JSON, cut to `max_chars` so error messages stay one line.
std::string json_brief(const nlohmann::json& j, size_t max_chars = 60);

// True for JSON integers (signed or unsigned), false for floats even when integral (1.0).
inline bool json_is_integer(const nlohmann::json& j) {
  return j.is_number_integer() || j.is_number_unsigned();
}

}  // namespace rt
