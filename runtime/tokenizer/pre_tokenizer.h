// The tokenizer.json `pre_tokenizer`: splits normalized text into the words BPE runs on.
// Supported: Split (regex or literal, all five HF behaviors, invert), ByteLevel (with or without
// the GPT-2 regex and add_prefix_space), Digits and Sequence. Other types are refused at load.
#pragma once

#include <memory>
#include <string_view>

#include <absl/functional/function_ref.h>
#include <nlohmann/json_fwd.hpp>

namespace rt::tok {

class PreTokenizer {
 public:
  using Emit = absl::FunctionRef<void(std::string_view)>;
  virtual ~PreTokenizer() = default;
  // Splits one non-empty piece of valid UTF-8 and emits the non-empty sub-pieces in order.
  // HF applies each step of a Sequence to every split of the previous step independently, so
  // composing steps piece by piece gives the same words without materializing every stage.
  virtual void split(std::string_view piece, Emit emit) const = 0;
};

// `spec` is the "pre_tokenizer" JSON value; null gives nullptr (the whole piece is one word).
// Throws rt::Error on unsupported types or bad regexes.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec);

}  // namespace rt::tok
