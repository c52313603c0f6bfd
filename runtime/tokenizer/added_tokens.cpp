#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/unicode_props.h"
#include "tokenizer/utf8.h"

namespace rt::tok {
namespace {

// The code point that ends at byte `end` (exclusive) of `s`.
char32_t last_char(std::string_view s, size_t end, size_t* begin_out = nullptr) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80 && end - b < 4) --b;
  size_t len;
  const char32_t c = decode_utf8(s, b, len);
  if (begin_out) *begin_out = b;
  return c;
}

// HF uses the regexes \w$, ^\w, \s*$ and ^\s* (Rust regex crate, Unicode classes).
bool ends_with_word(std::string_view s, size_t end) { return end > 0 && is_word_char(last_char(s, end)); }

bool starts_with_word(std::string_view s, size_t begin) {
  if (begin >= s.size()) return false;
  size_t len;
  return is_word_char(decode_utf8(s, begin, len));
}

size_t trailing_space_start(std::string_view s, size_t end) {
  while (end > 0) {
    size_t b;
    if (!is_white_space(last_char(s, end, &b))) break;
    end = b;
  }
  return end;
}

size_t leading_space_end(std::string_view s, size_t begin) {
  while (begin < s.size()) {
    size_t len;
    if (!is_white_space(decode_utf8(s, begin, len))) break;
    begin += len;
  }
  return begin;
}

}  // namespace

void AddedTokenMatcher::build(std::vector<const AddedToken*> tokens, std::vector<std::string> patterns) {
  tokens_ = std::move(tokens);
  trie_.assign(1, Node{});
  std::fill(std::begin(first_byte_), std::end(first_byte_), false);
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& p = patterns[t];
    if (p.empty()) continue;  // HF ignores empty tokens
    first_byte_[static_cast<unsigned char>(p[0])] = true;
    int32_t node = 0;
    for (unsigned char b : p) {
      int32_t nx = child(node, b);
      if (nx < 0) {
        nx = static_cast<int32_t>(trie_.size());
        auto& next = trie_[node].next;
        next.insert(std::lower_bound(next.begin(), next.end(), std::make_pair(b, int32_t{0})),
                    {b, nx});
        trie_.emplace_back();
      }
      node = nx;
    }
    if (trie_[node].token < 0) trie_[node].token = static_cast<int32_t>(t);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, unsigned char b) const {
  const auto& next = trie_[node].next;
  auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(b, int32_t{0}));
  return it != next.end() && it->first == b ? it->second : -1;
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t pos, size_t& len) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    node = child(node, static_cast<unsigned char>(text[i]));
    if (node < 0) break;
    if (trie_[node].token >= 0) {
      best = trie_[node].token;
      len = i + 1 - pos;
    }
  }
  return best;
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  if (text.empty()) {
    out.push_back({0, 0, -1});
    return;
  }
  size_t start_offset = 0;  // end of the previous emitted segment
  size_t pos = 0;           // where the match search resumes (the raw end of the last match)
  while (pos < text.size() && !tokens_.empty()) {
    // Leftmost-longest: the first position where any pattern matches, longest pattern there.
    size_t len = 0;
    int32_t t = -1;
    for (; pos < text.size(); ++pos) {
      if (!first_byte_[static_cast<unsigned char>(text[pos])]) continue;
      t = longest_at(text, pos, len);
      if (t >= 0) break;
    }
    if (t < 0) break;
    size_t start = pos, stop = pos + len;
    pos = stop;
    const AddedToken& tok = *tokens_[t];
    if (tok.single_word && (ends_with_word(text, start) || starts_with_word(text, stop))) continue;
    if (tok.lstrip) start = std::max(trailing_space_start(text, start), start_offset);
    if (tok.rstrip) stop = leading_space_end(text, stop);
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, tok.id});
    // HF keeps going from the raw match end even when rstrip consumed further; a later token
    // starting inside that whitespace is still emitted, as there.
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
}

}  // namespace rt::tok
