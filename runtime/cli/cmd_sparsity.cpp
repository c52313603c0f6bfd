// runtime sparsity: how often each layer of a trained L2A model routes tokens to global attention,
// per layer and per position bucket, over sequences of a data file. Prints a table and writes JSON
// (and CSV); tools/plot_sparsity.py turns the JSON into a layers x positions heatmap PNG.
// Also reports which layers could be pruned (global sublayer and global KV cache dropped) at a
// sparsity threshold, and the KV-cache memory that saves (`runtime prune` does it). Layers already
// pruned count as 100% local.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/plot_script.h"
#include "common/durable_file.h"
#include "common/flag_paths.h"
#include "common/text_table.h"
#include "cli/validators.h"
#include "cli/model_session.h"
#include "cli/prune_plan.h"
#include "cli/sparsity_measure.h"

namespace rt {

void register_sparsity(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string data, json, csv, png, tokenizer;
    int64_t seq = 1024, max_sequences = 0, buckets = 16;  // max_sequences 0: the default (kMin*)
    double prune_threshold = 0.95;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("sparsity", "Per-layer routing sparsity of an L2A model over a data file");
  cmd->footer(
      "\nSparsity is the fraction of (token, layer) decisions that skip global attention (d = 0).\n"
      "Example:\n"
      "  runtime sparsity --model runs/router/model --data ../shared/data/wikitext-2/test.txt \\\n"
      "      --seq 2048 --json sparsity.json --png sparsity.png");
  add_model_options(*cmd, args->model);
  cmd->add_option("--data,-d", args->data, "Data: .txt, .jsonl (field text) or .bin (uint32 ids)")->required();
  cmd->add_option("--seq", args->seq, "Tokens per sequence")->check(at_least(1))->capture_default_str();
  cmd->add_option("--max-sequences", args->max_sequences,
                  "Sequences to run, from the start of the data. Default: enough for a stable estimate, at least " +
                      std::to_string(kMinSparsitySequences) + " sequences and " + std::to_string(kMinSparsityTokens) +
                      " tokens, whichever is more (64 sequences at --seq 1024), or all the data if it holds "
                      "fewer. Why: routing sparsity varies from one passage of text to the next, and tokens of one "
                      "sequence are not independent, so the sequence is the sample: over 32 sequences the "
                      "standard error of the mean is 1/sqrt(32) = 0.18 of that spread (+-0.01 for a typical "
                      "spread of 0.05), and 65536 tokens give each of the 16 position buckets at least 4096 "
                      "tokens per layer. The report prints the standard error it reached")
      ->check(at_least(1));
  cmd->add_option("--buckets", args->buckets, "Position buckets of the heatmap")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--prune-threshold", args->prune_threshold,
                  "A layer at least this sparse is reported as prunable (global KV cache dropped)")
      ->check(finite_in(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--json", args->json, "Write the report as JSON");
  cmd->add_option("--csv", args->csv, "Write layer x bucket sparsity as CSV");
  cmd->add_option("--png", args->png, "Write a heatmap PNG (runs tools/plot_sparsity.py; needs matplotlib)");
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer for text data (default: the model directory's)");
  cmd->callback([args] {
    // Paths first: a typo fails now, not after the model has run over the data.
    const SparsityRequest req{args->data, args->tokenizer, args->seq, args->max_sequences, args->buckets};
    check_sparsity_inputs(req);
    if (!args->json.empty()) check_output_path("--json", args->json);
    if (!args->csv.empty()) check_output_path("--csv", args->csv);
    if (!args->png.empty()) {
      RT_CHECK(!args->json.empty(), "--png ", args->png, ": needs --json (the plot is made from it)");
      check_output_path("--png", args->png);
    }
    auto session = open_model_session(args->model);
    const ModelDims& d = session->model->dims();
    const SparsityMeasure m = measure_sparsity(*session, req);
    // A pruned layer has no router: it counts as 100% local, and is marked.
    const std::vector<int> pruned = pruned_layers_of(*session);
    const int64_t L = d.n_layers, B = m.buckets;

    nlohmann::ordered_json rep;
    // The model as the user named it (a directory or a preset), and the directory it resolved to.
    rep["model"] = args->model.model;
    if (!session->model_dir.empty()) {
      std::error_code ec;
      const auto abs = std::filesystem::absolute(session->model_dir, ec);
      rep["model_dir"] = (ec ? session->model_dir : abs).lexically_normal().string();
    } else {
      rep["init"] = args->model.init;
    }
    rep["attention"] = session->attention_name;
    rep["sequences"] = m.sequences;
    rep["seq_len"] = args->seq;
    rep["forced_local_positions"] = m.forced;
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    nlohmann::ordered_json heat = nlohmann::ordered_json::array();
    std::vector<int64_t> prunable;
    // The table and summary go to stdout, unless stdout carries the JSON or CSV ("-").
    std::ostream& out = is_stdout_path(args->json) || is_stdout_path(args->csv) ? std::cerr : std::cout;
    TextTable table({{"layer", TextTable::Align::Right}, {"sparsity"}, {"excl. forced"}});
    auto fixed4 = [](double x) {
      std::ostringstream o;
      o << std::fixed << std::setprecision(4) << x;
      return o.str();
    };
    for (int64_t l = 0; l < L; ++l) {
      const bool is_pruned = std::count(pruned.begin(), pruned.end(), static_cast<int>(l)) > 0;
      const double sp = m.layer[static_cast<size_t>(l)], spf = m.layer_excl_forced[static_cast<size_t>(l)];
      nlohmann::ordered_json entry = {{"layer", l}, {"sparsity", sp}, {"sparsity_excl_forced", spf}};
      if (is_pruned) entry["pruned"] = true;
      layers.push_back(entry);
      heat.push_back(m.heatmap[static_cast<size_t>(l)]);
      if (sp >= args->prune_threshold && !is_pruned) prunable.push_back(l);
      table.add_row({std::to_string(l) + (is_pruned ? " (pruned)" : ""), fixed4(sp), fixed4(spf)});
    }
    out << table.str();
    const double stderr_ = m.stderr_overall;
    const int64_t nseq = m.sequences;
    const double kv_per_token_layer = 2.0 * static_cast<double>(d.n_kv_heads * d.head_dim) * 2.0;  // K and V, bf16
    rep["sparsity"] = m.overall;
    rep["sparsity_stderr"] = std::isfinite(stderr_) ? nlohmann::ordered_json(stderr_) : nlohmann::ordered_json(nullptr);
    rep["sparsity_excl_forced"] = m.overall_excl_forced;
    if (!pruned.empty()) rep["pruned_layers"] = pruned;
    rep["layers"] = layers;
    rep["position_buckets"] = B;
    rep["heatmap"] = heat;  // [layer][bucket] sparsity
    rep["prune_threshold"] = args->prune_threshold;
    rep["prunable_layers"] = prunable;
    rep["global_kv_bytes_saved_per_token"] = kv_per_token_layer * static_cast<double>(prunable.size());
    out << "overall sparsity " << std::fixed << std::setprecision(4) << rep["sparsity"].get<double>() << " (";
    if (std::isfinite(stderr_)) out << "standard error " << stderr_ << " over " << nseq << " sequences; ";
    out << "excluding forced-local positions: " << rep["sparsity_excl_forced"].get<double>() << ")\n"
              << prunable.size() << " of " << L << " layers at sparsity >= " << args->prune_threshold
              << " could drop their global sublayer: "
              << rep["global_kv_bytes_saved_per_token"].get<double>() * 32768 / (1 << 20)
              << " MiB of bf16 global KV cache saved per 32K-token sequence\n";
    if (!args->json.empty()) {
      with_flag("--json", args->json, [&] { write_file_atomic(args->json, rep.dump(2) + "\n"); });
      std::cerr << "wrote " << args->json << "\n";
    }
    if (!args->csv.empty()) {
      std::ostringstream f;
      f << "layer";
      for (int64_t b = 0; b < B; ++b) f << ",bucket" << b;
      f << "\n";
      for (int64_t l = 0; l < L; ++l) {
        f << l;
        for (int64_t b = 0; b < B; ++b) f << "," << heat[l][b].get<double>();
        f << "\n";
      }
      with_flag("--csv", args->csv, [&] { write_file_atomic(args->csv, f.str()); });
      std::cerr << "wrote " << args->csv << "\n";
    }
    if (!args->png.empty()) {
      run_plot_script("plot_sparsity.py", args->json, args->png);
    }
  });
}

}  // namespace rt
