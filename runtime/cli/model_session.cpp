#include "cli/model_session.h"
#include "cli/validators.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>

#include "cpu/cpu_ops.h"
#ifdef RT_WITH_CUDA_BACKEND
#include "cuda/cuda_ops.h"
#endif
#include "loader/model_resolver.h"
#include "model/model_dims.h"
#include "rt/sdk/error.h"

namespace rt {

void add_model_options(CLI::App& cmd, ModelOptions& o) {
  cmd.add_option("--model,-m", o.model,
                 "Model directory (config.json + safetensors) or preset name: qwen2.5-0.5b, qwen2.5-1.5b, "
                 "qwen2.5-3b. Names are looked up in $RUNTIME_MODELS, ./models and the Hugging Face cache")
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
                 "full_causal");
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
  cmd.add_option("--plugin", o.plugins, "Extra plugin file or directory to load first (repeatable)");
  cmd.add_option("--device", o.device, "Compute device")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  cmd.add_option("--threads", o.threads, "CPU threads (default: all cores)")->check(at_least(0));
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
    if (item.empty() || *stop != '\0' || errno != 0 || v < 0 || v > INT32_MAX)
      fail(option, ": '", item, "' is not a token id (expected non-negative integers separated by commas)");
    ids.push_back(static_cast<int32_t>(v));
    start = end + 1;
  }
  return ids;
}

// Plugin options, weakest first: the checkpoint's "l2a" section (a trained L2A model carries its
// settings), then --set (unscoped, then scoped to this backend), then --window.
static Options plugin_options(const ModelOptions& o, const std::string& attention, const HfConfig& config,
                              const PluginRegistry& registry) {
  Options opts;
  if (config.raw.contains("l2a") && config.raw["l2a"].is_object() && attention.rfind("l2a", 0) == 0)
    for (const auto& [key, value] : config.raw["l2a"].items()) {
      if (value.is_null()) continue;
      opts.set(key, value.is_string() ? value.get<std::string>() : value.dump());
    }
  std::vector<std::string> known;
  for (const PluginInfo& p : registry.plugins())
    if (p.kind == PluginKind::Attention) known.push_back(p.name);
  const std::vector<std::string> run = o.run_backends.empty() ? std::vector<std::string>{attention} : o.run_backends;
  const Options set = backend_set_options(o.set, attention, run, known);
  for (const auto& [key, value] : set.all()) opts.set(key, value);
  if (o.window > 0) {
    RT_CHECK(attention != "full_causal", "--window ", o.window,
             " has no effect with --attention full_causal; use --attention swa");
    opts.set("window", std::to_string(o.window));
  } else if (attention == "swa" && !opts.has("window") && config.sliding_window > 0) {
    opts.set("window", std::to_string(config.sliding_window));  // the checkpoint's own window
  }
  return opts;
}

std::unique_ptr<ModelSession> open_model_session(const ModelOptions& o) {
  if (o.threads > 0) omp_set_num_threads(o.threads);
  auto s = std::make_unique<ModelSession>();
  if (o.device == "cuda") {
#ifdef RT_WITH_CUDA_BACKEND
    RT_CHECK(cuda_device_available(), "--device cuda: no usable CUDA device (driver missing or no GPU); "
             "use --device cpu");
    s->ops = make_cuda_ops();
#else
    fail("--device cuda: this binary was built without the CUDA backend (no nvcc at configure time); "
         "use --device cpu or rebuild with the CUDA toolkit installed");
#endif
  } else {
    s->ops = make_cpu_ops();
  }
  s->registry.discover(o.plugins);

  ResolvedModel resolved = resolve_model(o.model, preset_config_dirs());
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
  const ModelDims dims = dims_from_config(config);
  s->attention_name = !o.attention.empty() ? o.attention : config.raw.contains("l2a") ? "l2a_dense" : "full_causal";
  s->attention = s->registry.create_attention(s->attention_name, s->ops->device());
  const Options options = plugin_options(o, s->attention_name, config, s->registry);
  if (s->attention->capabilities().router) {
    s->router = s->registry.create_router(options.get_string("router", "linear_sigmoid"));
    s->attention->attach_router(s->router.get());
  }
  if (s->attention_name == "full_causal" &&
      std::count(config.layer_types.begin(), config.layer_types.end(), "sliding_attention") > 0)
    std::cerr << "warning: " << config.source << " enables sliding-window attention (window "
              << config.sliding_window << ") in some layers; full_causal attends to every past token. "
              << "Use --attention swa --window " << config.sliding_window << " to match it.\n";
  s->attention->configure(options, dims);
  s->attention_options = options;
  s->model = std::make_unique<Qwen2Model>(std::move(config), *s->ops, *s->attention);
  if (o.init == "random") {
    s->model->init_random(o.seed);
  } else {
    s->weights.emplace(WeightStore::open(s->model_dir));
    s->model->load_weights(*s->weights);
  }
  return s;
}

}  // namespace rt
