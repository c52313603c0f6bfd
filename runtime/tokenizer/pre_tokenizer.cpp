#include "tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "rt/sdk/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode_props.h"
#include "tokenizer/utf8.h"

namespace rt::tok {
namespace {

using nlohmann::json;

// GPT-2's pattern, used by ByteLevel when use_regex is true (HF's byte_level.rs).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const json& v) {
  RT_CHECK(v.is_string(), "pre_tokenizer Split 'behavior' must be a string");
  const std::string s = v;
  if (s == "Removed") return Behavior::Removed;
  if (s == "Isolated") return Behavior::Isolated;
  if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::MergedWithNext;
  if (s == "Contiguous") return Behavior::Contiguous;
  fail("pre_tokenizer Split behavior '", s, "' is unknown");
}

struct Span {
  size_t begin, end;
  bool is_match;
};

// Turns a piece covered by (match / non-match) spans into the emitted pieces, following HF's
// NormalizedString::split for each behavior. Empty results are dropped, as HF does.
void apply_behavior(std::string_view piece, std::vector<Span>& spans, Behavior behavior,
                    PreTokenizer::Emit emit) {
  std::vector<Span> out;  // is_match here means "remove"
  out.reserve(spans.size());
  switch (behavior) {
    case Behavior::Isolated:
      for (auto s : spans) out.push_back({s.begin, s.end, false});
      break;
    case Behavior::Removed:
      out = spans;
      break;
    case Behavior::Contiguous: {
      int prev = -1;
      for (auto s : spans) {
        if (prev == static_cast<int>(s.is_match) && !out.empty()) out.back().end = s.end;
        else out.push_back({s.begin, s.end, false});
        prev = s.is_match;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (auto s : spans) {
        if (s.is_match && !prev_match && !out.empty()) out.back().end = s.end;
        else out.push_back({s.begin, s.end, false});
        prev_match = s.is_match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !prev_match && !out.empty()) out.back().begin = it->begin;
        else out.push_back({it->begin, it->end, false});
        prev_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  for (auto s : out) {
    if (!s.is_match && s.end > s.begin) emit(piece.substr(s.begin, s.end - s.begin));
  }
}

// Fills the gaps between matches with non-match spans so that the spans cover the piece.
void cover(size_t size, const std::vector<std::pair<size_t, size_t>>& matches, bool invert,
           std::vector<Span>& spans) {
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != size) spans.push_back({prev, size, invert});
}

class SplitPre final : public PreTokenizer {
 public:
  explicit SplitPre(const json& spec) {
    RT_CHECK(spec.contains("pattern") && spec["pattern"].is_object(),
             "pre_tokenizer Split needs a 'pattern' object ({\"Regex\": ...} or {\"String\": ...})");
    const json& p = spec["pattern"];
    if (p.contains("Regex") && p["Regex"].is_string()) {
      try {
        regex_ = std::make_unique<Regex>(p["Regex"].get<std::string>());
      } catch (const Error& e) {
        fail("pre_tokenizer Split: ", e.what());
      }
    } else if (p.contains("String") && p["String"].is_string()) {
      regex_ = std::make_unique<Regex>(p["String"].get<std::string>(), /*literal=*/true);
    } else {
      fail("pre_tokenizer Split 'pattern' must hold a string 'Regex' or 'String', got ", p.dump());
    }
    RT_CHECK(spec.contains("behavior"), "pre_tokenizer Split needs a 'behavior'");
    behavior_ = parse_behavior(spec["behavior"]);
    invert_ = spec.value("invert", false);
  }
  void split(std::string_view piece, Emit emit) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    regex_->find_all(piece, matches);
    std::vector<Span> spans;
    spans.reserve(matches.size() * 2 + 1);
    cover(piece.size(), matches, invert_, spans);
    apply_behavior(piece, spans, behavior_, emit);
  }

 private:
  std::unique_ptr<Regex> regex_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevelPre final : public PreTokenizer {
 public:
  explicit ByteLevelPre(const json& spec) {
    // HF's ByteLevel::default() has both flags on; files normally spell them out.
    add_prefix_space_ = spec.value("add_prefix_space", true);
    if (spec.value("use_regex", true)) regex_ = std::make_unique<Regex>(kGpt2Pattern);
  }
  void split(std::string_view piece, Emit emit) const override {
    std::string prefixed;
    if (add_prefix_space_ && piece.front() != ' ') {
      prefixed.reserve(piece.size() + 1);
      prefixed = " ";
      prefixed += piece;
      piece = prefixed;
    }
    if (!regex_) {
      emit(bytes_to_unicode_string(piece));
      return;
    }
    std::vector<std::pair<size_t, size_t>> matches;
    regex_->find_all(piece, matches);
    std::vector<Span> spans;
    cover(piece.size(), matches, false, spans);
    for (auto s : spans) {
      if (s.end > s.begin) emit(bytes_to_unicode_string(piece.substr(s.begin, s.end - s.begin)));
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class DigitsPre final : public PreTokenizer {
 public:
  explicit DigitsPre(const json& spec) : individual_(spec.value("individual_digits", false)) {}
  void split(std::string_view piece, Emit emit) const override {
    // HF splits on char::is_numeric: each numeric character is one match.
    std::vector<Span> spans;
    size_t last = 0;
    for (size_t i = 0; i < piece.size();) {
      size_t len;
      const char32_t c = decode_utf8(piece, i, len);
      if (is_numeric(c)) {
        if (last < i) spans.push_back({last, i, false});
        spans.push_back({i, i + len, true});
        last = i + len;
      }
      i += len;
    }
    if (last < piece.size()) spans.push_back({last, piece.size(), false});
    apply_behavior(piece, spans, individual_ ? Behavior::Isolated : Behavior::Contiguous, emit);
  }

 private:
  bool individual_;
};

class SequencePre final : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void split(std::string_view piece, Emit emit) const override { run(0, piece, emit); }

 private:
  void run(size_t k, std::string_view piece, Emit emit) const {
    if (k == steps_.size()) {
      emit(piece);
      return;
    }
    steps_[k]->split(piece, [&](std::string_view sub) { run(k + 1, sub, emit); });
  }
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& spec) {
  if (spec.is_null()) return nullptr;
  RT_CHECK(spec.is_object() && spec.contains("type") && spec["type"].is_string(),
           "pre_tokenizer must be null or an object with a string 'type'");
  const std::string type = spec["type"];
  if (type == "Split") return std::make_unique<SplitPre>(spec);
  if (type == "ByteLevel") return std::make_unique<ByteLevelPre>(spec);
  if (type == "Digits") return std::make_unique<DigitsPre>(spec);
  if (type == "Sequence") {
    RT_CHECK(spec.contains("pretokenizers") && spec["pretokenizers"].is_array(),
             "pre_tokenizer Sequence needs a 'pretokenizers' array");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const auto& s : spec["pretokenizers"]) {
      RT_CHECK(!s.is_null(), "pre_tokenizer Sequence holds a null step");
      steps.push_back(make_pre_tokenizer(s));
    }
    return std::make_unique<SequencePre>(std::move(steps));
  }
  fail("pre_tokenizer type '", type, "' is not supported (supported: Split, ByteLevel, Digits, Sequence)");
}

}  // namespace rt::tok
