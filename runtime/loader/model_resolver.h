// Turns the --model argument into files: an explicit model directory, or a preset name
// (qwen2.5-0.5b, -1.5b, -3b) looked up in $RUNTIME_MODELS, ./models and the Hugging Face hub
// cache, plus the preset's config.json copy under configs/models/ (enough for random init).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace rt {

struct ModelPreset {
  std::string name;     // "qwen2.5-0.5b"
  std::string hf_repo;  // "Qwen/Qwen2.5-0.5B"
};

const std::vector<ModelPreset>& model_presets();
// Case-insensitive match on the preset name or its Hugging Face repo id.
std::optional<ModelPreset> find_preset(std::string_view spec);

struct ResolvedModel {
  std::string name;     // preset name, or the directory's file name
  std::string hf_repo;  // empty unless a preset
  std::optional<std::filesystem::path> dir;            // holds config.json (+ weights if has_weights)
  std::optional<std::filesystem::path> preset_config;  // configs/models/<name>.json
  bool has_weights = false;  // dir has model.safetensors or model.safetensors.index.json
  // Every place looked, in order, with why it was not used ("... : does not exist").
  std::vector<std::string> searched;

  // dir/config.json when a directory was found, else the preset config; throws if neither.
  std::filesystem::path config_path() const;
};

// Directories holding <preset>.json: ./configs/models, then the source tree's configs/models.
std::vector<std::filesystem::path> default_preset_dirs();

// `spec` is an existing directory (must contain config.json) or a preset name. A preset without
// local weights resolves with dir == nullopt (random init still possible from preset_config).
// Throws for an unknown name (listing the presets) or a directory without config.json.
ResolvedModel resolve_model(const std::string& spec,
                            const std::vector<std::filesystem::path>& presets_dirs = default_preset_dirs());

// The directory holding weights, or an error listing every place looked and how to get them.
std::filesystem::path require_weights(const ResolvedModel& model);

}  // namespace rt
