// The plugin loader: built-in plugins load with their capabilities; misbuilt plugins are refused
// by name with the reason.
#include <gtest/gtest.h>

#include "plugin_host/plugin_registry.h"
#include "rt/sdk/error.h"

namespace {

const std::string kBin = RT_BIN_DIR;
const std::string kTestPlugins = RT_TEST_PLUGIN_DIR;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const rt::Error& e) {
    return e.what();
  }
  return "";
}

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
