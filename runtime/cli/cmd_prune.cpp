// runtime prune: removes the global sublayer (router, global norm and projections, global KV cache)
// of chosen L2A layers and writes the smaller model. DESIGN.md section 4, "KV cache": a layer
// whose measured sparsity is high routes almost nothing global, so its global cache of every
// token is memory spent for nothing.
//
// The model is rebuilt with the backend option pruned_layers (the plugin then declares no global
// parameters for those layers) and exported as it loads, so the written directory holds exactly
// the tensors the pruned model reads, and its "l2a" section records the list.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_session.h"
#include "cli/prune_plan.h"
#include "cli/sparsity_measure.h"
#include "cli/validators.h"
#include "common/durable_file.h"
#include "common/flag_paths.h"
#include "common/text_table.h"
#include "loader/model_resolver.h"
#include "model/model_dims.h"
#include "rt/sdk/error.h"
#include "train/trainer.h"

namespace rt {

namespace {

namespace fs = std::filesystem;

std::string join(const std::vector<int>& v) {
  std::string s;
  for (int x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

std::string mib(double bytes) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(bytes < (1 << 20) ? 3 : 1) << bytes / (1 << 20);
  return o.str();
}

// --out may be new, an empty directory, or a model directory (config.json) to replace: anything
// else is refused rather than deleted.
void check_out_dir(const fs::path& out) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(out, ec))) {
    const fs::path parent = fs::absolute(out, ec).parent_path();
    RT_CHECK(fs::is_directory(parent, ec), "--out ", out.string(), ": its parent directory ", parent.string(),
             " does not exist");
    return;
  }
  RT_CHECK(fs::is_directory(out, ec) && !fs::is_symlink(out, ec), "--out ", out.string(),
           ": exists and is not a directory (the pruned model is a directory: config.json, model.safetensors)");
  RT_CHECK(fs::is_empty(out, ec) || fs::exists(out / "config.json", ec), "--out ", out.string(),
           ": a non-empty directory that is not a model directory (no config.json); refusing to replace it");
}

// Writes the directory under a temporary name beside `out`, then renames it into place (an old
// model directory there is moved aside first and removed after), so `out` is never half-written.
template <typename F>
void publish_dir(const fs::path& out, F&& write) {
  const fs::path abs = fs::absolute(out).lexically_normal();
  const fs::path target = abs.filename().empty() ? abs.parent_path() : abs;
  const fs::path parent = target.parent_path();
  const std::string tag = "." + target.filename().string() + ".prune-" + std::to_string(::getpid());
  const fs::path tmp = parent / (tag + ".tmp"), old = parent / (tag + ".old");
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    write(tmp);
    fsync_dir(tmp);
    if (fs::exists(target, ec)) rename_or_fail(target, old);
    rename_or_fail(tmp, target);
    fsync_dir(parent);
  } catch (...) {
    fs::remove_all(tmp, ec);
    if (!fs::exists(target, ec) && fs::exists(old, ec)) fs::rename(old, target, ec);
    throw;
  }
  fs::remove_all(old, ec);
}

std::vector<int64_t> parse_lengths(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* stop = nullptr;
    const long long v = std::strtoll(item.c_str(), &stop, 10);
    int64_t mult = 1;
    if (stop && (*stop == 'K' || *stop == 'k')) mult = 1024, ++stop;
    RT_CHECK(!item.empty() && stop && *stop == '\0' && v >= 1, "--kv-seq: '", item,
             "' is not a sequence length (e.g. 4096,32K,128K)");
    out.push_back(v * mult);
  }
  RT_CHECK(!out.empty(), "--kv-seq: no sequence length given");
  return out;
}

}  // namespace

