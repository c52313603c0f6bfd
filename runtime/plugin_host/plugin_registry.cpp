#include "plugin_host/plugin_registry.h"

#define BOOST_DLL_USE_STD_FS
#include <boost/dll/shared_library.hpp>

#include <dlfcn.h>

#include <cstdlib>
#include <set>
#include <sstream>

#include "plugin_host/elf_check.h"
#include "rt/sdk/error.h"

namespace rt {

struct PluginRegistry::Loaded {
  boost::dll::shared_library lib;
  const PluginDescriptor* desc = nullptr;
  PluginInfo info;
};

PluginRegistry::PluginRegistry() = default;
PluginRegistry::~PluginRegistry() = default;

std::filesystem::path executable_dir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::current_path() : exe.parent_path();
}

static bool is_shared_library(const std::filesystem::path& p) {
  return p.extension() == ".so" && std::filesystem::is_regular_file(p);
}

static std::string caps_devices(const Capabilities& c) {
  std::string s;
  if (c.cpu) s += "cpu";
  if (c.cuda) s += s.empty() ? "cuda" : ", cuda";
  return s.empty() ? "none" : s;
}

void PluginRegistry::add(const std::filesystem::path& path) {
  std::error_code ec;
  const auto canonical = std::filesystem::weakly_canonical(path, ec);
  const auto& key = ec ? path : canonical;
  for (const auto& l : loaded_)
    if (l->info.path == key) return;  // the same file reached twice through the search path

  // dlopen trusts the file's headers: a truncated copy would crash it (SIGBUS) instead of failing.
  if (const std::string problem = elf_shared_object_problem(key); !problem.empty())
    fail("plugin ", key.string(), ": ", problem);
  auto entry = std::make_unique<Loaded>();
  try {
    // RTLD_NODELETE: a plugin stays mapped until the process exits. Exceptions a plugin throws
    // carry vtables that live in its library; unloading it while one unwinds (the registry dies
    // with the failing command) would crash the error report itself.
    entry->lib.load(key, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local |
                             static_cast<boost::dll::load_mode::type>(RTLD_NODELETE));
  } catch (const std::exception& e) {
    fail("plugin ", key.string(), ": cannot be loaded as a shared library: ", e.what());
  }
  if (!entry->lib.has(kPluginEntrySymbol))
    fail("plugin ", key.string(), ": not a runtime plugin: it does not export the entry symbol '",
         kPluginEntrySymbol, "' (declare it with RT_REGISTER_ATTENTION_PLUGIN from rt/sdk/plugin.h)");
  auto entry_fn = entry->lib.get<const PluginDescriptor*()>(kPluginEntrySymbol);
  const PluginDescriptor* desc = entry_fn();
  RT_CHECK(desc != nullptr, "plugin ", key.string(), ": entry symbol returned no descriptor");
  // Only abi_version may be read before it is checked: the rest of the layout may differ.
  if (desc->abi_version != kPluginAbiVersion)
    fail("plugin ", key.string(), ": built for plugin ABI version ", desc->abi_version,
         ", but this runtime speaks ABI version ", kPluginAbiVersion,
         "; rebuild the plugin against this runtime's SDK");
  RT_CHECK(desc->name && *desc->name, "plugin ", key.string(), ": descriptor has no name");
  RT_CHECK(desc->kind == PluginKind::Attention || desc->kind == PluginKind::Router, "plugin ", key.string(),
           " ('", desc->name, "'): unsupported plugin kind ", static_cast<uint32_t>(desc->kind),
           " (expected 0 = attention or 1 = router)");
  const bool is_router = desc->kind == PluginKind::Router;
  RT_CHECK(is_router ? (desc->create_router && desc->destroy_router)
                     : (desc->create_attention && desc->destroy_attention),
           "plugin ", key.string(), " ('", desc->name, "'): descriptor lacks create/destroy functions");
  for (const auto& l : loaded_)
    if (l->info.name == desc->name)
      fail("plugin ", key.string(), ": name '", desc->name, "' is already taken by ",
           l->info.path.string(), "; remove one of them or rename the plugin");

  entry->desc = desc;
  entry->info.name = desc->name;
  entry->info.version = desc->version ? desc->version : "";
  entry->info.description = desc->description ? desc->description : "";
  entry->info.path = key;
  entry->info.kind = desc->kind;
  if (!is_router) {
    AttentionBackend* probe = desc->create_attention();
    RT_CHECK(probe != nullptr, "plugin ", key.string(), " ('", desc->name, "'): factory returned null");
    entry->info.caps = probe->capabilities();
    desc->destroy_attention(probe);
  }
  loaded_.push_back(std::move(entry));
}

