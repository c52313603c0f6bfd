// A Hugging Face tokenizer.json with a BPE model (byte-level BPE as in GPT-2, Qwen2/2.5,
// Llama 3). The encode pipeline is HF's: added tokens -> normalizer -> pre_tokenizer -> BPE.
#pragma once

#include <filesystem>
#include <memory>

#include "tokenizer/tokenizer.h"

namespace rt::tok {

// Throws rt::Error naming `path` on any problem with the file (or a tokenizer_config.json next
// to it).
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& path);

}  // namespace rt::tok
