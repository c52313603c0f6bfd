// A SentencePiece model (tokenizer.model) behind the Tokenizer interface, through
// libsentencepiece. Kept in its own translation unit: sentencepiece_processor.h declares its own
// `absl::string_view`, which clashes with the real Abseil headers.
#pragma once

#include <filesystem>
#include <memory>

#include "tokenizer/tokenizer.h"

namespace rt::tok {

// Throws rt::Error naming `path` when the model cannot be loaded.
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& path);

}  // namespace rt::tok
