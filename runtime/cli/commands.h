// Each subcommand registers itself on the top-level app and runs when selected.
#pragma once

#include <CLI/CLI.hpp>

namespace rt {

void register_logits(CLI::App& app);
void register_generate(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_plugins(CLI::App& app);
void register_profile(CLI::App& app);
void register_train(CLI::App& app);
void register_sparsity(CLI::App& app);
void register_eval(CLI::App& app);
void register_prune(CLI::App& app);
void register_convert(CLI::App& app);
void register_launch(CLI::App& app);

}  // namespace rt
