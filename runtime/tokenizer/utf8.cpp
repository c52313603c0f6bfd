#include "tokenizer/utf8.h"

namespace rt::tok {

char32_t decode_utf8(std::string_view s, size_t i, size_t& len, bool* valid) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  auto bad = [&](size_t n) {
    len = n;
    if (valid) *valid = false;
    return kReplacementChar;
  };
  if (b0 < 0x80) {
    len = 1;
    return b0;
  }
  size_t need;
  char32_t cp;
  // Second-byte ranges from Unicode Table 3-7 (Well-Formed UTF-8 Byte Sequences): they exclude
  // overlongs, surrogates and code points above U+10FFFF, so the maximal subpart is known as
  // soon as one byte falls outside its allowed range.
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return bad(1);
  }
  size_t k = 1;
  for (; k <= need; ++k) {
    if (i + k >= s.size()) return bad(k);
    const unsigned char b = byte(i + k);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return bad(k);
    cp = (cp << 6) | (b & 0x3F);
  }
  len = need + 1;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {  // fast path for ASCII
      ++i;
      continue;
    }
    size_t len;
    bool valid = true;
    decode_utf8(s, i, len, &valid);
    if (!valid) return false;
    i += len;
  }
  return true;
}

std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    size_t len;
    bool valid = true;
    const char32_t cp = decode_utf8(s, i, len, &valid);
    if (valid) {
      out.append(s.substr(i, len));
    } else {
      append_utf8(out, cp);
    }
    i += len;
  }
  return out;
}

}  // namespace rt::tok
