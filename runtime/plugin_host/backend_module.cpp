#include "plugin_host/backend_module.h"

#define BOOST_DLL_USE_STD_FS
#include <boost/dll/shared_library.hpp>

#include <dlfcn.h>

#include <cstdlib>
#include <sstream>

#include "plugin_host/elf_check.h"
#include "plugin_host/plugin_registry.h"
#include "rt/sdk/backend_module.h"
#include "rt/sdk/error.h"

namespace rt {

std::vector<std::filesystem::path> backend_module_dirs() {
  std::vector<std::filesystem::path> dirs;
  if (const char* env = std::getenv("RUNTIME_BACKEND_PATH")) {
    std::stringstream ss(env);
    std::string dir;
    while (std::getline(ss, dir, ':'))
      if (!dir.empty()) dirs.emplace_back(dir);
  }
  dirs.push_back(executable_dir() / "backends");
  return dirs;
}

std::filesystem::path find_backend_module(const std::string& file, std::string* searched) {
  searched->clear();
  for (const auto& dir : backend_module_dirs()) {
    *searched += (searched->empty() ? "" : ", ") + dir.string();
    std::error_code ec;
    if (std::filesystem::is_regular_file(dir / file, ec)) return dir / file;
  }
  return {};
}

std::unique_ptr<Ops> load_backend_ops(const std::string& device, int device_index) {
  const std::string flag = "--device " + device;
  const std::string file = "librt_backend_" + device + ".so";
  std::string searched;
  const std::filesystem::path path = find_backend_module(file, &searched);
  RT_CHECK(!path.empty(), flag, ": the ", device, " backend module ", file, " was not found (searched ", searched,
           "; $RUNTIME_BACKEND_PATH adds directories). This build may lack it: the CUDA backend is built only "
           "when the CUDA toolkit is found at configure time. Use --device cpu, or rebuild with the toolkit");
  // Never unloaded (a function-local static keeps each library alive; RTLD_NODELETE keeps it mapped
  // even then): the Ops it creates and the exceptions it throws refer to its code.
  static std::vector<std::unique_ptr<boost::dll::shared_library>> libraries;
  // dlopen trusts the file's headers: a truncated copy would crash it (SIGBUS) instead of failing.
  if (const std::string problem = elf_shared_object_problem(path); !problem.empty())
    fail(flag, ": the backend module ", path.string(), " cannot be loaded: ", problem,
         ". Reinstall the module (or rebuild it), or use --device cpu");
  auto lib = std::make_unique<boost::dll::shared_library>();
  try {
    lib->load(path, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local |
                        static_cast<boost::dll::load_mode::type>(RTLD_NODELETE));
  } catch (const std::exception& e) {
    fail(flag, ": the backend module ", path.string(), " cannot be loaded: ", e.what(),
         " (a library it needs, such as the CUDA runtime, cuBLAS or cuDNN, may be missing: see `ldd ",
         path.string(), "`). Use --device cpu, or install the missing library");
  }
  RT_CHECK(lib->has(kBackendModuleEntrySymbol), flag, ": ", path.string(),
           " is not a backend module: it does not export '", kBackendModuleEntrySymbol, "'");
  const BackendModuleDescriptor* desc = lib->get<const BackendModuleDescriptor*()>(kBackendModuleEntrySymbol)();
  RT_CHECK(desc != nullptr, flag, ": ", path.string(), ": the entry symbol returned no descriptor");
  // Only abi_version may be read before it is checked.
  RT_CHECK(desc->abi_version == kBackendModuleAbiVersion, flag, ": ", path.string(),
           " was built for backend module ABI version ", desc->abi_version, ", but this runtime speaks version ",
           kBackendModuleAbiVersion, "; rebuild it with this runtime");
  RT_CHECK(desc->ops_abi_version == kPluginAbiVersion, flag, ": ", path.string(),
           " was built against SDK ABI version ", desc->ops_abi_version, " (rt::Ops and the plugin interfaces), "
           "but this runtime speaks version ", kPluginAbiVersion, "; rebuild it with this runtime");
  RT_CHECK(desc->name != nullptr && device == desc->name && desc->available && desc->create_ops,
           flag, ": ", path.string(), ": malformed descriptor (name '", desc->name ? desc->name : "",
           "', expected '", device, "', or a missing function)");
  std::string why;
  RT_CHECK(desc->available(&why), flag, ": ", why, "; use --device cpu");
  Ops* ops = desc->create_ops(device_index);
  RT_CHECK(ops != nullptr, flag, ": ", path.string(), ": create_ops returned no backend");
  libraries.push_back(std::move(lib));
  return std::unique_ptr<Ops>(ops);
}

}  // namespace rt
