// The CUDA process group (NCCL, bin/backends/librt_dist_nccl.so) under `runtime launch`: the same
// probe as the CPU test with its tensors on the GPU. One rank needs one GPU; two ranks skip without
// two GPUs (NCCL refuses two ranks on one GPU).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "cli_test_util.h"

namespace {

TEST(NcclGroup, OneRankOnOneGpu) {
  const std::filesystem::path module = std::filesystem::path(RT_BIN_DIR) / "backends" / "librt_dist_nccl.so";
  if (!std::filesystem::exists(module)) GTEST_SKIP() << "no " << module << " (built only with CUDA and NCCL)";
  if (!std::filesystem::exists("/dev/nvidia0")) GTEST_SKIP() << "no GPU on this machine";
  setenv("RT_PROBE_DEVICE", "cuda", 1);
  setenv("RT_DIST_TIMEOUT_S", "60", 1);
  const auto r = rt::test::run_runtime({"launch", "--nproc-per-node", "1", "--", RT_DIST_PROBE}, 120);
  unsetenv("RT_PROBE_DEVICE");
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("rank 0 checksum"), std::string::npos) << r.describe();
}

TEST(NcclGroup, AllreduceAndBroadcastOnTheGpu) {
  const std::filesystem::path module = std::filesystem::path(RT_BIN_DIR) / "backends" / "librt_dist_nccl.so";
  if (!std::filesystem::exists(module)) GTEST_SKIP() << "no " << module << " (built only with CUDA and NCCL)";
  if (!std::filesystem::exists("/dev/nvidia0") || !std::filesystem::exists("/dev/nvidia1"))
    GTEST_SKIP() << "fewer than two GPUs on this machine";
  setenv("RT_PROBE_DEVICE", "cuda", 1);
  setenv("RT_DIST_TIMEOUT_S", "60", 1);
  const auto r = rt::test::run_runtime({"launch", "--nproc-per-node", "2", "--", RT_DIST_PROBE}, 120);
  unsetenv("RT_PROBE_DEVICE");
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("rank 0 checksum"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("rank 1 checksum"), std::string::npos) << r.describe();
}

}  // namespace
