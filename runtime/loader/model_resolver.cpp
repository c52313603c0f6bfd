#include "loader/model_resolver.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>

#include "rt/sdk/error.h"

namespace rt {

namespace fs = std::filesystem;

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

bool has_weights(const fs::path& dir) {
  return path_exists(dir / "model.safetensors") || path_exists(dir / "model.safetensors.index.json");
}

// Whether `dir` is a usable model directory; otherwise appends why not to `searched`.
bool usable(const fs::path& dir, const std::string& label, std::vector<std::string>& searched) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    searched.push_back(label + ": does not exist");
    return false;
  }
  if (!path_exists(dir / "config.json")) {
    searched.push_back(label + ": no config.json");
    return false;
  }
  if (!has_weights(dir)) {
    searched.push_back(label + ": no model.safetensors or model.safetensors.index.json");
    return false;
  }
  return true;
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// Hub cache roots in huggingface_hub's order of precedence (duplicates removed).
std::vector<fs::path> hub_cache_roots() {
  std::vector<fs::path> roots;
  if (auto v = env("HF_HUB_CACHE"); !v.empty()) roots.emplace_back(v);
  if (auto v = env("HF_HOME"); !v.empty()) roots.push_back(fs::path(v) / "hub");
  if (auto v = env("XDG_CACHE_HOME"); !v.empty()) roots.push_back(fs::path(v) / "huggingface" / "hub");
  if (auto v = env("HOME"); !v.empty()) roots.push_back(fs::path(v) / ".cache" / "huggingface" / "hub");
  std::vector<fs::path> out;
  for (auto& r : roots)
    if (std::find(out.begin(), out.end(), r) == out.end()) out.push_back(r);
  return out;
}

// <root>/models--Qwen--Qwen2.5-0.5B/snapshots/<rev>/: refs/main's revision when that file
// exists (what `from_pretrained` would load), else the first complete snapshot by name.
std::optional<fs::path> find_in_hub_cache(const fs::path& root, const std::string& repo,
                                          std::vector<std::string>& searched) {
  std::string folder = "models--" + repo;
  for (size_t p; (p = folder.find('/')) != std::string::npos;) folder.replace(p, 1, "--");
  const fs::path repo_dir = root / folder;
  std::error_code ec;
  if (!fs::is_directory(repo_dir, ec)) {
    searched.push_back(repo_dir.string() + ": does not exist");
    return std::nullopt;
  }
  const fs::path snapshots = repo_dir / "snapshots";
  fs::path tried;
  if (std::ifstream ref(repo_dir / "refs" / "main"); ref) {
    std::string rev;
    std::getline(ref, rev);
    while (!rev.empty() && std::isspace(static_cast<unsigned char>(rev.back()))) rev.pop_back();
    // A revision is a commit hash; anything with a separator would escape snapshots/.
    if (!rev.empty() && rev.find_first_of("/\\") == std::string::npos && rev != "." && rev != "..") {
      const fs::path snap = snapshots / rev;
      tried = snap;
      if (usable(snap, snap.string() + " (refs/main)", searched)) return snap;
    } else {
      searched.push_back((repo_dir / "refs" / "main").string() + ": not a revision hash");
    }
  }
  std::vector<fs::path> snaps;
  for (fs::directory_iterator it(snapshots, ec), end; !ec && it != end; it.increment(ec))
    snaps.push_back(it->path());
  std::sort(snaps.begin(), snaps.end());
  if (snaps.empty()) searched.push_back(snapshots.string() + ": no snapshots");
  for (const fs::path& snap : snaps)
    if (snap != tried && usable(snap, snap.string(), searched)) return snap;
  return std::nullopt;
}

std::string preset_list() {
  std::string s;
  for (const auto& p : model_presets()) s += (s.empty() ? "" : ", ") + p.name;
  return s;
}

}  // namespace

const std::vector<ModelPreset>& model_presets() {
  static const std::vector<ModelPreset> presets = {
      {"qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B"},
      {"qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B"},
      {"qwen2.5-3b", "Qwen/Qwen2.5-3B"},
      {"qwen3-0.6b", "Qwen/Qwen3-0.6B"},
      {"qwen3-1.7b", "Qwen/Qwen3-1.7B"},
      {"qwen3-4b", "Qwen/Qwen3-4B"},
      {"qwen3-8b", "Qwen/Qwen3-8B"},
  };
  return presets;
}

