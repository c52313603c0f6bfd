#include "cli/model_session.h"
#include "cli/validators.h"

#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <iostream>

#include "cpu/cpu_ops.h"
#include "loader/l2a_official.h"
#include "loader/model_resolver.h"
#include "loader/qwen2_weights.h"
#include "plugin_host/backend_module.h"
#include "common/flag_paths.h"
#include "model/model_dims.h"
#include "rt/sdk/error.h"

namespace rt {

void add_model_options(CLI::App& cmd, ModelOptions& o) {
  cmd.add_option("--model,-m", o.model,
                 "Model directory (config.json + safetensors) or preset name: qwen2.5-0.5b, qwen2.5-1.5b, "
                 "qwen2.5-3b, qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b. Names are looked up in $RUNTIME_MODELS, "
                 "./models and the Hugging Face cache")
      ->required();
  cmd.add_option("--init", o.init,
                 "'checkpoint' loads the weights; 'random' builds the preset's exact architecture with random "
                 "weights (for profiling without a download)")
      ->check(CLI::IsMember({"checkpoint", "random"}))
      ->capture_default_str();
  cmd.add_option("--seed", o.seed, "Seed for --init random")->capture_default_str();
  cmd.add_option("--attention,-a", o.attention,
                 "Attention plugin: full_causal, swa, l2a_dense, or any plugin `runtime plugins` lists. Default: "
                 "l2a_dense for a model whose config.json has an \"l2a\" section (an exported L2A model), else "
                 "the backend its \"attention_backend\" section records (a model exported by `runtime train`, "
                 "with its options, e.g. swa's window), else full_causal");
  cmd.add_option("--window,-w", o.window, "Sliding window W (keys per query, including itself) for swa and the local half of L2A")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            try {
              if (std::stoll(v) >= 1) return "";
            } catch (const std::exception&) {
            }
            return "expected a window of at least 1 key, found '" + v + "'";
          },
          "W>=1"));
  cmd.add_option("--set", o.set,
                 "Plugin option key=value (repeatable), e.g. --set window=512, --set layout=parallel, "
                 "--set router=fixed_rate --set sparsity=0.8. It goes to every backend of the run; "
                 "backend.key=value scopes it to one backend and beats the same unscoped key, e.g. "
                 "--attention full_causal,l2a_dense --set l2a_dense.router=fixed_rate "
                 "--set l2a_dense.sparsity=0.8");
  cmd.add_option("--rope-theta", o.rope_theta,
                 "RoPE base for every layer and backend instead of the config's (the L2A paper extends "
                 "Qwen to 128K with 5e6); also --set rope_theta=X. Exports record it")
      ->check(finite_in(1.0, 1e30));
  cmd.add_option("--max-position", o.max_position,
                 "Longest sequence (positions) instead of the config's max_position_embeddings, e.g. "
                 "131072 for 128K context; KV caches are sized from it. Also --set max_position=N")
      ->check(int_in(1, int64_t{1} << 30));
  cmd.add_option("--plugin", o.plugins, "Extra plugin file or directory to load first (repeatable)");
  cmd.add_option("--device", o.device, "Compute device")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  cmd.add_option("--threads", o.threads, "CPU threads (default: all cores)")->check(thread_count());
}

std::vector<std::filesystem::path> preset_config_dirs() {
  std::vector<std::filesystem::path> dirs;
  if (const char* env = std::getenv("RUNTIME_CONFIG_DIR")) dirs.emplace_back(std::filesystem::path(env) / "models");
  const auto exe = executable_dir();
  dirs.push_back(exe / ".." / "share" / "l2a-runtime" / "configs" / "models");
  dirs.push_back(std::filesystem::path(RT_SOURCE_CONFIGS_DIR) / "models");
  return dirs;
}

std::vector<int32_t> parse_ids(const std::string& text, const std::string& option) {
  std::vector<int32_t> ids;
  size_t start = 0;
  RT_CHECK(!text.empty(), option, ": no token ids given (expected e.g. 1,2,3)");
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    char* stop = nullptr;
    errno = 0;
    long long v = item.empty() ? -1 : std::strtoll(item.c_str(), &stop, 10);
    // The whole item must be digits: a NUL byte inside it would end strtoll's view of it early.
    if (item.empty() || stop != item.c_str() + item.size() || errno != 0 || v < 0 || v > INT32_MAX)
      fail(option, ": '", item, "' is not a token id (expected non-negative integers separated by commas)");
    ids.push_back(static_cast<int32_t>(v));
    start = end + 1;
  }
  return ids;
}

