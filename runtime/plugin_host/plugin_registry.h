// Finds, loads and vets plugins (shared libraries built against sdk/): attention backends and
// routers.
//
// Search order: explicit --plugin paths, then the directories in $RUNTIME_PLUGIN_PATH
// (colon-separated), then the directory holding the executable. A plugin is refused, by name and
// with the reason, when its ABI version differs, its entry symbol is missing, or its name is
// already taken by another file. Refusals of explicitly named files are errors; refusals found
// while scanning a directory are kept and shown (`runtime plugins`, unknown-backend errors), so
// one stale file in a plugin directory does not stop every command.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rt/sdk/plugin.h"

namespace rt {

struct PluginInfo {
  PluginKind kind = PluginKind::Attention;
  std::string name;
  std::string version;
  std::string description;
  std::filesystem::path path;
  Capabilities caps;  // attention backends only
};

struct RefusedPlugin {
  std::filesystem::path path;
  std::string reason;
};

using AttentionBackendPtr = std::unique_ptr<AttentionBackend, std::function<void(AttentionBackend*)>>;
using RouterPtr = std::unique_ptr<Router, std::function<void(Router*)>>;

class PluginRegistry {
 public:
  PluginRegistry();
  ~PluginRegistry();
  PluginRegistry(const PluginRegistry&) = delete;
  PluginRegistry& operator=(const PluginRegistry&) = delete;

  // Loads one file; throws rt::Error naming the file and the reason when it is refused.
  void load_file(const std::filesystem::path& path);
  // Loads every shared library in `dir`; refusals are recorded, not thrown.
  void scan_directory(const std::filesystem::path& dir);
  // The standard search: explicit paths (files or directories), $RUNTIME_PLUGIN_PATH, exe dir.
  void discover(const std::vector<std::string>& explicit_paths);

  std::vector<PluginInfo> plugins() const;
  const std::vector<RefusedPlugin>& refused() const { return refused_; }
  std::vector<std::filesystem::path> searched() const { return searched_; }

  // Creates a backend by name; the error for an unknown name lists the available ones, where
  // we looked, and any refused files. The plugin's library stays loaded while the registry lives,
  // so the registry must outlive every backend it creates.
  AttentionBackendPtr create_attention(const std::string& name, Device device) const;
  // Same for routers (PluginKind::Router).
  RouterPtr create_router(const std::string& name) const;

 private:
  struct Loaded;
  void add(const std::filesystem::path& path);
  [[noreturn]] void fail_unknown(const char* what, const std::string& name, PluginKind kind) const;
  std::vector<std::unique_ptr<Loaded>> loaded_;
  std::vector<RefusedPlugin> refused_;
  std::vector<std::filesystem::path> searched_;
};

// The directory of the running executable (/proc/self/exe).
std::filesystem::path executable_dir();

}  // namespace rt
