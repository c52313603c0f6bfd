// What every model-running command shares: the --model/--attention/... options and the objects
// they produce (plugin registry, compute backend, attention plugin, loaded model).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/plugin_settings.h"
#include "model/qwen2_model.h"
#include "plugin_host/plugin_registry.h"

namespace rt {

struct ModelOptions {
  std::string model;
  std::string init = "checkpoint";  // or "random"
  uint64_t seed = 0;
  std::string attention;  // "": l2a_dense for a model whose config.json has an "l2a" section, else the
                          // backend its "attention_backend" section records, else full_causal
  int64_t window = 0;  // 0: not given
  // --window has a use of its own in this command (profile's kernel rows), so a backend without a
  // window runs without it instead of refusing it.
  bool window_has_other_use = false;
  std::vector<std::string> set;  // plugin options key=value or backend.key=value (cli/plugin_settings.h)
  // Every backend of this run, which a --set scope must name (profile's A/B list); empty: just the
  // one being opened.
  std::vector<std::string> run_backends;
  std::vector<std::string> plugins;
  std::string device = "cpu";
  int threads = 0;
  // Model-level overrides for every backend of the run (the paper's long-context setting:
  // --rope-theta 5e6 --max-position 131072); 0: the config's. `--set rope_theta=` and
  // `--set max_position=` (unscoped) set them too.
  double rope_theta = 0;
  int64_t max_position = 0;
};

void add_model_options(CLI::App& cmd, ModelOptions& o);

struct ModelSession {
  PluginRegistry registry;
  std::unique_ptr<Ops> ops;
  RouterPtr router;  // routed backends only; declared before `attention`, which points to it
  AttentionBackendPtr attention;
  std::string attention_name;
  Options attention_options;  // as passed to configure(): checkpoint "l2a" section, --set (unscoped, then
                              // scoped to this backend), --window
  std::unique_ptr<Qwen2Model> model;
  std::optional<WeightStore> weights;   // keeps the mmap alive while the model is built
  std::filesystem::path model_dir;      // empty for --init random
  std::string model_name;
};

std::unique_ptr<ModelSession> open_model_session(const ModelOptions& o);

// Before a multi-backend run does any work: every backend named (empty: the model's own) is a known
// attention plugin that runs on the device, and none is listed twice. Errors name the backend.
// Returns each named backend's capabilities, in order (default ones for the model's own).
std::vector<Capabilities> check_backend_list(const ModelOptions& o, const std::vector<std::string>& backends);

// "1,2,3" -> {1, 2, 3}; errors name the option and the bad item.
std::vector<int32_t> parse_ids(const std::string& text, const std::string& option);

// Where preset configs (configs/models/<name>.json) are looked for.
std::vector<std::filesystem::path> preset_config_dirs();

}  // namespace rt