// The backend a model was exported with (`runtime train` writes {"name": ..., "options": {...}}
// into config.json's "attention_backend"), or "" when it records none.
static std::string recorded_backend(const HfConfig& config) {
  const auto it = config.raw.find("attention_backend");
  if (it == config.raw.end() || !it->is_object()) return "";
  const auto name = it->find("name");
  return name != it->end() && name->is_string() ? name->get<std::string>() : "";
}

static void set_recorded(Options& opts, const nlohmann::json& section) {
  for (const auto& [key, value] : section.items()) {
    if (value.is_null()) continue;
    opts.set(key, value.is_string() ? value.get<std::string>() : value.dump());
  }
}

// The section of config.json in which the checkpoint records `caps`'s options (L2A: "l2a"), or
// null when the backend declares none or the checkpoint lacks it.
static const nlohmann::json* recorded_section(const HfConfig& config, const Capabilities& caps) {
  if (caps.config_section == nullptr || !*caps.config_section) return nullptr;
  const auto it = config.raw.find(caps.config_section);
  return it != config.raw.end() && it->is_object() ? &*it : nullptr;
}

// The backends (by name) that take --window, for messages.
static std::string windowed_backends(const PluginRegistry& registry) {
  std::string names;
  for (const PluginInfo& p : registry.plugins())
    if (p.kind == PluginKind::Attention && p.caps.windowed) names += (names.empty() ? "" : ", ") + p.name;
  return names.empty() ? "none is loaded" : names;
}

// Plugin options, weakest first: what the checkpoint records (the backend's config section, e.g.
// a trained L2A model's "l2a"; the "attention_backend" options of a model exported with this
// backend), then --set (unscoped, then scoped to this backend), then --window.
// The layers in which the checkpoint's config enables sliding-window attention (transformers' layer_types).
static int64_t sliding_layers(const HfConfig& config) {
  return std::count(config.layer_types.begin(), config.layer_types.end(), "sliding_attention");
}

static Options plugin_options(const ModelOptions& o, const std::string& attention, const Capabilities& caps,
                              const HfConfig& config, const PluginRegistry& registry) {
  Options opts;
  if (recorded_backend(config) == attention && config.raw["attention_backend"].contains("options") &&
      config.raw["attention_backend"]["options"].is_object())
    set_recorded(opts, config.raw["attention_backend"]["options"]);
  if (const nlohmann::json* section = recorded_section(config, caps)) set_recorded(opts, *section);
  std::vector<std::string> known;
  for (const PluginInfo& p : registry.plugins())
    if (p.kind == PluginKind::Attention) known.push_back(p.name);
  const std::vector<std::string> run = o.run_backends.empty() ? std::vector<std::string>{attention} : o.run_backends;
  const Options set = backend_set_options(o.set, attention, run, known);
  for (const auto& [key, value] : set.all()) opts.set(key, value);
  // --window goes to the backends that take a window; with one backend it must be one of them,
  // in a multi-backend run (profile A/B), or where the window sizes something else too, the others
  // run without it.
  if (o.window > 0 && (caps.windowed || (o.run_backends.size() <= 1 && !o.window_has_other_use))) {
    RT_CHECK(caps.windowed, "--window ", o.window, " has no effect with --attention ", attention,
             ", which takes no window (backends that do: ", windowed_backends(registry), ")");
    opts.set("window", std::to_string(o.window));
  } else if (caps.hf_attention == Capabilities::HfAttention::SlidingWindow && !opts.has("window") &&
             config.sliding_window > 0) {
    opts.set("window", std::to_string(config.sliding_window));  // the checkpoint's own window
  }
  // A checkpoint that slides only some layers: the others attend to every past token, as in
  // transformers (layer_types, or max_window_layers without it).
  if (caps.hf_attention == Capabilities::HfAttention::SlidingWindow && !opts.has("full_layers") &&
      sliding_layers(config) > 0) {
    std::string full;
    for (size_t i = 0; i < config.layer_types.size(); ++i)
      if (config.layer_types[i] == "full_attention") full += (full.empty() ? "" : ",") + std::to_string(i);
    if (!full.empty()) opts.set("full_layers", full);
  }
  return opts;
}

