// A plugin that claims a future ABI version: the registry must refuse it by number.
#include "test_plugins_common.h"

extern "C" __attribute__((visibility("default"))) const rt::PluginDescriptor* rt_plugin_entry() {
  static const rt::PluginDescriptor desc{rt::kPluginAbiVersion + 41, rt::PluginKind::Attention, "future_abi", "9.9",
                                         "built against another SDK", nullptr, nullptr};
  return &desc;
}
