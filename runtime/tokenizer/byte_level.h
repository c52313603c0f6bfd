// GPT-2's reversible byte <-> unicode mapping used by the ByteLevel pre-tokenizer and decoder:
// printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in byte order, so
// every byte becomes one visible character (space -> 'Ġ', '\n' -> 'Ċ').
#pragma once

#include <array>
#include <string>
#include <string_view>

namespace rt::tok {

// UTF-8 encoding of the character standing for each byte.
const std::array<std::string, 256>& byte_to_unicode();

// The byte a character stands for, or -1 when the character is not in the table.
int unicode_to_byte(char32_t c);

// Maps every byte of `s` to its character (the ByteLevel pre-tokenizer's transform).
std::string bytes_to_unicode_string(std::string_view s);

// ByteLevel decoder for one token: the bytes its characters stand for. Returns false (and leaves
// `out` as it was) when some character is not in the table; HF then uses the token's own bytes.
bool unicode_string_to_bytes(std::string_view token, std::string& out);

}  // namespace rt::tok
