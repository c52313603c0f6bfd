#include "tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uniset.h>

#include <memory>

#include <nlohmann/json.hpp>

#include "rt/sdk/error.h"

namespace rt::tok {

Normalizer::Normalizer(const nlohmann::json& spec) {
  if (!spec.is_null()) add(spec);
}

Normalizer::~Normalizer() = default;

void Normalizer::add(const nlohmann::json& spec) {
  RT_CHECK(spec.is_object() && spec.contains("type") && spec["type"].is_string(),
           "normalizer must be null or an object with a string 'type', got ", spec.dump());
  const std::string type = spec["type"];
  if (type == "Sequence") {
    RT_CHECK(spec.contains("normalizers") && spec["normalizers"].is_array(),
             "normalizer Sequence needs a 'normalizers' array");
    for (const auto& s : spec["normalizers"]) add(s);
    return;
  }
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  if (type == "NFC") n = icu::Normalizer2::getNFCInstance(status);
  else if (type == "NFD") n = icu::Normalizer2::getNFDInstance(status);
  else if (type == "NFKC") n = icu::Normalizer2::getNFKCInstance(status);
  else if (type == "NFKD") n = icu::Normalizer2::getNFKDInstance(status);
  else fail("normalizer type '", type, "' is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence, null)");
  RT_CHECK(U_SUCCESS(status) && n, "ICU ", type, " normalizer unavailable: ", u_errorName(status));
  steps_.push_back(std::make_unique<icu::FilteredNormalizer2>(*n, unicode_9_0()));
}

// Hugging Face tokenizers normalizes with Unicode 9.0's tables (its unicode-normalization crate):
// a character assigned later has combining class 0 and no mappings there, so it is left as it is
// and neither reorders nor composes with its neighbours. ICU's FilteredNormalizer2 over the
// characters of Unicode <= 9.0 does exactly that (the others pass through as boundaries), and
// the stability policy keeps ICU's data for those characters equal to 9.0's.
const icu::UnicodeSet& Normalizer::unicode_9_0() {
  static const icu::UnicodeSet* set = [] {
    UErrorCode st = U_ZERO_ERROR;
    auto* s = new icu::UnicodeSet(icu::UnicodeString(u"[:age=9.0:]"), st);
    RT_CHECK(U_SUCCESS(st), "ICU: the set of Unicode 9.0 characters is unavailable: ", u_errorName(st));
    s->freeze();
    return s;
  }();
  return *set;
}

std::string Normalizer::normalize(std::string_view text) const {
  std::string cur(text);
  // Every normalization form leaves ASCII unchanged; skipping it keeps plain text fast.
  bool ascii = true;
  for (unsigned char c : cur) ascii &= c < 0x80;
  if (ascii) return cur;
  RT_CHECK(cur.size() < (1u << 31), "text of ", cur.size(), " bytes is too long to normalize");
  for (const auto& n : steps_) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::StringPiece in(cur.data(), static_cast<int32_t>(cur.size()));
    if (n->isNormalizedUTF8(in, status) && U_SUCCESS(status)) continue;
    status = U_ZERO_ERROR;
    std::string out;
    icu::StringByteSink<std::string> sink(&out);
    n->normalizeUTF8(0, in, sink, nullptr, status);
    RT_CHECK(U_SUCCESS(status), "ICU normalization failed: ", u_errorName(status));
    cur = std::move(out);
  }
  return cur;
}

}  // namespace rt::tok