void PluginRegistry::load_file(const std::filesystem::path& path) {
  RT_CHECK(std::filesystem::exists(path), "plugin ", path.string(), ": no such file");
  searched_.push_back(path);
  add(path);
}

void PluginRegistry::scan_directory(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return;
  searched_.push_back(dir);
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (is_shared_library(e.path())) files.push_back(e.path());
  std::sort(files.begin(), files.end());  // deterministic: the first of two same-named files wins
  for (const auto& f : files) {
    try {
      add(f);
    } catch (const Error& e) {
      refused_.push_back({f, e.what()});
    }
  }
}

void PluginRegistry::discover(const std::vector<std::string>& explicit_paths) {
  for (const auto& p : explicit_paths) {
    if (std::filesystem::is_directory(p)) {
      scan_directory(p);
    } else {
      load_file(p);
    }
  }
  if (const char* env = std::getenv("RUNTIME_PLUGIN_PATH")) {
    std::stringstream ss(env);
    std::string dir;
    while (std::getline(ss, dir, ':'))
      if (!dir.empty()) scan_directory(dir);
  }
  scan_directory(executable_dir());
}

std::vector<PluginInfo> PluginRegistry::plugins() const {
  std::vector<PluginInfo> out;
  for (const auto& l : loaded_) out.push_back(l->info);
  return out;
}

AttentionBackendPtr PluginRegistry::create_attention(const std::string& name, Device device) const {
  for (const auto& l : loaded_) {
    if (l->info.name != name || l->info.kind != PluginKind::Attention) continue;
    const Capabilities& c = l->info.caps;
    const bool ok = device == Device::CPU ? c.cpu : c.cuda;
    if (!ok)
      fail("attention backend '", name, "' does not support device ", device_name(device),
           " (it supports: ", caps_devices(c), ")", c.other_device_hint ? "; " : "",
           c.other_device_hint ? c.other_device_hint : "");
    const PluginDescriptor* desc = l->desc;
    return AttentionBackendPtr(desc->create_attention(),
                               [desc](AttentionBackend* b) { desc->destroy_attention(b); });
  }
  fail_unknown("attention backend", name, PluginKind::Attention);
}

RouterPtr PluginRegistry::create_router(const std::string& name) const {
  for (const auto& l : loaded_) {
    if (l->info.name != name || l->info.kind != PluginKind::Router) continue;
    const PluginDescriptor* desc = l->desc;
    Router* r = desc->create_router();
    RT_CHECK(r != nullptr, "router plugin '", name, "' (", l->info.path.string(), "): factory returned null");
    return RouterPtr(r, [desc](Router* x) { desc->destroy_router(x); });
  }
  fail_unknown("router", name, PluginKind::Router);
}

void PluginRegistry::fail_unknown(const char* what, const std::string& name, PluginKind kind) const {
  std::ostringstream msg;
  msg << "unknown " << what << " '" << name << "'; available:";
  bool any = false;
  for (const auto& l : loaded_)
    if (l->info.kind == kind) {
      msg << " " << l->info.name;
      any = true;
    }
  if (!any) msg << " none";
  msg << ". Searched:";
  for (const auto& s : searched_) msg << " " << s.string();
  for (const auto& r : refused_) msg << "\n  refused " << r.path.string() << ": " << r.reason;
  fail(msg.str());
}

}  // namespace rt
