// The tokenizer.json `normalizer`: Unicode normalization forms through ICU. Supported: null (no
// normalization), NFC, NFD, NFKC, NFKD and a Sequence of them; anything else is refused at load
// time, because silently skipping a normalizer would give ids that differ from HF's.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include <unicode/uversion.h>  // defines the versioned `icu` namespace

U_NAMESPACE_BEGIN
class FilteredNormalizer2;
class UnicodeSet;
U_NAMESPACE_END

namespace rt::tok {

class Normalizer {
 public:
  // `spec` is the JSON value of the "normalizer" field (may be null). Throws rt::Error.
  explicit Normalizer(const nlohmann::json& spec);
  ~Normalizer();  // in the .cpp, where ICU's types are complete

  bool empty() const { return steps_.empty(); }
  // `text` must be valid UTF-8.
  std::string normalize(std::string_view text) const;

 private:
  void add(const nlohmann::json& spec);
  static const icu::UnicodeSet& unicode_9_0();
  // Each form restricted to Unicode 9.0's characters, as Hugging Face tokenizers normalizes.
  std::vector<std::unique_ptr<icu::FilteredNormalizer2>> steps_;
};

}  // namespace rt::tok
