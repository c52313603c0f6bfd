// Needle in a haystack, single needle, in RULER's style (niah_single): the needle
//   "One of the special magic numbers for {key} is: {7-digit number}."
// sits at a sentence boundary at a given depth of a haystack text cut to a given length in tokens;
// the question and the answer prefix follow, and greedy generation (through DecodeSession, so CUDA
// graphs where the plugin has them) must produce the number. The prompt of a cell depends only on
// (seed, length, depth, sample), so every backend is asked the same.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rt {
class Qwen2Model;
class Tokenizer;
}  // namespace rt

namespace rt::eval {

struct NiahPrompt {
  std::string text;
  std::vector<int32_t> ids;  // text encoded: length tokens (or one fewer, see build_niah_prompt)
  std::string key, number, needle;
  double depth_actual = 0;   // where the needle starts, as a fraction of the haystack's characters
};

// The haystack as sentences (split after . ! ? followed by whitespace); throws naming `source` when
// it has none.
std::vector<std::string> haystack_sentences(const std::string& text, const std::string& source);

// A prompt of exactly `length` tokens (length - 1 when no cut of the haystack gives exactly
// length), the needle at the sentence boundary nearest to `depth` (0..1) of the haystack, which
// is repeated when shorter than needed. Throws when even an empty haystack exceeds `length`.
NiahPrompt build_niah_prompt(const Tokenizer& tok, const std::vector<std::string>& sentences, int64_t length,
                             double depth, uint64_t seed);

// 1 when the needle's number appears in the generated text.
bool niah_score(const std::string& output, const std::string& number);

// Greedy generation of up to max_new tokens after `prompt` (stops after EOS), through DecodeSession.
std::vector<int32_t> greedy_generate(Qwen2Model& model, const std::vector<int32_t>& prompt, int64_t max_new,
                                     std::optional<int32_t> eos);

}  // namespace rt::eval