void register_prune(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string layers, data, tokenizer, out, kv_seq = "4K,32K,128K";
    double threshold = -1;
    int64_t seq = 1024, max_sequences = 0;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("prune", "Remove the global sublayer of chosen (or highly sparse) L2A layers");
  cmd->footer(
      "\nA pruned layer keeps its local window sublayer and MLP; its router, global norm, global q/k/v/o\n"
      "and global KV cache are gone. The output loads with --model in every command; its config.json\n"
      "records the layers in l2a.pruned_layers. Pruning a pruned model adds layers.\n"
      "Examples:\n"
      "  runtime prune --model runs/router/model --layers 0,5,7 --out runs/pruned\n"
      "  runtime prune --model runs/router/model --threshold 0.95 --data ../shared/data/wikitext-2/test.txt \\\n"
      "      --seq 4096 --out runs/pruned");
  add_model_options(*cmd, args->model);
  cmd->add_option("--layers", args->layers, "Layers to prune, 0-based: 0,5,7");
  cmd->add_option("--threshold", args->threshold,
                  "Prune every layer whose sparsity (fraction of d = 0, measured on --data as `runtime sparsity` "
                  "does) is at least this, in [0, 1]");
  cmd->add_option("--data,-d", args->data, "Data to measure sparsity on (with --threshold): .txt, .jsonl or .bin");
  cmd->add_option("--seq", args->seq, "Tokens per sequence for the measurement")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--max-sequences", args->max_sequences,
                  "Sequences to measure (default: as `runtime sparsity`, at least 32 and 65536 tokens)")
      ->check(at_least(1));
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer for text data (default: the model directory's)");
  cmd->add_option("--kv-seq", args->kv_seq, "Sequence lengths of the KV-cache report")->capture_default_str();
  cmd->add_option("--out,-o", args->out, "Output model directory (written atomically; also prune_report.json)")
      ->required();
  cmd->callback([args] {
    const bool by_layers = !args->layers.empty(), by_threshold = args->threshold != -1;
    RT_CHECK(by_layers != by_threshold, "prune: give exactly one of --layers (which layers) and --threshold "
             "(every layer at least that sparse on --data)", by_layers ? ", not both" : "");
    if (by_threshold) {
      RT_CHECK(std::isfinite(args->threshold) && args->threshold >= 0 && args->threshold <= 1,
               "--threshold: must be a sparsity in [0, 1], found ", args->threshold);
      RT_CHECK(!args->data.empty(), "--threshold: needs --data, the text the layers' sparsity is measured on");
    } else {
      RT_CHECK(args->data.empty(), "--data: used only with --threshold (--layers names the layers itself)");
    }
    const std::vector<int64_t> lengths = parse_lengths(args->kv_seq);
    const SparsityRequest req{args->data, args->tokenizer, args->seq, args->max_sequences, 1};
    if (by_threshold) check_sparsity_inputs(req);
    with_flag("--out", args->out, [&] { check_out_dir(args->out); });
    // The list is checked against the config before the model loads (and warns about anything).
    std::vector<int> chosen;
    if (by_layers) {
      const ResolvedModel resolved =
          with_flag("--model", args->model.model, [&] { return resolve_model(args->model.model, preset_config_dirs()); });
      chosen = parse_layer_indices(args->layers, "--layers", dims_from_config(parse_hf_config(resolved.config_path())).n_layers);
    }

    auto session = open_model_session(args->model);
    const Capabilities caps = session->attention->capabilities();
    RT_CHECK(caps.router && caps.config_section != nullptr, "prune: attention backend '", session->attention_name,
             "' has no routed global sublayer to prune; prune an L2A model (one whose config.json has an \"l2a\" "
             "section, or --attention l2a_dense --window W)");
    const int64_t L = session->model->dims().n_layers;
    const std::vector<int> before = pruned_layers_of(*session);
    SparsityMeasure measured;
    if (by_threshold) {
      measured = measure_sparsity(*session, req);
      for (int64_t l = 0; l < L; ++l)
        if (measured.layer[static_cast<size_t>(l)] >= args->threshold) chosen.push_back(static_cast<int>(l));
    }
    std::vector<int> after = before;
    for (int l : chosen)
      if (!std::binary_search(before.begin(), before.end(), l)) after.push_back(l);
    std::sort(after.begin(), after.end());
    const L2aKvShape shape = l2a_kv_shape(*session);
    const std::string model_dir = session->model_dir.string(), attention = session->attention_name;
    session.reset();

    // The export is built on the CPU (fp32 weights, exactly as stored), whatever --device measured on.
    ModelOptions mo = args->model;
    mo.device = "cpu";
    mo.attention = attention;
    mo.set.push_back(attention + ".pruned_layers=" + join(after));
    auto pruned = open_model_session(mo);
    // The formula below is the plugin's allocation; check it against the real caches once.
    const int64_t probe = std::max<int64_t>(1, std::min<int64_t>(shape.window + 3, pruned->model->dims().max_positions));
    const double act_bytes = static_cast<double>(dtype_size(pruned->ops->activation_dtype()));
    RT_CHECK(static_cast<double>(model_kv_bytes(*pruned, probe)) == l2a_kv_bytes(shape, after, probe, act_bytes),
             "prune: internal error: the KV-cache formula disagrees with the backend's caches at ", probe, " tokens");

    nlohmann::ordered_json rep;
    rep["model"] = args->model.model;
    rep["attention"] = pruned->attention_name;
    rep["pruned_before"] = before;
    rep["pruned_now"] = chosen;
    rep["pruned_layers"] = after;
    rep["n_layers"] = L;
    if (by_threshold) {
      rep["threshold"] = args->threshold;
      rep["data"] = args->data;
      rep["sequences"] = measured.sequences;
      rep["seq_len"] = measured.seq_len;
      // Layers pruned before the measurement route nothing: they read as sparsity 1.
      nlohmann::ordered_json layers = nlohmann::ordered_json::array();
      for (int64_t l = 0; l < L; ++l)
        layers.push_back({{"layer", l},
                          {"sparsity", measured.layer[static_cast<size_t>(l)]},
                          {"pruned", std::binary_search(after.begin(), after.end(), static_cast<int>(l))}});
      rep["layers"] = layers;
    }
    rep["kv_dtype"] = "bf16";
    rep["kv_cache"] = nlohmann::ordered_json::array();
    TextTable kv({{"seq", TextTable::Align::Right}, {"KV MiB before"}, {"KV MiB after"}, {"saved MiB"}, {"saved"}});
    for (int64_t T : lengths) {
      const double b = l2a_kv_bytes(shape, before, T, 2.0), a = l2a_kv_bytes(shape, after, T, 2.0);
      rep["kv_cache"].push_back({{"seq", T},
                                 {"before_bytes", static_cast<int64_t>(b)},
                                 {"after_bytes", static_cast<int64_t>(a)},
                                 {"saved_bytes", static_cast<int64_t>(b - a)},
                                 {"saved_fraction", b > 0 ? (b - a) / b : 0.0}});
      std::ostringstream pct;
      pct << std::fixed << std::setprecision(1) << (b > 0 ? 100.0 * (b - a) / b : 0.0) << "%";
      kv.add_row({std::to_string(T), mib(b), mib(a), mib(b - a), pct.str()});
    }

    if (by_threshold) {
      TextTable t({{"layer", TextTable::Align::Right}, {"sparsity"}, {"pruned"}});
      for (int64_t l = 0; l < L; ++l) {
        std::ostringstream sp;
        sp << std::fixed << std::setprecision(4) << measured.layer[static_cast<size_t>(l)];
        const bool was = std::binary_search(before.begin(), before.end(), static_cast<int>(l));
        const bool now = std::binary_search(after.begin(), after.end(), static_cast<int>(l));
        t.add_row({std::to_string(l), sp.str(), was ? "yes (before)" : now ? "yes" : "no"});
      }
      std::cout << "sparsity over " << measured.sequences << " sequences of " << measured.seq_len
                << " tokens (pruned layers route nothing: 1.0), threshold " << args->threshold << "\n"
                << t.str();
    }
    std::cout << "pruned layers: " << (after.empty() ? "none" : join(after)) << " of " << L
              << (chosen.size() == after.size() - before.size() ? "" : " (some were pruned already)") << "\n"
              << "KV cache per sequence (bf16, every layer):\n"
              << kv.str();

    Options options = pruned->attention_options;
    // Recorded, not defaulted: a model whose every layer is pruned has no global tensors left to show it.
    if (!options.has("layout")) options.set("layout", shape.paper ? "paper" : "parallel");
    with_flag("--out", args->out, [&] {
      publish_dir(args->out, [&](const fs::path& dir) {
        export_model(*pruned->ops, *pruned->model, dir, pruned->attention_name, options, pruned->model_dir);
        // The list as a JSON array (export_model records option values as scalars).
        std::ifstream in(dir / "config.json");
        nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(in);
        const char* section = pruned->attention->capabilities().config_section;
        cfg[section]["pruned_layers"] = after;
        if (cfg.contains("attention_backend") && cfg["attention_backend"].contains("options"))
          cfg["attention_backend"]["options"]["pruned_layers"] = after;
        write_file_atomic(dir / "config.json", cfg.dump(2) + "\n");
        write_file_atomic(dir / "prune_report.json", rep.dump(2) + "\n");
      });
    });
    // model_dir is empty for a preset built with --init random (no directory to name).
    std::cerr << "wrote " << args->out << " (" << (model_dir.empty() ? args->model.model : model_dir) << " with "
              << after.size() << " of " << L << " layers pruned) and "
              << (fs::path(args->out) / "prune_report.json").string() << "\n";
  });
}

}  // namespace rt
