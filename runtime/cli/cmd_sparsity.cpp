// runtime sparsity: how often each layer of a trained L2A model routes tokens to global attention,
// per layer and per position bucket, over sequences of a data file. Prints a table and writes JSON
// (and CSV); tools/plot_sparsity.py turns the JSON into a layers x positions heatmap PNG.
// Also reports which layers could be pruned (global sublayer and global KV cache dropped) at a
// sparsity threshold, and the KV-cache memory that saves.
#include <sys/wait.h>
#include <unistd.h>

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
#include "train/token_data.h"

namespace rt {

namespace {

// The default number of sequences (--max-sequences not given): at least kMinSequences and at
// least kMinTokens tokens, whichever needs more. See the --max-sequences help for why.
constexpr int64_t kMinSequences = 32;
constexpr int64_t kMinTokens = 65536;

// 'text' for a POSIX shell, whatever it holds.
}  // namespace

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
                      std::to_string(kMinSequences) + " sequences and " + std::to_string(kMinTokens) +
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
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--json", args->json, "Write the report as JSON");
  cmd->add_option("--csv", args->csv, "Write layer x bucket sparsity as CSV");
  cmd->add_option("--png", args->png, "Write a heatmap PNG (runs tools/plot_sparsity.py; needs matplotlib)");
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer for text data (default: the model directory's)");
  cmd->callback([args] {
    // Paths first: a typo fails now, not after the model has run over the data.
    check_input_path("--data", args->data, /*directory_ok=*/false);
    if (!args->tokenizer.empty()) check_input_path("--tokenizer", args->tokenizer, /*directory_ok=*/true);
    if (!args->json.empty()) check_output_path("--json", args->json);
    if (!args->csv.empty()) check_output_path("--csv", args->csv);
    if (!args->png.empty()) {
      RT_CHECK(!args->json.empty(), "--png ", args->png, ": needs --json (the plot is made from it)");
      check_output_path("--png", args->png);
    }
    auto session = open_model_session(args->model);
    RT_CHECK(session->attention->capabilities().router, "sparsity: attention backend '", session->attention_name,
             "' does not route tokens; use an L2A model (--attention l2a_dense)");
    const ModelDims& d = session->model->dims();
    std::unique_ptr<Tokenizer> tok;
    if (std::filesystem::path(args->data).extension() != ".bin") {
      RT_CHECK(!args->tokenizer.empty() || !session->model_dir.empty(), "--data ", args->data,
               ": text data needs a tokenizer, and a model built with --init random has no directory to take "
               "one from; pass --tokenizer");
      tok = with_flag(args->tokenizer.empty() ? "" : "--tokenizer", args->tokenizer, [&] {
        return load_tokenizer(args->tokenizer.empty() ? session->model_dir : std::filesystem::path(args->tokenizer));
      });
    }
    TokenDataset data = with_flag("--data", args->data, [&] { return TokenDataset::load(args->data, tok.get(), d.vocab); });
    RT_CHECK(data.size() >= args->seq, "--seq ", args->seq, ": ", args->data, " holds ", data.size(),
             " tokens, fewer than one sequence; use a shorter --seq or more data");
    SequenceSampler sampler =
        with_flag("--data", args->data, [&] { return SequenceSampler(data, args->seq, 0, /*shuffle=*/false); });
    const int64_t wanted = args->max_sequences > 0 ? args->max_sequences
                                                   : std::max(kMinSequences, (kMinTokens + args->seq - 1) / args->seq);
    const int64_t nseq = std::min(wanted, sampler.num_sequences());
    if (nseq < wanted && args->max_sequences == 0)
      std::cerr << "note: " << args->data << " holds " << nseq << " sequences of " << args->seq << " tokens, fewer than the "
                << wanted << " of a stable estimate; see the standard error below\n";
    const Options& opts = session->attention_options;
    const bool parallel = opts.get_string("layout", "paper") == "parallel";
    const int64_t forced = opts.get_bool("force_local", parallel) ? std::min(opts.get_int("window", 0), args->seq) : 0;

    const int64_t L = d.n_layers, B = std::min(args->buckets, args->seq);
    std::vector<double> global(static_cast<size_t>(L * B), 0), count(static_cast<size_t>(L * B), 0);
    std::vector<double> layer_global(static_cast<size_t>(L), 0), layer_global_free(static_cast<size_t>(L), 0);
    std::vector<double> seq_sparsity;  // per sequence, over every layer: the samples of the standard error
    std::vector<int32_t> ids;
    const bool tty = isatty(fileno(stderr));
    for (int64_t s = 0; s < nseq; ++s) {
      sampler.next(ids);
      session->model->forward(ids, nullptr, /*last_only=*/true);
      double seq_global = 0;
      for (int64_t l = 0; l < L; ++l) {
        const std::vector<float> dec = session->attention->last_decisions(static_cast<int>(l));
        RT_CHECK(static_cast<int64_t>(dec.size()) == args->seq, "sparsity: backend reported ", dec.size(),
                 " decisions for layer ", l, ", expected ", args->seq);
        for (int64_t t = 0; t < args->seq; ++t) {
          const size_t cell = static_cast<size_t>(l * B + t * B / args->seq);
          global[cell] += dec[static_cast<size_t>(t)];
          seq_global += dec[static_cast<size_t>(t)];
          count[cell] += 1;
          layer_global[static_cast<size_t>(l)] += dec[static_cast<size_t>(t)];
          if (t >= forced) layer_global_free[static_cast<size_t>(l)] += dec[static_cast<size_t>(t)];
        }
      }
      seq_sparsity.push_back(1.0 - seq_global / static_cast<double>(L * args->seq));
      if (tty)
        std::cerr << "\r\033[K"
                  << fit_to_width("sparsity: sequence " + std::to_string(s + 1) + "/" + std::to_string(nseq),
                                  terminal_columns(fileno(stderr)) - 1)
                  << std::flush;
    }
    std::cerr << (tty ? "\r\033[K" : "") << "sparsity: " << nseq << " sequences of " << args->seq << " tokens\n";

    const double per_layer_tokens = static_cast<double>(nseq * args->seq);
    const double free_tokens = static_cast<double>(nseq * (args->seq - forced));
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
    rep["sequences"] = nseq;
    rep["seq_len"] = args->seq;
    rep["forced_local_positions"] = forced;
    double tot = 0, tot_free = 0;
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
      table.add_row({std::to_string(l), fixed4(sp), fixed4(spf)});
    }
    out << table.str();
    // Standard error of the overall sparsity over sequences (sample standard deviation / sqrt(n)).
    double mean = 0, var = 0;
    for (double x : seq_sparsity) mean += x / static_cast<double>(nseq);
    for (double x : seq_sparsity) var += (x - mean) * (x - mean);
    const double stderr_ = nseq > 1 ? std::sqrt(var / static_cast<double>(nseq - 1) / static_cast<double>(nseq)) : NAN;
    const double kv_per_token_layer = 2.0 * static_cast<double>(d.n_kv_heads * d.head_dim) * 2.0;  // K and V, bf16
    rep["sparsity"] = tot / static_cast<double>(L);
    rep["sparsity_stderr"] = std::isfinite(stderr_) ? nlohmann::ordered_json(stderr_) : nlohmann::ordered_json(nullptr);
    rep["sparsity_excl_forced"] = tot_free / static_cast<double>(L);
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
