#include "tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include "rt/sdk/error.h"
#include "tokenizer/utf8.h"

namespace rt::tok {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::filesystem::path& path) {
    const auto status = sp_.Load(path.string());
    RT_CHECK(status.ok(), "sentencepiece model ", path.string(), ": ", status.ToString());
    RT_CHECK(sp_.GetPieceSize() > 0, "sentencepiece model ", path.string(), " has no pieces");
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    // Same input policy as the tokenizer.json path: repair invalid UTF-8 first.
    const std::string valid = is_valid_utf8(text) ? std::string(text) : to_valid_utf8(text);
    std::vector<int> ids;
    const auto status = sp_.Encode(valid, &ids);
    RT_CHECK(status.ok(), "sentencepiece encode failed: ", status.ToString());
    return {ids.begin(), ids.end()};
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::vector<int> v;
    v.reserve(ids.size());
    for (int32_t id : ids) {
      RT_CHECK(id >= 0 && id < vocab_size(), "decode: token id ", id, " is out of range [0, ",
               vocab_size(), ")");
      v.push_back(id);
    }
    std::string out;
    const auto status = sp_.Decode(v, &out);
    RT_CHECK(status.ok(), "sentencepiece decode failed: ", status.ToString());
    return out;
  }

  int64_t vocab_size() const override { return sp_.GetPieceSize(); }

  std::optional<int32_t> token_to_id(std::string_view token) const override {
    const int id = sp_.PieceToId(std::string(token));
    // PieceToId answers the unknown id for any unknown piece; only an exact match counts.
    if (id < 0 || sp_.IdToPiece(id) != token) return std::nullopt;
    return id;
  }

  std::optional<int32_t> eos_id() const override {
    const int id = sp_.eos_id();
    if (id < 0) return std::nullopt;
    return id;
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& path) {
  return std::make_unique<SentencePieceTokenizer>(path);
}

}  // namespace rt::tok
