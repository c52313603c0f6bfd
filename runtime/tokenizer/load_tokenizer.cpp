// load_tokenizer: picks the implementation from the path.
#include <fstream>

#include "rt/sdk/error.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/sentencepiece_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace rt {
namespace fs = std::filesystem;

namespace {

// A file that is neither *.json nor *.model: JSON starts with '{' (after blanks); a SentencePiece
// model is a binary protobuf.
bool looks_like_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  char c;
  while (in.get(c)) {
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') return c == '{';
  }
  return false;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& path) {
  std::error_code ec;
  RT_CHECK(fs::exists(path, ec), "tokenizer: ", path.string(), " does not exist");
  fs::path file = path;
  if (fs::is_directory(path, ec)) {
    if (fs::is_regular_file(path / "tokenizer.json", ec)) file = path / "tokenizer.json";
    else if (fs::is_regular_file(path / "tokenizer.model", ec)) file = path / "tokenizer.model";
    else fail("tokenizer: directory ", path.string(), " holds neither tokenizer.json nor tokenizer.model");
  }
  RT_CHECK(fs::is_regular_file(file, ec), "tokenizer: ", file.string(), " is not a regular file");
  const auto ext = file.extension();
  const bool json = ext == ".json" || (ext != ".model" && looks_like_json(file));
  return json ? tok::load_hf_tokenizer(file) : tok::load_sentencepiece_tokenizer(file);
}

}  // namespace rt
