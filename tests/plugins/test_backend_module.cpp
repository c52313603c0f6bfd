// Compute backends as loadable modules (runtime/plugin_host/backend_module.h): the runtime links no
// CUDA library; --device cuda loads bin/backends/librt_backend_cuda.so; a missing or misbuilt
// module is refused naming the file (or the directories searched) and the reason.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <regex>
#include <string>

#include "plugin_host/backend_module.h"
#include "test_util.h"
#include "rt/sdk/error.h"

namespace {

namespace fs = std::filesystem;
const std::string kFakes = RT_TEST_BACKEND_DIR;
const std::string kRuntime = RT_RUNTIME_EXE;

using rt::test::error_of;

struct CommandResult {
  int status = -1;
  std::string output;
};
CommandResult run(const std::string& cmd) {
  CommandResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  r.status = ::pclose(p);
  return r;
}

// Sets RUNTIME_BACKEND_PATH for the scope of one check.
class BackendPath {
 public:
  explicit BackendPath(const std::string& dir) { ::setenv("RUNTIME_BACKEND_PATH", dir.c_str(), 1); }
  ~BackendPath() { ::unsetenv("RUNTIME_BACKEND_PATH"); }
};

TEST(BackendModule, RuntimeLinksNoCudaLibrary) {
  const CommandResult r = run("ldd '" + kRuntime + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_FALSE(std::regex_search(r.output, std::regex("libcuda|libcudart|libcublas|libcudnn|libnvrtc|libcupti")))
      << "the runtime must load the CUDA backend as a module, not link it:\n"
      << r.output;
}

TEST(BackendModule, MisbuiltModulesAreRefused) {
  const struct {
    int kind;
    const char* expect;
  } cases[] = {{1, "backend module ABI version"},
               {2, "SDK ABI version"},
               {3, "is not a backend module"},
               {4, "fake module: no device here"}};
  for (const auto& c : cases) {
    const std::string dir = kFakes + "/fake_" + std::to_string(c.kind);
    SCOPED_TRACE(dir);
    BackendPath env(dir);
    const std::string err = error_of([] { (void)rt::load_backend_ops("cuda"); });
    EXPECT_NE(err.find("--device cuda"), std::string::npos) << err;
    EXPECT_NE(err.find(c.expect), std::string::npos) << err;
    if (c.kind != 4) EXPECT_NE(err.find(dir + "/librt_backend_cuda.so"), std::string::npos) << err;
  }
}

TEST(BackendModule, SearchPathComesFirst) {
  BackendPath env(kFakes + "/fake_4:" + kFakes + "/fake_1");
  const auto dirs = rt::backend_module_dirs();
  ASSERT_EQ(dirs.size(), 3u);
  EXPECT_EQ(dirs[0], fs::path(kFakes + "/fake_4"));
  EXPECT_EQ(dirs[2].filename(), "backends");
  // The first directory holding the file wins: the well-formed fake, not the bad-ABI one.
  const std::string err = error_of([] { (void)rt::load_backend_ops("cuda"); });
  EXPECT_NE(err.find("fake module: no device here"), std::string::npos) << err;
}

TEST(BackendModule, MissingModuleIsAClearErrorFromTheCli) {
  // A copy of the runtime in a directory without backends/: --device cuda names the file and the
  // directories searched, and exits non-zero; --device cpu is unaffected.
  const fs::path dir = fs::temp_directory_path() / ("rt_backend_module_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(kRuntime, dir / "runtime", fs::copy_options::overwrite_existing);
  const std::string model = std::string(RT_FIXTURES_DIR) + "/models/gqa7_hd64";
  const std::string cmd = "env -u RUNTIME_BACKEND_PATH '" + (dir / "runtime").string() + "' logits --model '" + model +
                          "' --ids 1,2,3 --out '" + (dir / "out.npy").string() + "' --device ";
  const CommandResult r = run(cmd + "cuda");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("--device cuda: the cuda backend module librt_backend_cuda.so was not found"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find((dir / "backends").string()), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("Segmentation"), std::string::npos) << r.output;
  const CommandResult cpu = run(cmd + "cpu --plugin '" + std::string(RT_BIN_DIR) + "'");
  EXPECT_EQ(cpu.status, 0) << cpu.output;
  fs::remove_all(dir);
}

TEST(BackendModule, BuiltCudaModuleLoadsOrSaysWhyNot) {
  if (!RT_HAVE_CUDA_MODULE) GTEST_SKIP() << "built without the CUDA backend";
  // The real module from bin/backends: a backend on a GPU machine, a one-line reason elsewhere.
  std::string err;
  std::unique_ptr<rt::Ops> ops;
  try {
    ops = rt::load_backend_ops("cuda");
  } catch (const rt::Error& e) {
    err = e.what();
  }
  if (ops) {
    EXPECT_EQ(ops->device(), rt::Device::CUDA);
  } else {
    EXPECT_NE(err.find("--device cuda: no"), std::string::npos) << err;
    EXPECT_NE(err.find("use --device cpu"), std::string::npos) << err;
  }
}

}  // namespace
