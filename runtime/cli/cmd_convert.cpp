// runtime convert: writes an L2A model in the official release's format (awslabs/hybrid-model-factory,
// model_type "l2a_qwen3"), so that a model trained here runs in the official code and tools built on
// it. The tensors are copied byte for byte (their dtype kept), only renamed; config.json gets the
// official router fields. The model is first opened as every command opens it, so whatever loads
// here with the same logits is what gets written, and nothing untrained slips through.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/validators.h"
#include "cli/model_session.h"
#include "common/durable_file.h"
#include "common/flag_paths.h"
#include "loader/l2a_official.h"
#include "loader/safetensors_writer.h"

namespace rt {

namespace {

namespace fs = std::filesystem;

const char* hf_dtype_name(StDType t) {
  switch (t) {
    case StDType::F32: return "float32";
    case StDType::BF16: return "bfloat16";
    case StDType::F16: return "float16";
    default: return nullptr;
  }
}

// What the official format cannot hold, checked before anything is written.
void check_convertible(const ModelSession& s, const std::string& model_flag) {
  const HfConfig& c = s.model->config();
  const std::string m = "--model " + model_flag + ": ";
  if (!c.qk_norm || c.qkv_bias)
    fail(m, "model_type \"", c.model_type,
         "\" has q/k/v biases and no QK-norm, but the official l2a_qwen3 format is Qwen3 (QK-norm, no biases) and "
         "cannot hold it; train L2A on a Qwen3 base model to export it");
  const Capabilities caps = s.attention->capabilities();
  if (caps.config_section == nullptr || std::string(caps.config_section) != "l2a")
    fail(m, "not an L2A model: its config.json has no \"l2a\" section, so it runs as ", s.attention_name,
         ". Train one first (runtime train --attention l2a_dense ...) and convert the exported DIR/model");
  const Options& o = s.attention_options;
  const std::string layout = o.get_string("layout", "paper");
  if (layout != "paper")
    fail(m, "L2A layout \"", layout,
         "\" (one set of projections shared by local and global attention) has no place in the official format, "
         "which is the paper layout (separate global attention weights)");
  const std::string router = o.get_string("router", "linear_sigmoid");
  if (router != "linear_sigmoid")
    fail(m, "router \"", router,
         "\" cannot be exported: the official format's router is linear_sigmoid (sigmoid_linear, hidden_linearproj)");
  if (o.get_bool("force_local", false))
    fail(m, "force_local = true cannot be exported: the official router decides every position");
  const auto& untrained = s.model->params_from_init_rules();
  if (!untrained.empty()) {
    std::string list;
    for (const auto& p : untrained) list += (list.empty() ? "" : ", ") + p;
    fail(m, "has no trained L2A weights for ", list,
         "; converting would write untrained ones. Train L2A first (runtime train --attention l2a_dense)");
  }
}

nlohmann::ordered_json official_config(const ModelSession& s, const std::string& dtype) {
  const HfConfig& c = s.model->config();
  const Options& o = s.attention_options;
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(c.raw.dump());
  const int64_t window = o.get_int("window", 0);
  const double tau = o.get_double("tau", 0.1), threshold = o.get_double("threshold", 0.5);
  cfg["model_type"] = "l2a_qwen3";
  cfg["architectures"] = {"L2AQwen3ForCausalLM"};
  // In l2a_qwen3, sliding_window is the L2A local window, not the base model's sliding layers.
  cfg["sliding_window"] = window;
  cfg["use_sliding_window"] = false;
  if (cfg.contains("layer_types")) {
    cfg["layer_types"] = nlohmann::ordered_json::array();
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) cfg["layer_types"].push_back("full_attention");
  }
  cfg["sigmoid_temp"] = tau;
  cfg["sigmoid_threshold"] = threshold;
  cfg["sig_input_type"] = "hidden_linearproj";
  cfg["sigmoid_linear"] = true;
  // The plugin's RoPE override applies to both sublayers; the official model has one theta.
  if (const double theta = o.get_double("rope_theta", 0.0); theta > 0) {
    cfg["rope_theta"] = theta;
    if (cfg.contains("rope_parameters") && cfg["rope_parameters"].is_object()) cfg["rope_parameters"]["rope_theta"] = theta;
  }
  if (!dtype.empty()) {
    if (cfg.contains("torch_dtype")) cfg["torch_dtype"] = dtype;
    if (cfg.contains("dtype") || !cfg.contains("torch_dtype")) cfg["dtype"] = dtype;
  }
  // Our own section stays, typed as the official fields it mirrors (the loader checks they agree), so
  // training options (lambda, leak_prob, ...) survive a round trip.
  nlohmann::ordered_json l2a = cfg.contains("l2a") && cfg["l2a"].is_object() ? cfg["l2a"] : nlohmann::ordered_json::object();
  l2a["layout"] = "paper";
  l2a["window"] = window;
  l2a["tau"] = tau;
  l2a["threshold"] = threshold;
  l2a["router"] = "linear_sigmoid";
  cfg["l2a"] = l2a;
  return cfg;
}

void convert(const ModelSession& s, const std::string& model_flag, const fs::path& out) {
  const WeightStore& store = *s.weights;
  std::vector<StWriteTensor> tensors;
  std::vector<std::string> written;
  std::string dtype;
  bool uniform = true;
  for (const std::string& ours : s.model->parameter_names()) {
    const WeightInfo& w = store.get(ours);
    StWriteTensor t;
    t.name = l2a_ours_to_official(ours);
    t.dtype = w.dtype;
    t.shape = w.shape;
    t.data = w.data;
    t.nbytes = w.nbytes;
    tensors.push_back(t);
    written.push_back(t.name);
    const char* name = hf_dtype_name(w.dtype);
    if (dtype.empty()) dtype = name ? name : "";
    uniform = uniform && name && dtype == name;
  }
  // A layer without its global attention (a pruned one) has no form in the official files.
  std::sort(written.begin(), written.end());
  std::vector<std::string> missing;
  for (const L2aOfficialTensor& e : l2a_official_expected(s.model->config()))
    if (!std::binary_search(written.begin(), written.end(), e.name)) missing.push_back(e.name);
  if (!missing.empty())
    fail("--model ", model_flag, ": ", missing.size(), " official L2A tensor(s) would be missing, e.g. ", missing.front(),
         ": every layer of an l2a_qwen3 model has global attention and a router (a pruned layer cannot be exported)");
  // Widest dtype first keeps every tensor aligned in the file.
  std::stable_sort(tensors.begin(), tensors.end(), [](const StWriteTensor& a, const StWriteTensor& b) {
    return st_dtype_bits(a.dtype) > st_dtype_bits(b.dtype);
  });

  const nlohmann::ordered_json cfg = official_config(s, uniform ? dtype : "");
  const std::string cfg_text = cfg.dump(2) + "\n";
  // The written config must load here as what it claims to be.
  parse_hf_config_text(cfg_text, (out / "config.json").string());

  with_flag("--out", out.string(), [&] {
    fs::create_directories(out);
    save_safetensors(out / "model.safetensors", tensors, {{"format", "pt"}});
    write_file_atomic(out / "config.json", cfg_text);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "generation_config.json"}) {
      std::error_code ec;
      if (fs::exists(s.model_dir / f, ec))
        fs::copy_file(s.model_dir / f, out / f, fs::copy_options::overwrite_existing);
    }
  });
  std::cerr << "wrote " << out.string() << ": l2a_qwen3, " << tensors.size() << " tensors"
            << (uniform ? " (" + dtype + ")" : std::string()) << ", sliding_window " << cfg["sliding_window"]
            << ", sigmoid_temp " << cfg["sigmoid_temp"] << ", sigmoid_threshold " << cfg["sigmoid_threshold"] << "\n";
}

