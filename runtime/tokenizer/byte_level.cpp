#include "tokenizer/byte_level.h"

#include "tokenizer/utf8.h"

namespace rt::tok {
namespace {

struct Tables {
  std::array<std::string, 256> to_unicode;
  std::array<int, 512> to_byte;  // every mapped character is below U+0200
};

const Tables& tables() {
  static const Tables kTables = [] {
    Tables t;
    t.to_byte.fill(-1);
    auto kept = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const char32_t c = kept(b) ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      append_utf8(t.to_unicode[b], c);
      t.to_byte[c] = b;
    }
    return t;
  }();
  return kTables;
}

}  // namespace

const std::array<std::string, 256>& byte_to_unicode() { return tables().to_unicode; }

int unicode_to_byte(char32_t c) { return c < 512 ? tables().to_byte[c] : -1; }

std::string bytes_to_unicode_string(std::string_view s) {
  const auto& map = tables().to_unicode;
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char b : s) out += map[b];
  return out;
}

bool unicode_string_to_bytes(std::string_view token, std::string& out) {
  const size_t mark = out.size();
  for (size_t i = 0; i < token.size();) {
    size_t len;
    bool valid = true;
    const char32_t c = decode_utf8(token, i, len, &valid);
    const int b = valid ? unicode_to_byte(c) : -1;
    if (b < 0) {
      out.resize(mark);
      return false;
    }
    out += static_cast<char>(b);
    i += len;
  }
  return true;
}

}  // namespace rt::tok
