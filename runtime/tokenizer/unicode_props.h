// Character classes HF `tokenizers` uses outside its regexes, computed with ICU so that they
// follow the same Unicode definitions as Rust's `char` methods and `regex` crate classes.
#pragma once

namespace rt::tok {

bool is_white_space(char32_t c);  // Unicode White_Space (Rust regex \s, char::is_whitespace)
bool is_word_char(char32_t c);    // Rust regex \w: Alphabetic, M, Nd, Pc, Join_Control
bool is_numeric(char32_t c);      // Rust char::is_numeric: general category Nd, Nl or No

}  // namespace rt::tok
