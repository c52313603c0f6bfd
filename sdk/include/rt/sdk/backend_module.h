// The compute-backend module ABI: a device's rt::Ops (CUDA today) lives in a shared library that
// the runtime loads on `--device <name>`, so that the runtime itself links no device library and
// starts on a machine without them (ggml-backend's loadable backends).
//
// One extern "C" entry point per module returns a descriptor. The runtime reads `abi_version`
// first and refuses any other value by name; `ops_abi_version` is the plugin ABI (sdk/ layout,
// rt::Ops included) the module was built against, checked next. The runtime looks for
// librt_backend_<name>.so in $RUNTIME_BACKEND_PATH (colon-separated) and then in
// <executable dir>/backends (runtime/plugin_host/backend_module.h).
//
// A module registers itself in one line:
//   RT_REGISTER_BACKEND_MODULE("cuda", "NVIDIA GPUs", cuda_available, create_cuda_ops);
// where available(std::string* why) -> bool never throws and create(int device) -> rt::Ops* may
// throw rt::Error.
#pragma once

#include <cstdint>
#include <string>

#include "rt/sdk/ops.h"
#include "rt/sdk/plugin.h"

namespace rt {

inline constexpr uint32_t kBackendModuleAbiVersion = 1;
inline constexpr const char* kBackendModuleEntrySymbol = "rt_backend_module_entry";

struct BackendModuleDescriptor {
  uint32_t abi_version;      // must stay the first member
  uint32_t ops_abi_version;  // kPluginAbiVersion of the SDK the module was built with
  const char* name;          // the --device name
  const char* description;   // one line
  // True when the device can be used; otherwise false with the reason in *why. Never throws.
  bool (*available)(std::string* why);
  // Throws rt::Error. The caller deletes the Ops (its virtual destructor lives in the module,
  // which stays loaded).
  Ops* (*create_ops)(int device_index);
};

using BackendModuleEntryFn = const BackendModuleDescriptor* (*)();

}  // namespace rt

#define RT_REGISTER_BACKEND_MODULE(Name, Description, AvailableFn, CreateFn)                      \
  extern "C" __attribute__((visibility("default"))) const ::rt::BackendModuleDescriptor*         \
  rt_backend_module_entry() {                                                                     \
    static const ::rt::BackendModuleDescriptor desc{                                              \
        ::rt::kBackendModuleAbiVersion, ::rt::kPluginAbiVersion, Name, Description, AvailableFn,  \
        CreateFn};                                                                                \
    return &desc;                                                                                 \
  }