// What the checkpoint shows about the backend's options, for AttentionBackend::reconcile_checkpoint.
static CheckpointFacts checkpoint_facts(const HfConfig& config, const Capabilities& caps, const WeightStore* store) {
  CheckpointFacts f;
  f.config_source = config.source;
  if (const nlohmann::json* section = recorded_section(config, caps)) set_recorded(f.recorded, *section);
  if (store)
    for (const auto& [name, w] : store->all()) f.tensors.push_back({w.name, w.file});
  return f;
}

// The backend a run uses when --attention is not given: the first backend (by name) that runs on
// the device and declares a config section the checkpoint has (an exported L2A model: its
// reference backend comes first), else the backend the model was exported with, else full_causal.
static std::string default_backend(const HfConfig& config, const PluginRegistry& registry, Device device) {
  std::vector<PluginInfo> plugins = registry.plugins();
  std::sort(plugins.begin(), plugins.end(), [](const PluginInfo& a, const PluginInfo& b) { return a.name < b.name; });
  for (const PluginInfo& p : plugins)
    if (p.kind == PluginKind::Attention && (device == Device::CUDA ? p.caps.cuda : p.caps.cpu) &&
        recorded_section(config, p.caps) != nullptr)
      return p.name;
  const std::string recorded = recorded_backend(config);
  if (!recorded.empty()) return recorded;
  // A checkpoint whose config enables sliding windows runs them, as transformers does.
  if (sliding_layers(config) > 0)
    for (const PluginInfo& p : plugins)
      if (p.kind == PluginKind::Attention && (device == Device::CUDA ? p.caps.cuda : p.caps.cpu) &&
          p.caps.hf_attention == Capabilities::HfAttention::SlidingWindow)
        return p.name;
  return "full_causal";
}

// The model-level settings of a run (--rope-theta, --max-position, and their unscoped --set forms),
// applied to the config, its raw JSON included so that exports record them. Returns the options
// with those --set entries removed: they change the model, not a plugin.
static ModelOptions apply_model_overrides(ModelOptions o, HfConfig& config) {
  std::vector<std::string> rest;
  for (const SetOption& s : parse_set_options(o.set)) {
    if (!s.scope.empty() || (s.key != "rope_theta" && s.key != "max_position")) {
      rest.push_back(s.arg);
      continue;
    }
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s.value.c_str(), &end);
    RT_CHECK(!s.value.empty() && *end == '\0' && errno == 0 && std::isfinite(v) && v > 0, "--set ", s.arg,
             ": expected a positive number");
    RT_CHECK(s.key != "rope_theta" || (v >= 1 && v <= 1e30), "--set ", s.arg,
             ": expected a RoPE base from 1 to 1e30 (below 1 the frequencies overflow)");
    if (s.key == "rope_theta") {
      o.rope_theta = v;
    } else {
      RT_CHECK(v == std::floor(v) && v <= 1e9, "--set ", s.arg, ": expected a whole number of positions");
      o.max_position = static_cast<int64_t>(v);
    }
  }
  o.set = rest;
  if (o.rope_theta > 0) {
    config.rope_theta = o.rope_theta;
    config.raw["rope_theta"] = o.rope_theta;
    if (config.raw.contains("rope_parameters") && config.raw["rope_parameters"].is_object())
      config.raw["rope_parameters"]["rope_theta"] = o.rope_theta;
  }
  if (o.max_position > 0) {
    config.max_position_embeddings = o.max_position;
    config.raw["max_position_embeddings"] = o.max_position;
  }
  return o;
}

