// runtime sparsity: how often each layer of a trained L2A model routes tokens to global attention,
// per layer and per position bucket, over sequences of a data file. Prints a table and writes JSON
// (and CSV); tools/plot_sparsity.py turns the JSON into a layers x positions heatmap PNG.
// Also reports which layers could be pruned (global sublayer and global KV cache dropped) at a
// sparsity threshold, and the KV-cache memory that saves.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/durable_file.h"
#include "cli/validators.h"
#include "cli/model_session.h"
#include "train/token_data.h"

namespace rt {

void register_sparsity(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string data, json, csv, png, tokenizer;
    int64_t seq = 1024, max_sequences = 8, buckets = 16;
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
  cmd->add_option("--max-sequences", args->max_sequences, "Sequences to run (from the start of the data)")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--buckets", args->buckets, "Position buckets of the heatmap")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--prune-threshold", args->prune_threshold,
                  "A layer at least this sparse is reported as prunable (global KV cache dropped)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--json", args->json, "Write the report as JSON");
  cmd->add_option("--csv", args->csv, "Write layer x bucket sparsity as CSV");
  cmd->add_option("--png", args->png, "Write a heatmap PNG (runs tools/plot_sparsity.py; needs matplotlib)");
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer for text data (default: the model directory's)");
  cmd->callback([args] {
    auto session = open_model_session(args->model);
    RT_CHECK(session->attention->capabilities().router, "sparsity: attention backend '", session->attention_name,
             "' does not route tokens; use an L2A model (--attention l2a_dense)");
    const ModelDims& d = session->model->dims();
    std::unique_ptr<Tokenizer> tok;
    if (std::filesystem::path(args->data).extension() != ".bin")
      tok = load_tokenizer(args->tokenizer.empty() ? session->model_dir : std::filesystem::path(args->tokenizer));
    TokenDataset data = TokenDataset::load(args->data, tok.get(), d.vocab);
    SequenceSampler sampler(data, args->seq, 0, /*shuffle=*/false);
    const int64_t nseq = std::min(args->max_sequences, sampler.num_sequences());
    const Options& opts = session->attention_options;
    const bool parallel = opts.get_string("layout", "paper") == "parallel";
    const int64_t forced = opts.get_bool("force_local", parallel) ? std::min(opts.get_int("window", 0), args->seq) : 0;

    const int64_t L = d.n_layers, B = std::min(args->buckets, args->seq);
    std::vector<double> global(static_cast<size_t>(L * B), 0), count(static_cast<size_t>(L * B), 0);
    std::vector<double> layer_global(static_cast<size_t>(L), 0), layer_global_free(static_cast<size_t>(L), 0);
    std::vector<int32_t> ids;
    const bool tty = isatty(fileno(stderr));
    for (int64_t s = 0; s < nseq; ++s) {
      sampler.next(ids);
      session->model->forward(ids, nullptr, /*last_only=*/true);
      for (int64_t l = 0; l < L; ++l) {
        const std::vector<float> dec = session->attention->last_decisions(static_cast<int>(l));
        RT_CHECK(static_cast<int64_t>(dec.size()) == args->seq, "sparsity: backend reported ", dec.size(),
                 " decisions for layer ", l, ", expected ", args->seq);
        for (int64_t t = 0; t < args->seq; ++t) {
          const size_t cell = static_cast<size_t>(l * B + t * B / args->seq);
          global[cell] += dec[static_cast<size_t>(t)];
          count[cell] += 1;
          layer_global[static_cast<size_t>(l)] += dec[static_cast<size_t>(t)];
          if (t >= forced) layer_global_free[static_cast<size_t>(l)] += dec[static_cast<size_t>(t)];
        }
      }
      if (tty) std::cerr << "\rsparsity: sequence " << (s + 1) << "/" << nseq << std::flush;
    }
    std::cerr << (tty ? "\n" : "") << "sparsity: " << nseq << " sequences of " << args->seq << " tokens\n";

    const double per_layer_tokens = static_cast<double>(nseq * args->seq);
    const double free_tokens = static_cast<double>(nseq * (args->seq - forced));
    nlohmann::ordered_json rep;
    rep["model"] = session->model_name;
    rep["attention"] = session->attention_name;
    rep["sequences"] = nseq;
    rep["seq_len"] = args->seq;
    rep["forced_local_positions"] = forced;
    double tot = 0, tot_free = 0;
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    nlohmann::ordered_json heat = nlohmann::ordered_json::array();
    std::vector<int64_t> prunable;
    std::cout << std::left << std::setw(7) << "layer" << std::setw(11) << "sparsity" << std::setw(16)
              << "excl. forced" << "\n";
    for (int64_t l = 0; l < L; ++l) {
      const double sp = 1.0 - layer_global[static_cast<size_t>(l)] / per_layer_tokens;
      const double spf = free_tokens > 0 ? 1.0 - layer_global_free[static_cast<size_t>(l)] / free_tokens : 0.0;
      tot += sp;
      tot_free += spf;
      layers.push_back({{"layer", l}, {"sparsity", sp}, {"sparsity_excl_forced", spf}});
      nlohmann::ordered_json row = nlohmann::ordered_json::array();
      for (int64_t b = 0; b < B; ++b) {
        const size_t c = static_cast<size_t>(l * B + b);
        row.push_back(count[c] > 0 ? 1.0 - global[c] / count[c] : 0.0);
      }
      heat.push_back(row);
      if (sp >= args->prune_threshold) prunable.push_back(l);
      std::cout << std::setw(7) << l << std::setw(11) << std::fixed << std::setprecision(4) << sp << std::setw(16)
                << spf << "\n";
    }
    const double kv_per_token_layer = 2.0 * static_cast<double>(d.n_kv_heads * d.head_dim) * 2.0;  // K and V, bf16
    rep["sparsity"] = tot / static_cast<double>(L);
    rep["sparsity_excl_forced"] = tot_free / static_cast<double>(L);
    rep["layers"] = layers;
    rep["position_buckets"] = B;
    rep["heatmap"] = heat;  // [layer][bucket] sparsity
    rep["prune_threshold"] = args->prune_threshold;
    rep["prunable_layers"] = prunable;
    rep["global_kv_bytes_saved_per_token"] = kv_per_token_layer * static_cast<double>(prunable.size());
    std::cout << "overall sparsity " << std::setprecision(4) << rep["sparsity"].get<double>()
              << " (excluding forced-local positions: " << rep["sparsity_excl_forced"].get<double>() << ")\n"
              << prunable.size() << " of " << L << " layers at sparsity >= " << args->prune_threshold
              << " could drop their global sublayer: "
              << rep["global_kv_bytes_saved_per_token"].get<double>() * 32768 / (1 << 20)
              << " MiB of bf16 global KV cache saved per 32K-token sequence\n";
    if (!args->json.empty()) {
      write_file_atomic(args->json, rep.dump(2) + "\n");
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
      write_file_atomic(args->csv, f.str());
      std::cerr << "wrote " << args->csv << "\n";
    }
    if (!args->png.empty()) {
      RT_CHECK(!args->json.empty(), "sparsity: --png needs --json (the plot is made from it)");
      const std::string script = std::string(RT_SOURCE_TOOLS_DIR) + "/plot_sparsity.py";
      const std::string cmdline = "python3 '" + script + "' '" + args->json + "' '" + args->png + "'";
      RT_CHECK(std::system(cmdline.c_str()) == 0, "sparsity: ", cmdline, " failed (is matplotlib installed?)");
    }
  });
}

}  // namespace rt
