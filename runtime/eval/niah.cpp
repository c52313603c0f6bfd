#include "eval/niah.h"

#include <algorithm>
#include <random>

#include "eval/python_text.h"
#include "model/decode_session.h"
#include "model/qwen2_model.h"
#include "rt/sdk/error.h"
#include "tokenizer/tokenizer.h"

namespace rt::eval {
namespace {

const char* const kPrefix =
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you "
    "about the numbers afterwards.\n";
const char* const kKeys[] = {"apple",  "river",   "lantern", "violin", "meadow", "harbor", "copper", "falcon",
                             "garden", "marble",  "canyon",  "ember",  "glacier", "orchid", "pepper", "quartz",
                             "saddle", "thunder", "velvet",  "walnut", "anchor", "beacon", "cobalt", "dolphin"};

std::string question(const std::string& key) {
  return "\nWhat is the special magic number for " + key + " mentioned in the provided text? The special magic "
         "number for " + key + " mentioned in the provided text is";
}

// The first `words` words of the endless haystack (sentences repeated), plus `chars` characters of
// the next word, with the needle at the sentence boundary nearest to `depth`.
struct Haystack {
  const std::vector<std::string>& words;      // every word of the haystack, in order
  const std::vector<bool>& ends_sentence;     // word i ends a sentence

  std::string build(int64_t n, int64_t chars, double depth, const std::string& needle, double* where) const {
    const int64_t W = static_cast<int64_t>(words.size());
    // Boundaries: before word 0, after each sentence end, after the last word.
    int64_t best = 0;
    double best_d = 1e300;
    for (int64_t j = 0; j <= n; ++j) {
      if (j != 0 && j != n && !ends_sentence[static_cast<size_t>((j - 1) % W)]) continue;
      const double d = std::abs(static_cast<double>(j) - depth * static_cast<double>(n));
      if (d < best_d) best_d = d, best = j;
    }
    std::string text, before;
    for (int64_t i = 0; i < n; ++i) {
      if (i == best) {
        before = text;
        text += (text.empty() ? "" : " ") + needle;
      }
      text += (text.empty() ? "" : " ") + words[static_cast<size_t>(i % W)];
    }
    if (best == n) {
      before = text;
      text += (text.empty() ? "" : " ") + needle;
    }
    if (chars > 0) text += " " + words[static_cast<size_t>(n % W)].substr(0, static_cast<size_t>(chars));
    // Where the needle starts, as a fraction of the haystack (the text without the needle).
    const double hay_chars = static_cast<double>(text.size() - needle.size());
    if (where) *where = hay_chars <= 0 ? 0.0 : std::min(1.0, static_cast<double>(before.size()) / hay_chars);
    return text;
  }
};

}  // namespace

std::vector<std::string> haystack_sentences(const std::string& text, const std::string& source) {
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < text.size(); ++i) {
    cur += text[i];
    const char c = text[i];
    const bool end = (c == '.' || c == '!' || c == '?') && (i + 1 == text.size() || std::isspace(static_cast<unsigned char>(text[i + 1])));
    if (end || i + 1 == text.size()) {
      std::string s = py_strip(cur);
      if (!s.empty()) out.push_back(s);
      cur.clear();
    }
  }
  RT_CHECK(!out.empty(), source, ": the haystack text has no sentences");
  return out;
}

NiahPrompt build_niah_prompt(const Tokenizer& tok, const std::vector<std::string>& sentences, int64_t length,
                             double depth, uint64_t seed) {
  RT_CHECK(depth >= 0.0 && depth <= 1.0, "niah: depth must be in [0, 100]%, found ", depth * 100);
  NiahPrompt p;
  std::mt19937_64 rng(seed);
  p.key = kKeys[rng() % (sizeof(kKeys) / sizeof(kKeys[0]))];
  p.number = std::to_string(1000000 + rng() % 9000000);
  p.needle = "One of the special magic numbers for " + p.key + " is: " + p.number + ".";
  std::vector<std::string> words;
  std::vector<bool> ends;
  for (const std::string& s : sentences) {
    size_t start = 0;
    while (start < s.size()) {
      size_t sp = s.find(' ', start);
      if (sp == std::string::npos) sp = s.size();
      if (sp > start) {
        words.push_back(s.substr(start, sp - start));
        ends.push_back(false);
      }
      start = sp + 1;
    }
    if (!ends.empty()) ends.back() = true;
  }
  const Haystack hay{words, ends};
  const std::string q = question(p.key);
  auto count = [&](int64_t n, int64_t chars) {
    return static_cast<int64_t>(tok.encode(kPrefix + hay.build(n, chars, depth, p.needle, nullptr) + q).size());
  };
  const int64_t empty = count(0, 0);
  RT_CHECK(empty <= length, "niah: a prompt of ", length, " tokens cannot hold the instructions, the needle and the "
           "question (", empty, " tokens)");
  // The most words whose prompt fits (token counts grow with the words), then as many characters
  // of the next word as still fit: exactly `length` tokens, or one fewer.
  int64_t lo = 0, hi = 1;
  while (count(hi, 0) <= length) lo = hi, hi *= 2;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    (count(mid, 0) <= length ? lo : hi) = mid;
  }
  int64_t chars = 0;
  const int64_t next_len = static_cast<int64_t>(words[static_cast<size_t>(lo % static_cast<int64_t>(words.size()))].size());
  while (count(lo, 0) < length && chars < next_len && count(lo, chars + 1) <= length) ++chars;
  p.text = kPrefix + hay.build(lo, chars, depth, p.needle, &p.depth_actual) + q;
  p.ids = tok.encode(p.text);
  return p;
}

bool niah_score(const std::string& output, const std::string& number) {
  return !number.empty() && output.find(number) != std::string::npos;
}

std::vector<int32_t> greedy_generate(Qwen2Model& model, const std::vector<int32_t>& prompt, int64_t max_new,
                                     std::optional<int32_t> eos) {
  DecodeSession decoder(model, static_cast<int64_t>(prompt.size()) + max_new);
  std::vector<int32_t> out;
  int32_t next = static_cast<int32_t>(model.ops().argmax(decoder.prefill(prompt)));
  for (int64_t i = 0; i < max_new; ++i) {
    out.push_back(next);
    if ((eos && next == *eos) || i + 1 == max_new) break;
    next = static_cast<int32_t>(model.ops().argmax(decoder.step(next)));
  }
  return out;
}

}  // namespace rt::eval
