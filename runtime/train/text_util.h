// Small text helpers shared by the trainer's files: numbers written so they read back exactly, and
// a content hash that is the same on every platform.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace rt {

// Shortest text that parses back to exactly `v` (std::to_chars): 0.1 -> "0.1", 5e6 -> "5e+06",
// 1.0 -> "1". "nan", "inf", "-inf" for non-finite values.
std::string format_double(double v);

// FNV-1a 64-bit of the bytes, as 16 lowercase hex digits. Not cryptographic: it identifies a
// config, it does not protect it.
std::string fnv1a64_hex(std::string_view bytes);

}  // namespace rt
