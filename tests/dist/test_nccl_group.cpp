// The CUDA process group (NCCL, bin/backends/librt_dist_nccl.so) under `runtime launch`: the same
// probe as the CPU test with its tensors on the GPU. One rank needs one GPU; two ranks skip without
// two GPUs (NCCL refuses two ranks on one GPU).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "cli_test_util.h"

namespace {

// `runtime launch` of the probe on `nproc` ranks with its tensors on the GPU.
rt::test::RunResult launch_gpu_probe(int nproc) {
  setenv("RT_PROBE_DEVICE", "cuda", 1);
  setenv("RT_DIST_TIMEOUT_S", "60", 1);
  // The probe lives outside bin/, beside no backends/ folder of its own.
  setenv("RUNTIME_BACKEND_PATH", (std::string(RT_BIN_DIR) + "/backends").c_str(), 1);
  auto r = rt::test::run_runtime({"launch", "--nproc-per-node", std::to_string(nproc), "--", RT_DIST_PROBE}, 120);
  unsetenv("RT_PROBE_DEVICE");
  return r;
}

bool has_nccl_module() {
  return std::filesystem::exists(std::filesystem::path(RT_BIN_DIR) / "backends" / "librt_dist_nccl.so");
}

TEST(NcclGroup, OneRankOnOneGpu) {
  if (!has_nccl_module()) GTEST_SKIP() << "no librt_dist_nccl.so (built only with CUDA and NCCL)";
  if (!std::filesystem::exists("/dev/nvidia0")) GTEST_SKIP() << "no GPU on this machine";
  const auto r = launch_gpu_probe(1);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("rank 0 checksum"), std::string::npos) << r.describe();
}

TEST(NcclGroup, AllreduceAndBroadcastOnTheGpu) {
  if (!has_nccl_module()) GTEST_SKIP() << "no librt_dist_nccl.so (built only with CUDA and NCCL)";
  if (!std::filesystem::exists("/dev/nvidia0") || !std::filesystem::exists("/dev/nvidia1"))
    GTEST_SKIP() << "fewer than two GPUs on this machine";
  const auto r = launch_gpu_probe(2);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("rank 0 checksum"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("rank 1 checksum"), std::string::npos) << r.describe();
}

}  // namespace