std::vector<Capabilities> check_backend_list(const ModelOptions& o, const std::vector<std::string>& backends) {
  PluginRegistry registry;
  registry.discover(o.plugins);
  const Device device = o.device == "cuda" ? Device::CUDA : Device::CPU;
  std::vector<Capabilities> caps(backends.size());
  for (size_t i = 0; i < backends.size(); ++i) {
    if (backends[i].empty()) continue;  // the model's own
    RT_CHECK(std::find(backends.begin(), backends.begin() + static_cast<std::ptrdiff_t>(i), backends[i]) ==
                 backends.begin() + static_cast<std::ptrdiff_t>(i),
             "--attention: '", backends[i], "' is listed twice");
    caps[i] = registry.create_attention(backends[i], device)->capabilities();  // unknown, or not here: its error
  }
  return caps;
}

std::unique_ptr<ModelSession> open_model_session(const ModelOptions& given) {
  ModelOptions o = given;
  if (o.threads > 0) omp_set_num_threads(o.threads);
  auto s = std::make_unique<ModelSession>();
  if (o.device != "cpu") {
    s->ops = load_backend_ops(o.device);
  } else {
    s->ops = make_cpu_ops();
  }
  s->registry.discover(o.plugins);

  ResolvedModel resolved = with_flag("--model", o.model, [&] { return resolve_model(o.model, preset_config_dirs()); });
  HfConfig config;
  if (o.init == "random") {
    const auto cfg = resolved.config_path();
    config = parse_hf_config(cfg);
    s->model_name = resolved.name;
  } else {
    s->model_dir = require_weights(resolved);
    config = parse_hf_config(s->model_dir / "config.json");
    s->model_name = resolved.name;
  }
  o = apply_model_overrides(o, config);
  const ModelDims dims = dims_from_config(config);
  s->attention_name = !o.attention.empty() ? o.attention : default_backend(config, s->registry, s->ops->device());
  s->attention = s->registry.create_attention(s->attention_name, s->ops->device());
  const Capabilities caps = s->attention->capabilities();
  if (o.init != "random") {
    s->weights.emplace(WeightStore::open(s->model_dir));
    // An official L2A checkpoint names its global attention and router its own way; everything below
    // (the layout the plugin reads off the tensor names, load_weights) sees this runtime's names.
    adopt_official_l2a_names(config, *s->weights);
    if (const std::string note = reconcile_tied_head(config, *s->weights); !note.empty())
      std::cerr << "warning: " << note << "\n";
  }
  Options options = plugin_options(o, s->attention_name, caps, config, s->registry);
  s->attention->reconcile_checkpoint(checkpoint_facts(config, caps, s->weights ? &*s->weights : nullptr), options);
  if (caps.router) {
    s->router = s->registry.create_router(options.get_string("router", "linear_sigmoid"));
    s->attention->attach_router(s->router.get());
  }
  if (caps.hf_attention == Capabilities::HfAttention::Full && sliding_layers(config) > 0) {
    std::string hf_window;  // a backend that runs HF's sliding-window attention, to suggest
    for (const PluginInfo& p : s->registry.plugins())
      if (p.caps.hf_attention == Capabilities::HfAttention::SlidingWindow && hf_window.empty()) hf_window = p.name;
    std::cerr << "warning: " << config.source << " enables sliding-window attention (window "
              << config.sliding_window << ") in " << sliding_layers(config) << " of " << config.layer_types.size()
              << " layers; " << s->attention_name << " attends to every past token in every layer."
              << (hf_window.empty() ? std::string()
                                    : " Leave out --attention, or use --attention " + hf_window +
                                          " (the window and the layers from the checkpoint), to match it.")
              << "\n";
  }
  s->attention->configure(options, dims);
  s->attention_options = options;
  s->model = std::make_unique<Qwen2Model>(std::move(config), *s->ops, *s->attention);
  if (o.init == "random") {
    s->model->init_random(o.seed);
  } else {
    s->model->load_weights(*s->weights);
    const auto& from_init = s->model->params_from_init_rules();
    if (!from_init.empty()) {
      std::string list;
      for (const auto& p : from_init) list += (list.empty() ? "" : ", ") + p;
      std::cerr << "warning: " << s->model_dir.string() << " has no trained weights for " << s->attention_name
                << "'s extra parameters; they come from the plugin's init rules (untrained): " << list << "\n";
    }
  }
  return s;
}

}  // namespace rt
