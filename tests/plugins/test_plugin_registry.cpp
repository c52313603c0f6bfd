// The plugin loader: built-in plugins load with their capabilities; misbuilt plugins are refused
// by name with the reason.
#include <gtest/gtest.h>

#include <map>

#include "plugin_host/plugin_registry.h"
#include "test_util.h"
#include "rt/sdk/error.h"

namespace {

const std::string kBin = RT_BIN_DIR;
const std::string kTestPlugins = RT_TEST_PLUGIN_DIR;

using rt::test::error_of;

TEST(PluginRegistry, LoadsBuiltinPlugins) {
  rt::PluginRegistry reg;
  reg.scan_directory(kBin);
  std::map<std::string, rt::PluginInfo> by_name;
  for (const auto& p : reg.plugins()) by_name[p.name] = p;
  ASSERT_TRUE(by_name.count("full_causal"));
  ASSERT_TRUE(by_name.count("swa"));
  EXPECT_TRUE(by_name["full_causal"].caps.cpu);
  EXPECT_EQ(by_name["full_causal"].caps.kv, rt::KvPolicy::Full);
  EXPECT_EQ(by_name["swa"].caps.kv, rt::KvPolicy::RingBuffer);
  auto b = reg.create_attention("swa", rt::Device::CPU);
  ASSERT_NE(b, nullptr);
}

// Routers are plugins of their own kind: created by name, listed apart from attention backends,
// and a routed backend takes one before configure.
TEST(PluginRegistry, LoadsRoutersAndRoutedBackends) {
  rt::PluginRegistry reg;
  reg.scan_directory(kBin);
  std::map<std::string, rt::PluginInfo> by_name;
  for (const auto& p : reg.plugins()) by_name[p.name] = p;
  ASSERT_TRUE(by_name.count("linear_sigmoid"));
  ASSERT_TRUE(by_name.count("fixed_rate"));
  EXPECT_EQ(by_name["linear_sigmoid"].kind, rt::PluginKind::Router);
  ASSERT_TRUE(by_name.count("l2a_dense"));
  EXPECT_TRUE(by_name["l2a_dense"].caps.router);
  EXPECT_TRUE(by_name["l2a_dense"].caps.backward);
  auto router = reg.create_router("linear_sigmoid");
  ASSERT_NE(router, nullptr);
  EXPECT_TRUE(router->trainable());
  auto l2a = reg.create_attention("l2a_dense", rt::Device::CPU);
  l2a->attach_router(router.get());
  rt::Options o;
  o.set("window", "4");
  rt::ModelDims d;
  d.hidden = 8;
  d.n_layers = 1;
  d.n_heads = 2;
  d.n_kv_heads = 1;
  d.head_dim = 4;
  l2a->configure(o, d);
  bool has_router_weight = false;
  for (const auto& p : l2a->extra_params(d)) has_router_weight = has_router_weight || p.name == "router.weight";
  EXPECT_TRUE(has_router_weight);
  // A router is not an attention backend and vice versa; unknown names list what there is.
  const std::string e = error_of([&] { reg.create_router("full_causal"); });
  EXPECT_NE(e.find("unknown router 'full_causal'"), std::string::npos) << e;
  EXPECT_NE(e.find("linear_sigmoid"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { reg.create_attention("fixed_rate", rt::Device::CPU); }).find("unknown attention backend"),
            std::string::npos);
  // Options neither the backend nor its router knows are refused by name.
  auto l2a2 = reg.create_attention("l2a_dense", rt::Device::CPU);
  auto fixed = reg.create_router("fixed_rate");
  l2a2->attach_router(fixed.get());
  o.set("sparsity", "0.5");
  o.set("lamda", "0.1");
  const std::string bad = error_of([&] { l2a2->configure(o, d); });
  EXPECT_NE(bad.find("unknown option 'lamda'"), std::string::npos) << bad;
}

TEST(PluginRegistry, RefusesAbiMismatchNamingBothVersions) {
  rt::PluginRegistry reg;
  const std::string msg = error_of([&] { reg.load_file(kTestPlugins + "/libtest_plugin_bad_abi.so"); });
  EXPECT_NE(msg.find("libtest_plugin_bad_abi.so"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ABI version " + std::to_string(rt::kPluginAbiVersion + 41)), std::string::npos) << msg;
  EXPECT_NE(msg.find("ABI version " + std::to_string(rt::kPluginAbiVersion)), std::string::npos) << msg;
}

TEST(PluginRegistry, RefusesLibraryWithoutEntrySymbol) {
  rt::PluginRegistry reg;
  const std::string msg = error_of([&] { reg.load_file(kTestPlugins + "/libtest_plugin_no_entry.so"); });
  EXPECT_NE(msg.find("rt_plugin_entry"), std::string::npos) << msg;
  EXPECT_NE(msg.find("libtest_plugin_no_entry.so"), std::string::npos) << msg;
}

TEST(PluginRegistry, RefusesDuplicateName) {
  rt::PluginRegistry reg;
  reg.scan_directory(kBin);
  const std::string msg = error_of([&] { reg.load_file(kTestPlugins + "/libtest_plugin_duplicate.so"); });
  EXPECT_NE(msg.find("'full_causal' is already taken"), std::string::npos) << msg;
}

TEST(PluginRegistry, RefusesUnsupportedDevice) {
  rt::PluginRegistry reg;
  reg.load_file(kTestPlugins + "/libtest_plugin_cuda_only.so");
  const std::string msg = error_of([&] { reg.create_attention("cuda_only", rt::Device::CPU); });
  EXPECT_NE(msg.find("does not support device cpu"), std::string::npos) << msg;
  EXPECT_NE(msg.find("supports: cuda"), std::string::npos) << msg;
}

TEST(PluginRegistry, UnknownBackendListsAvailableAndRefused) {
  rt::PluginRegistry reg;
  reg.scan_directory(kBin);
  reg.scan_directory(kTestPlugins);  // holds the misbuilt ones: recorded, not thrown
  EXPECT_FALSE(reg.refused().empty());
  const std::string msg = error_of([&] { reg.create_attention("nope", rt::Device::CPU); });
  EXPECT_NE(msg.find("unknown attention backend 'nope'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("full_causal"), std::string::npos) << msg;
  EXPECT_NE(msg.find("swa"), std::string::npos) << msg;
  EXPECT_NE(msg.find("libtest_plugin_bad_abi.so"), std::string::npos) << msg;
}

TEST(PluginRegistry, MissingFileIsAnError) {
  rt::PluginRegistry reg;
  const std::string msg = error_of([&] { reg.load_file("/nonexistent/libx.so"); });
  EXPECT_NE(msg.find("/nonexistent/libx.so"), std::string::npos) << msg;
}

}  // namespace