std::optional<ModelPreset> find_preset(std::string_view spec) {
  const std::string s = lower(spec);
  for (const auto& p : model_presets())
    if (s == p.name || s == lower(p.hf_repo)) return p;
  return std::nullopt;
}

std::vector<fs::path> default_preset_dirs() {
  return {fs::path("configs") / "models", fs::path(RT_LOADER_SOURCE_DIR) / "configs" / "models"};
}

fs::path ResolvedModel::config_path() const {
  if (dir) return *dir / "config.json";
  if (preset_config) return *preset_config;
  fail("model ", name, ": no config.json (no model directory found and no preset config)");
}

ResolvedModel resolve_model(const std::string& spec, const std::vector<fs::path>& presets_dirs) {
  if (spec.empty()) fail("no model given (use a model directory or a preset: ", preset_list(), ")");
  ResolvedModel r;
  std::error_code ec;

  if (fs::is_directory(spec, ec)) {
    const fs::path dir = fs::path(spec);
    if (!path_exists(dir / "config.json"))
      fail("model directory ", dir.string(), " has no config.json");
    r.dir = dir;
    r.name = fs::absolute(dir, ec).lexically_normal().filename().string();
    if (r.name.empty()) r.name = dir.string();
    r.has_weights = has_weights(dir);
    if (auto p = find_preset(r.name)) r.hf_repo = p->hf_repo;
    return r;
  }

  const auto preset = find_preset(spec);
  if (!preset) {
    if (path_exists(spec)) fail("model ", spec, " is a file; pass the model directory (holding config.json)");
    if (spec.find_first_of("/\\") != std::string::npos || spec[0] == '.' || spec[0] == '~')
      fail("model directory ", spec, " does not exist (presets: ", preset_list(), ")");
    fail("unknown model \"", spec, "\": not a directory and not a preset (presets: ", preset_list(), ")");
  }
  r.name = preset->name;
  r.hf_repo = preset->hf_repo;

  for (const fs::path& d : presets_dirs) {
    const fs::path p = d / (r.name + ".json");
    if (path_exists(p)) {
      r.preset_config = p;
      break;
    }
  }

  // 1. $RUNTIME_MODELS/<name>   2. ./models/<name> (or the repo's own spelling)   3. hub cache
  std::vector<fs::path> local;
  if (auto v = env("RUNTIME_MODELS"); !v.empty()) {
    local.push_back(fs::path(v) / r.name);
  } else {
    r.searched.push_back("$RUNTIME_MODELS/" + r.name + ": $RUNTIME_MODELS is not set");
  }
  const std::string repo_base = r.hf_repo.substr(r.hf_repo.find('/') + 1);
  local.push_back(fs::path("models") / r.name);
  if (repo_base != r.name) local.push_back(fs::path("models") / repo_base);
  for (const fs::path& d : local) {
    if (usable(d, d.string(), r.searched)) {
      r.dir = d;
      r.has_weights = true;
      return r;
    }
  }
  for (const fs::path& root : hub_cache_roots()) {
    if (auto snap = find_in_hub_cache(root, r.hf_repo, r.searched)) {
      r.dir = *snap;
      r.has_weights = true;
      return r;
    }
  }
  return r;
}

fs::path require_weights(const ResolvedModel& m) {
  if (m.dir && m.has_weights) return *m.dir;
  std::string msg;
  if (m.dir) {
    msg = "model directory " + m.dir->string() +
          " has config.json but no weights (model.safetensors or model.safetensors.index.json)";
  } else {
    msg = "no weights found for model " + m.name + ". Looked in:";
    for (const std::string& s : m.searched) msg += "\n  " + s;
  }
  msg += "\nGet them with:";
  if (!m.hf_repo.empty()) {
    msg += "\n  hf download " + m.hf_repo + " --local-dir models/" + m.name;
    msg += "\n(or set $RUNTIME_MODELS to a directory holding " + m.name + "/)";
  } else {
    msg += "\n  save the model with transformers' save_pretrained() into that directory";
  }
  msg += "\nor run with --init random to start from random weights";
  if (m.preset_config) msg += " (architecture from " + m.preset_config->string() + ")";
  fail(msg);
}

}  // namespace rt
