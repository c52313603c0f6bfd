// Added tokens (special and not): found in the text before normalization/pre-tokenization, with
// the semantics of HF's AddedVocabulary: leftmost-longest non-overlapping matches, then the
// single_word / lstrip / rstrip rules. Tokens with normalized=false match the raw text; tokens
// with normalized=true match (their normalized content) in the normalized text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace rt::tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;  // HF's default for a non-special token
  bool special = false;
};

// One piece of the input: plain text [begin, end) or an added token (id >= 0).
struct Segment {
  size_t begin, end;
  int32_t id;
};

class AddedTokenMatcher {
 public:
  // `tokens` and `patterns` are parallel: patterns[i] is what tokens[i] matches (its content, or
  // its normalized content). Earlier entries win over later ones with the same pattern.
  // `tokens` must outlive the matcher.
  void build(std::vector<const AddedToken*> tokens, std::vector<std::string> patterns);
  bool empty() const { return tokens_.empty(); }

  // Splits `text` (valid UTF-8) into segments covering it (plain segments are non-empty unless
  // `text` is empty, in which case one empty plain segment is returned).
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t token = -1;                                    // index into tokens_ ending here
  };
  int32_t child(int32_t node, unsigned char b) const;
  // Longest pattern starting at `pos`: returns its token index and sets `len`, or -1.
  int32_t longest_at(std::string_view text, size_t pos, size_t& len) const;

  std::vector<const AddedToken*> tokens_;
  std::vector<Node> trie_;
  bool first_byte_[256] = {};
};

}  // namespace rt::tok
