// Misbuilt CUDA backend modules for test_backend_module: each build of this file (FAKE_KIND)
// becomes a librt_backend_cuda.so in a directory of its own.
#include <string>

#include "rt/sdk/backend_module.h"
#include "rt/sdk/error.h"

namespace {
bool unavailable(std::string* why) {
  *why = "fake module: no device here";
  return false;
}
rt::Ops* no_ops(int) { rt::fail("fake module: create_ops must not be reached"); }
}  // namespace

#if FAKE_KIND == 1  // another module ABI
extern "C" __attribute__((visibility("default"))) const rt::BackendModuleDescriptor* rt_backend_module_entry() {
  static const rt::BackendModuleDescriptor d{rt::kBackendModuleAbiVersion + 100, rt::kPluginAbiVersion, "cuda", "",
                                             unavailable, no_ops};
  return &d;
}
#elif FAKE_KIND == 2  // another SDK (rt::Ops) ABI
extern "C" __attribute__((visibility("default"))) const rt::BackendModuleDescriptor* rt_backend_module_entry() {
  static const rt::BackendModuleDescriptor d{rt::kBackendModuleAbiVersion, rt::kPluginAbiVersion + 100, "cuda", "",
                                             unavailable, no_ops};
  return &d;
}
#elif FAKE_KIND == 3  // no entry symbol
extern "C" __attribute__((visibility("default"))) int not_a_backend() { return 0; }
#else  // a well-formed module whose device is never available
RT_REGISTER_BACKEND_MODULE("cuda", "fake", unavailable, no_ops)
#endif
