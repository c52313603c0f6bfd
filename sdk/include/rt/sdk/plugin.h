// The plugin ABI: one extern "C" entry point per shared library returning a descriptor.
//
// The runtime reads `abi_version` first and refuses any other value by name, before it touches
// anything else in the descriptor. Bump kPluginAbiVersion whenever a struct or virtual
// interface in sdk/ changes layout.
//
// A plugin registers itself in one line:
//   RT_REGISTER_ATTENTION_PLUGIN(SlidingWindowAttention, "swa", "1.0.0", "sliding-window attention");
#pragma once

#include <cstdint>

#include "rt/sdk/attention_backend.h"
#include "rt/sdk/router.h"

namespace rt {

inline constexpr uint32_t kPluginAbiVersion = 15;
inline constexpr const char* kPluginEntrySymbol = "rt_plugin_entry";

enum class PluginKind : uint32_t { Attention = 0, Router = 1 };

struct PluginDescriptor {
  uint32_t abi_version;  // must stay the first member
  PluginKind kind;
  const char* name;         // the --attention name
  const char* version;      // the plugin's own version, for `runtime plugins`
  const char* description;  // one line
  AttentionBackend* (*create_attention)();  // PluginKind::Attention, else null
  void (*destroy_attention)(AttentionBackend*);
  Router* (*create_router)();  // PluginKind::Router, else null
  void (*destroy_router)(Router*);
};

using PluginEntryFn = const PluginDescriptor* (*)();

}  // namespace rt

#define RT_REGISTER_ATTENTION_PLUGIN(Class, Name, Version, Description)                        \
  extern "C" __attribute__((visibility("default"))) const ::rt::PluginDescriptor*              \
  rt_plugin_entry() {                                                                           \
    static const ::rt::PluginDescriptor desc{                                                   \
        ::rt::kPluginAbiVersion, ::rt::PluginKind::Attention, Name, Version, Description,      \
        []() -> ::rt::AttentionBackend* { return new Class(); },                                \
        [](::rt::AttentionBackend* b) { delete b; }, nullptr, nullptr};                          \
    return &desc;                                                                               \
  }

//   RT_REGISTER_ROUTER_PLUGIN(RouterLinearSigmoid, "linear_sigmoid", "1.0.0", "the L2A router");
#define RT_REGISTER_ROUTER_PLUGIN(Class, Name, Version, Description)                           \
  extern "C" __attribute__((visibility("default"))) const ::rt::PluginDescriptor*              \
  rt_plugin_entry() {                                                                           \
    static const ::rt::PluginDescriptor desc{                                                   \
        ::rt::kPluginAbiVersion, ::rt::PluginKind::Router, Name, Version, Description,         \
        nullptr, nullptr, []() -> ::rt::Router* { return new Class(); },                        \
        [](::rt::Router* r) { delete r; }};                                                     \
    return &desc;                                                                               \
  }