// Holds what std::cerr receives while alive. Loading warns about what a refusal then says better
// ("no trained weights for ..."), so a refused conversion prints its one error line alone.
class HeldStderr {
 public:
  HeldStderr() : old_(std::cerr.rdbuf(held_.rdbuf())) {}
  ~HeldStderr() { std::cerr.rdbuf(old_); }
  HeldStderr(const HeldStderr&) = delete;
  HeldStderr& operator=(const HeldStderr&) = delete;
  std::string text() const { return held_.str(); }

 private:
  std::ostringstream held_;
  std::streambuf* old_;
};

}  // namespace

void register_convert(CLI::App& app) {
  struct Args {
    std::string model, to, out;
    std::vector<std::string> plugins;
    int threads = 0;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Write an L2A model in the official release's format (model_type l2a_qwen3)");
  cmd->footer(
      "\nThe official L2A release (awslabs/hybrid-model-factory) is Qwen3 with a second, global attention per\n"
      "layer and a learned router. This runtime loads its checkpoints directly (--model DIR); convert goes the\n"
      "other way. What changes: tensor names (global_attn.q_proj -> self_attn.q_proj_global, global_layernorm\n"
      "-> input_layernorm_global, router -> self_attn.sigmoid_linear, ...), model_type and architectures, and\n"
      "the router fields sliding_window (= window), sigmoid_temp (= tau), sigmoid_threshold (= threshold),\n"
      "sig_input_type \"hidden_linearproj\", sigmoid_linear true. Tensor values and dtypes are copied as they\n"
      "are; the \"l2a\" section stays, so training options survive. The model must be a Qwen3 L2A model in\n"
      "the paper layout with the linear_sigmoid router and trained global weights; anything else is refused.\n"
      "\nExample:\n"
      "  runtime train --model qwen3-0.6b --attention l2a_dense --config configs/l2a_router_only.toml \\\n"
      "      --data train.txt --steps 500 --out runs/q3\n"
      "  runtime convert --model runs/q3/model --to l2a_qwen3 --out runs/q3/official\n"
      "  runtime logits --model runs/q3/official --ids 1,2,3 --out x.npy   # the same logits");
  cmd->add_option("--model,-m", args->model, "The L2A model directory (e.g. DIR/model written by runtime train)")
      ->required();
  cmd->add_option("--to", args->to, "Target format")->required()->check(CLI::IsMember({"l2a_qwen3"}));
  cmd->add_option("--out,-o", args->out, "Output model directory (config.json, model.safetensors)")->required()->check(non_empty_path());
  cmd->add_option("--plugin", args->plugins, "Extra plugin file or directory to load first (repeatable)");
  cmd->add_option("--threads", args->threads, "CPU threads (default: all cores)")->check(thread_count());
  cmd->callback([args] {
    const fs::path out = args->out;
    std::error_code ec;
    if (fs::exists(out, ec) && !fs::is_directory(out, ec))
      fail("--out ", args->out, ": exists and is not a directory");
    if (fs::exists(out, ec) && fs::exists(args->model, ec) && fs::equivalent(out, args->model, ec))
      fail("--out ", args->out, ": is the --model directory; write the converted model somewhere else");
    ModelOptions mo;
    mo.model = args->model;
    mo.plugins = args->plugins;
    mo.threads = args->threads;
    std::unique_ptr<ModelSession> session;
    std::string warnings;
    {
      HeldStderr held;
      session = open_model_session(mo);
      warnings = held.text();
    }
    check_convertible(*session, args->model);
    std::cerr << warnings;
    convert(*session, args->model, out);
  });
}

}  // namespace rt
