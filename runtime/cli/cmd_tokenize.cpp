// runtime tokenize / detokenize: stdin -> ids on one line, and back.
#include <iostream>
#include <iterator>
#include <sstream>

#include "cli/commands.h"
#include "rt/sdk/error.h"
#include "cli/model_session.h"
#include "common/flag_paths.h"
#include "tokenizer/tokenizer.h"

namespace rt {

static std::string read_stdin() {
  std::ostringstream ss;
  ss << std::cin.rdbuf();
  return ss.str();
}

void register_tokenize(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* enc = app.add_subcommand("tokenize", "Read UTF-8 text from stdin (as one text); print token ids on one line");
  enc->footer("\nExample:\n  echo -n 'Hello world' | runtime tokenize --tokenizer ../shared/data/qwen2.5-tokenizer");
  enc->add_option("--tokenizer,-t", *path, "tokenizer.json, tokenizer.model, or a directory holding one")->required();
  enc->callback([path] {
    check_input_path("--tokenizer", *path, /*directory_ok=*/true);
    auto tok = with_flag("--tokenizer", *path, [&] { return load_tokenizer(*path); });
    const std::vector<int32_t> ids = tok->encode(read_stdin());
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
  });

  auto dpath = std::make_shared<std::string>();
  CLI::App* dec = app.add_subcommand("detokenize", "Read token ids (spaces, commas or newlines) from stdin; print the text");
  dec->footer("\nExample:\n  echo 9707 1879 | runtime detokenize --tokenizer ../shared/data/qwen2.5-tokenizer");
  dec->add_option("--tokenizer,-t", *dpath, "tokenizer.json, tokenizer.model, or a directory holding one")->required();
  dec->callback([dpath] {
    check_input_path("--tokenizer", *dpath, /*directory_ok=*/true);
    auto tok = with_flag("--tokenizer", *dpath, [&] { return load_tokenizer(*dpath); });
    std::string text = read_stdin();
    for (size_t i = 0; i < text.size(); ++i) {
      char& c = text[i];
      if (c == ',' || c == '\n' || c == '\r' || c == '\t') c = ' ';
      RT_CHECK(c == ' ' || (c >= '0' && c <= '9'), "detokenize input: byte ", i, " (code ",
               static_cast<int>(static_cast<unsigned char>(c)),
               ") is not part of a token id (expected digits separated by spaces, commas or newlines)");
    }
    std::vector<int32_t> ids;
    std::istringstream ss(text);
    std::string item;
    while (ss >> item) {
      const auto one = parse_ids(item, "detokenize input");
      ids.insert(ids.end(), one.begin(), one.end());
    }
    std::cout << tok->decode(ids);
  });
}

}  // namespace rt
