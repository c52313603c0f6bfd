// The tokenizer interface of the runtime. Two implementations sit behind it: byte-level BPE read
// from a Hugging Face tokenizer.json (Qwen2/Qwen2.5, GPT-2 style; ids match HF `tokenizers`
// exactly) and SentencePiece models (tokenizer.model). Errors are rt::Error naming the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rt {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // No BOS/EOS is added; added/special tokens written in the text (e.g. "<|im_end|>") ARE
  // recognized. Never throws on any input: invalid UTF-8 is first repaired by replacing each
  // maximal invalid subsequence with U+FFFD (what Rust's from_utf8_lossy does; HF's Python API
  // only accepts valid str, so this is our own, documented choice). Thread-safe.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Special tokens are kept in the output (HF decode with skip_special_tokens=False). Byte
  // sequences that are not valid UTF-8 come out as U+FFFD, as in HF. Throws rt::Error on an id
  // outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  // Largest id + 1, added tokens included.
  virtual int64_t vocab_size() const = 0;
  // Exact lookup of a vocabulary or added token.
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  // tokenizer_config.json's eos_token when it sits next to tokenizer.json, else <|endoftext|>
  // if present, else nullopt. SentencePiece: the model's </s> id if it has one.
  virtual std::optional<int32_t> eos_id() const = 0;
};

// path: a tokenizer.json, a tokenizer.model (SentencePiece), or a directory holding one of them
// (tokenizer.json preferred).
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);

}  // namespace rt
