// runtime generate: greedy decoding with the plugin's KV cache.
#include <algorithm>
#include <chrono>
#include <iostream>

#include "cli/commands.h"
#include "cli/validators.h"
#include "cli/model_session.h"
#include "common/flag_paths.h"
#include "model/decode_session.h"
#include "tokenizer/tokenizer.h"

namespace rt {

namespace {
int32_t argmax_row(Ops& ops, TensorView logits) { return static_cast<int32_t>(ops.argmax(logits)); }
}  // namespace

void register_generate(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string prompt;
    std::string ids;
    std::string tokenizer;
    int64_t max_new = 32;
    bool print_ids = false;
    bool ignore_eos = false;
    bool no_graphs = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("generate", "Greedy text generation with a KV cache");
  cmd->footer(
      "\nExamples:\n  runtime generate --model models/qwen2.5-0.5b --prompt \"The capital of France is\"\n"
      "  runtime generate --model DIR --ids 1,2,3 --max-new-tokens 8 --print-ids");
  add_model_options(*cmd, args->model);
  auto* prompt = cmd->add_option("--prompt,-p", args->prompt, "Prompt text (needs a tokenizer)");
  auto* ids = cmd->add_option("--ids", args->ids, "Prompt as comma-separated token ids instead of text");
  prompt->excludes(ids);
  cmd->add_option("--tokenizer", args->tokenizer,
                  "tokenizer.json / tokenizer.model or a directory holding one (default: the model directory)");
  cmd->add_option("--max-new-tokens,-n", args->max_new, "Tokens to generate")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_flag("--print-ids", args->print_ids, "Print the generated token ids on one line instead of text");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past the end-of-sequence token");
  cmd->add_flag("--no-graphs", args->no_graphs,
                "Launch every decode step op by op instead of replaying it as a captured CUDA graph "
                "(same tokens; for comparison and debugging)");
  cmd->callback([args] {
    RT_CHECK(!args->prompt.empty() || !args->ids.empty(), "generate: give --prompt TEXT or --ids 1,2,3");
    if (!args->tokenizer.empty()) check_input_path("--tokenizer", args->tokenizer, /*directory_ok=*/true);
    auto session = open_model_session(args->model);
    RT_CHECK(session->attention->capabilities().decode, "attention backend '", session->attention_name,
             "' has no decode support (no KV cache); generate needs one, e.g. full_causal or swa");
    std::unique_ptr<Tokenizer> tok;
    const std::filesystem::path tok_path = !args->tokenizer.empty() ? std::filesystem::path(args->tokenizer)
                                                                     : session->model_dir;
    if (!args->prompt.empty() || !args->print_ids) {
      RT_CHECK(!tok_path.empty(), "generate: no tokenizer for a model built with --init random; pass --tokenizer");
      // Named by --tokenizer when given; the model directory's own tokenizer errors name their file.
      tok = with_flag(args->tokenizer.empty() ? "" : "--tokenizer", args->tokenizer,
                      [&] { return load_tokenizer(tok_path); });
    }
    std::vector<int32_t> prompt = !args->ids.empty() ? parse_ids(args->ids, "--ids") : tok->encode(args->prompt);
    RT_CHECK(!prompt.empty(), "generate: the prompt encodes to no tokens");

    std::optional<int64_t> eos = session->model->config().eos_token_id;
    if (!eos && tok) eos = tok->eos_id();
    const int64_t total = static_cast<int64_t>(prompt.size()) + args->max_new;
    // Each new token is one replay of the captured decode step on CUDA (DecodeSession).
    DecodeSession decoder(*session->model, total, !args->no_graphs);

    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    int32_t next = argmax_row(*session->ops, decoder.prefill(prompt));
    const auto t1 = clock::now();
    std::vector<int32_t> out;
    for (int64_t i = 0; i < args->max_new; ++i) {
      out.push_back(next);
      if (!args->print_ids) std::cout << tok->decode(std::span<const int32_t>(&next, 1)) << std::flush;
      if (!args->ignore_eos && eos && next == *eos) break;
      if (i + 1 == args->max_new) break;
      next = argmax_row(*session->ops, decoder.step(next));
    }
    const auto t2 = clock::now();
    if (args->print_ids) {
      for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << out[i];
    }
    std::cout << "\n";
    const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
    const double decode_s = std::chrono::duration<double>(t2 - t1).count();
    std::cerr << "prompt " << prompt.size() << " tokens in " << prefill_s * 1e3 << " ms ("
              << prompt.size() / std::max(prefill_s, 1e-9) << " tok/s); generated " << out.size()
              << " tokens, decode " << (out.size() > 1 ? (out.size() - 1) / std::max(decode_s, 1e-9) : 0.0)
              << " tok/s (decode step: " << DecodeSession::mode_name(decoder.mode()) << ")\n";
    // A routed backend: how often global attention ran during decoding, over every layer.
    const DecodeSession::Routing routing = decoder.routing();
    if (routing.steps > 0)
      std::cerr << "global attention ran in " << routing.routed << " of " << routing.steps
                << " (layer, decode step) pairs ("
                << 100.0 * static_cast<double>(routing.routed) / static_cast<double>(routing.steps) << "% routed)\n";
  });
}

}  // namespace rt
