// The plugin loader: built-in plugins load with their capabilities; misbuilt plugins are refused
// by name with the reason.
#include <gtest/gtest.h>

#include <elf.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include "plugin_host/backend_module.h"
#include "plugin_host/elf_check.h"
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

// A truncated plugin (an interrupted copy) used to kill dlopen with SIGBUS: the loader maps
// segments past the end of the file. The ELF check refuses it first, naming the file.
TEST(PluginRegistry, RefusesTruncatedSharedObject) {
  const std::filesystem::path real = kBin + "/librt_attention_swa.so";
  const std::string bytes = rt::test::read_file(real);
  ASSERT_GT(bytes.size(), 2000u);
  rt::test::TempDir tmp("rt_trunc_plugin");
  for (size_t len : {size_t(64), size_t(1000), bytes.size() / 2, bytes.size() - 1}) {
    SCOPED_TRACE("truncated to " + std::to_string(len) + " of " + std::to_string(bytes.size()) + " bytes");
    const auto dir = tmp / ("len" + std::to_string(len));
    const auto path = dir / "librt_attention_swa.so";
    rt::test::write_file(path, bytes.substr(0, len));
    ASSERT_EQ(std::filesystem::file_size(path), len);
    // Given by name: an error naming the file and what is wrong.
    rt::PluginRegistry reg;
    const std::string msg = error_of([&] { reg.load_file(path); });
    EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
    EXPECT_NE(msg.find("but the file has " + std::to_string(len) + " bytes"), std::string::npos) << msg;
    EXPECT_TRUE(reg.plugins().empty());
    // Found while scanning: refused with the reason, and the scan goes on.
    rt::PluginRegistry scan;
    scan.scan_directory(dir);
    ASSERT_EQ(scan.refused().size(), 1u);
    EXPECT_NE(scan.refused()[0].reason.find("truncated"), std::string::npos) << scan.refused()[0].reason;
  }
  // The intact file, copied the same way, still loads.
  const auto whole = tmp / "whole" / "librt_attention_swa.so";
  rt::test::write_file(whole, bytes);
  rt::PluginRegistry reg;
  reg.load_file(whole);
  ASSERT_EQ(reg.plugins().size(), 1u);
  EXPECT_EQ(reg.plugins()[0].name, "swa");
  // Every plugin the build made passes the check.
  for (const auto& e : std::filesystem::directory_iterator(kBin))
    if (e.path().extension() == ".so") EXPECT_EQ(rt::elf_shared_object_problem(e.path()), "") << e.path();
}

// Files that are not 64-bit little-endian shared objects for this host are refused by the check,
// each with what is wrong.
TEST(PluginRegistry, ElfCheckNamesWhatIsWrong) {
  const std::string bytes = rt::test::read_file(kBin + "/librt_attention_swa.so");
  rt::test::TempDir tmp("rt_elf_check");
  auto problem = [&](const std::string& name, std::string content) {
    const auto path = tmp / name;
    rt::test::write_file(path, content);
    const std::string msg = error_of([&] { rt::check_elf_shared_object(path); });
    EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
    return msg;
  };
  EXPECT_HAS(problem("empty.so", ""), "empty", "not a 64-bit little-endian ELF shared object");
  EXPECT_HAS(problem("junk.so", "this is not a library at all"), "not a 64-bit little-endian ELF shared object");
  EXPECT_HAS(problem("short.so", bytes.substr(0, 20)), "truncated");
  std::string b = bytes;
  b[EI_CLASS] = ELFCLASS32;
  EXPECT_HAS(problem("class32.so", b), "not a 64-bit little-endian ELF shared object", "32-bit");
  b = bytes;
  b[EI_DATA] = ELFDATA2MSB;
  EXPECT_HAS(problem("bigendian.so", b), "not a 64-bit little-endian ELF shared object", "big-endian");
  b = bytes;
  b[offsetof(Elf64_Ehdr, e_type)] = ET_EXEC;
  EXPECT_HAS(problem("exec.so", b), "not a shared object");
  b = bytes;
  b[offsetof(Elf64_Ehdr, e_machine)] = static_cast<char>(EM_RISCV);
  b[offsetof(Elf64_Ehdr, e_machine) + 1] = 0;
  EXPECT_HAS(problem("riscv.so", b), "built for RISC-V");
  // A huge e_phnum * e_phentsize or p_offset + p_filesz must not overflow into "fits".
  b = bytes;
  const uint64_t huge = ~uint64_t(0) - 8;
  std::memcpy(&b[offsetof(Elf64_Ehdr, e_phoff)], &huge, sizeof huge);
  EXPECT_HAS(problem("phoff.so", b), "truncated", "program header table");
  EXPECT_EQ(rt::elf_shared_object_problem(kBin + "/librt_attention_swa.so"), "");
}

// The compute-backend loader runs the same check before dlopen.
TEST(PluginRegistry, BackendModuleLoaderRefusesTruncatedModule) {
  const std::string bytes = rt::test::read_file(kBin + "/librt_attention_swa.so");
  rt::test::TempDir tmp("rt_trunc_backend");
  const auto path = tmp / "librt_backend_cuda.so";
  rt::test::write_file(path, bytes.substr(0, 1000));
  const char* old = std::getenv("RUNTIME_BACKEND_PATH");
  const std::string saved = old ? old : "";
  ::setenv("RUNTIME_BACKEND_PATH", tmp.path().c_str(), 1);
  const std::string msg = error_of([&] { rt::load_backend_ops("cuda"); });
  if (old) ::setenv("RUNTIME_BACKEND_PATH", saved.c_str(), 1); else ::unsetenv("RUNTIME_BACKEND_PATH");
  EXPECT_HAS(msg, "--device cuda", path.string(), "truncated", "but the file has 1000 bytes");
}

TEST(PluginRegistry, MissingFileIsAnError) {
  rt::PluginRegistry reg;
  const std::string msg = error_of([&] { reg.load_file("/nonexistent/libx.so"); });
  EXPECT_NE(msg.find("/nonexistent/libx.so"), std::string::npos) << msg;
}

}  // namespace
